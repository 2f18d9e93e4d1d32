"""Resource plan and fit check: the on-chip memories and multipliers that `docs/architecture.md` gives a model
on an accelerator configuration, counted in a target FPGA's memory blocks and multiplier blocks.

`check_fit(model, accel, target)` raises `FitError`, naming every resource that overflows and by how much.
Memories are counted at block granularity (each memory in its cheapest block aspect ratio); multipliers at
one block per product that fits a block's operands. Figures are the architecture's plan, before synthesis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth import Shape

from golden.config import AcceleratorConfig, ConfigError, ModelConfig, check_compatible

from ..control.memories import router_geometry
from ..memory.plan import Memory, onchip_memories

__all__ = ["MemoryBlock", "Target", "TARGETS", "target", "Memory", "onchip_memories", "Multipliers",
           "multipliers", "FitReport", "FitError", "fit_report", "check_fit"]


@dataclass(frozen=True)
class MemoryBlock:
    """A kind of block RAM: its name, how many the target has, its (width, depth) aspect ratios, and the widest
    of them whose two ports both read and write (true dual port; the wider ones are one write and one read port)."""

    name: str
    count: int
    shapes: tuple[tuple[int, int], ...]
    dual_port_width: int

    @property
    def bits(self) -> int:
        return self.shapes[0][0] * self.shapes[0][1]

    def blocks_for(self, width: int, depth: int, two_ports: bool = False) -> int:
        return min(math.ceil(width / w) * math.ceil(depth / d) for w, d in self.shapes
                   if not two_ports or w <= self.dual_port_width)


@dataclass(frozen=True)
class Target:
    """An FPGA: its memory block kinds (the last one takes what does not fit elsewhere) and its multiplier
    block."""

    name: str
    description: str
    memory_blocks: tuple[MemoryBlock, ...]
    multiplier_name: str
    multiplier_count: int
    multiplier_widths: tuple[int, int]  # signed operand widths one multiplier block takes

    def multipliers_for(self, a: int, b: int) -> int:
        """Blocks for one signed a × b product."""
        wide, narrow = max(a, b), min(a, b)
        big, small = self.multiplier_widths
        return math.ceil(wide / big) * math.ceil(narrow / small)


TARGETS: dict[str, Target] = {
    target.name: target for target in [
        Target("ulx3s-85f", "ULX3S with a Lattice LFE5U-85F (ECP5)",
               (MemoryBlock("DP16KD", 208, ((18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384),
                                            (36, 512)), 18),),
               "MULT18X18D", 156, (18, 18)),
        Target("zcu104", "ZCU104 with a Xilinx XCZU7EV (Zynq UltraScale+)",
               (MemoryBlock("URAM288", 96, ((72, 4096),), 72),
                MemoryBlock("RAMB36E2", 312, ((36, 1024), (72, 512), (18, 2048), (9, 4096), (4, 8192),
                                              (2, 16384), (1, 32768)), 36)),
               "DSP48E2", 1728, (27, 18)),
    ]
}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise ConfigError("target", name, f"unknown; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


@dataclass(frozen=True)
class Multipliers:
    """Multiplier blocks by unit."""

    by_unit: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_unit.values())


def multipliers(model: ModelConfig, accel: AcceleratorConfig, target: Target) -> Multipliers:
    """Multiplier blocks of the units as built, on `target`: the array; the GEMM output path (per drain lane the
    requantizer's acc × m, per column the gate weight's y × g, per GELU lane its interpolation and the hidden
    requantization); the router (its MACs, the logit distance times the exponent multiplier; its gate weights
    shift and add); the vector units (per lane LayerNorm's x², x·r and γ per output, the softmax's d·m;
    once LayerNorm's S·|S| / S·r). Nothing else takes one: the control's address and length products and the
    softmax's row scale (m_v · 2^32 // S, from the quotient's bits as they come) are adders
    (`hw.common.arith.narrow_product`)."""
    rw, ow, acc, mw = accel.residual_width, accel.operand_width, accel.accumulator_width, accel.requant_multiplier_width
    m = target.multipliers_for
    router = router_geometry(model, accel)            # its two products are of unsigned values: a sign bit more each
    exponent_multiplier = Shape.cast(router.exponent_params["multiplier"].shape).width
    gelu_lanes = min(accel.requant_lanes, accel.array_cols)
    score = 2 * ow + 8                                      # Q·Kᵀ scores of up to 2^8 dimensions
    per_lane = m(rw, rw) + m(rw, 32) + 2 * m(18, 16) + m(score + 1, mw + 1)
    return Multipliers({
        "systolic array": accel.macs_per_cycle * m(ow, ow),
        "GEMM output path": accel.drain_lanes * m(acc + 1, mw) + accel.array_cols * m(18, 16)
                            + gelu_lanes * (m(10, 10) + m(16, 16)),
        "router": accel.router_macs_per_cycle * m(rw, ow) + m(router.logit_width + 1, exponent_multiplier + 1),
        "vector units": accel.vector_lanes * per_lane + m(rw + 10, 32),
    })


@dataclass(frozen=True)
class FitReport:
    """Where each memory goes, and what is used against what the target has."""

    model: str
    accel: str
    target: str
    memories: list[tuple[Memory, str, int]]  # (memory, block kind, blocks)
    blocks_used: dict[str, int]
    blocks_available: dict[str, int]
    multipliers: Multipliers
    multipliers_available: int
    multiplier_name: str

    @property
    def onchip_bytes(self) -> int:
        return sum(memory.bytes for memory, _, _ in self.memories)

    @property
    def problems(self) -> list[str]:
        problems = []
        for kind, used in self.blocks_used.items():
            have = self.blocks_available[kind]
            if used > have:
                biggest = sorted((m for m in self.memories if m[1] == kind), key=lambda m: -m[2])[:3]
                detail = ", ".join(f"{m.name} {blocks}" for m, _, blocks in biggest)
                problems.append(f"on-chip memory needs {used} {kind} blocks, {have} available: over by "
                                f"{used - have} (largest: {detail})")
        if self.multipliers.total > self.multipliers_available:
            detail = ", ".join(f"{unit} {count}" for unit, count in self.multipliers.by_unit.items())
            problems.append(f"multipliers: needs {self.multipliers.total} {self.multiplier_name}, "
                            f"{self.multipliers_available} available: over by "
                            f"{self.multipliers.total - self.multipliers_available} ({detail})")
        return problems

    @property
    def fits(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "model": self.model, "accel": self.accel, "target": self.target, "fits": self.fits,
            "problems": self.problems, "onchip_bytes": self.onchip_bytes,
            "memories": [{"name": m.name, "width": m.width, "depth": m.depth, "count": m.count,
                          "bytes": m.bytes, "block": kind, "blocks": blocks, "purpose": m.purpose}
                         for m, kind, blocks in self.memories],
            "blocks_used": self.blocks_used, "blocks_available": self.blocks_available,
            "multipliers": self.multipliers.by_unit, "multipliers_total": self.multipliers.total,
            "multipliers_available": self.multipliers_available, "multiplier_name": self.multiplier_name,
        }


class FitError(ValueError):
    """A model and accelerator configuration do not fit a target; the message lists every overflow."""

    def __init__(self, report: FitReport, hint: str = ""):
        self.report = report
        super().__init__(f"{report.model} on accelerator {report.accel} does not fit {report.target}: "
                         + "; ".join(report.problems) + (f" ({hint})" if hint else ""))


def fit_report(model: ModelConfig, accel: AcceleratorConfig, target: Target) -> FitReport:
    """Place every memory of the plan, largest first, into the block kind that spends the fewest bits on it
    and still has room (the last kind takes any overflow), and count multipliers."""
    check_compatible(model, accel)
    remaining = {kind.name: kind.count for kind in target.memory_blocks}
    used = {kind.name: 0 for kind in target.memory_blocks}
    placed = []
    for memory in sorted(onchip_memories(model, accel), key=lambda m: -m.bytes):
        costs = [(memory.count * memory.banks * kind.blocks_for(memory.width, memory.depth // memory.banks,
                                                                 memory.two_ports), kind)
                 for kind in target.memory_blocks]
        roomy = [(blocks, kind) for blocks, kind in costs if blocks <= remaining[kind.name]]
        blocks, kind = min(roomy, key=lambda c: c[0] * c[1].bits) if roomy else costs[-1]
        remaining[kind.name] -= blocks
        used[kind.name] += blocks
        placed.append((memory, kind.name, blocks))
    return FitReport(model.name, accel.name, target.name, placed, used,
                     {kind.name: kind.count for kind in target.memory_blocks},
                     multipliers(model, accel, target), target.multiplier_count, target.multiplier_name)


def check_fit(model: ModelConfig, accel: AcceleratorConfig, target: Target) -> FitReport:
    """The fit report, or `FitError` naming what overflows and by how much."""
    report = fit_report(model, accel, target)
    if not report.fits:
        raise FitError(report)
    return report
