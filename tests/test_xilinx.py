"""The Zynq UltraScale+ estimate (`hw.flow.xilinx`): Yosys's cells counted as the device's resources, a real
`synth_xilinx` run on a small design through the same flow, and the Verilog a Vivado user wraps, linted."""

import json
import re

import pytest

from amaranth import signed

from golden.config import accelerator_preset, model_preset
from hw.common.multiplier import Multiplier
from hw.flow import xilinx
from hw.flow.export import lint
from hw.flow.synth import SynthError
from m3vit.cli import main

TINY, ACCEL = model_preset("tiny"), accelerator_preset("4x4")


# (Yosys's cells, what they take)
RESOURCE_CASES = [
    ({"LUT1": 2, "LUT6": 5, "INV": 3}, {"CLB LUT": 10, "LUT as memory": 0}),
    ({"RAM64M8": 2, "RAM32M16": 1, "SRLC32E": 4, "LUT3": 1}, {"CLB LUT": 29, "LUT as memory": 28}),
    ({"FDRE": 7, "FDSE": 1, "FDCE": 2}, {"CLB FF": 10}),
    ({"CARRY4": 3, "CARRY8": 2}, {"CARRY8": 5}),
    ({"RAMB36E2": 3, "RAMB18E2": 3, "URAM288": 2, "DSP48E2": 9},
     {"block RAM (36 Kb)": 4.5, "URAM288": 2, "DSP48E2": 9}),
]


@pytest.mark.parametrize("cells, expected", RESOURCE_CASES)
def test_cells_are_counted_as_the_device_resources(cells, expected):
    used = xilinx.resources(cells)
    assert {kind: used[kind] for kind in expected} == expected
    assert set(used) == set(xilinx.XILINX_DEVICES["xczu7ev"].capacity)


@pytest.mark.parametrize("kind", ["$mul", "$mem_v2", "RAMB16BWER", "SRL32"])
def test_a_cell_counted_nowhere_is_refused(kind):
    with pytest.raises(SynthError, match=re.escape(kind)):
        xilinx.resources({"LUT4": 1, kind: 1})


def test_the_estimate_runs_synth_xilinx(monkeypatch, tmp_path):
    """The flow on a registered 18 × 18 multiplier in place of the accelerator: one DSP48E2, its registers
    absorbed, beside the tiny 4×4 accelerator's fit plan on the ZCU104."""
    monkeypatch.setattr(xilinx, "_accelerator", lambda model, accel: Multiplier(signed(18), signed(18)))
    result = xilinx.estimate(TINY, ACCEL, "xczu7ev", directory=tmp_path)
    assert result.used["DSP48E2"] == 1 and result.used["CLB LUT"] < 10 and result.fits
    assert result.plan["target"] == "zcu104" and result.plan["multipliers"] > 1
    assert (tmp_path / "yosys.log").exists() and json.loads(json.dumps(result.to_dict()))["device"] == "xczu7ev"
    assert "DSP48E2" in result.text() and "synthesis estimate" in result.text()


def test_vivado_top_wraps_the_accelerator_with_axi_names():
    text = xilinx.vivado_top(TINY, ACCEL)
    lint(text, "m3vit_accelerator")
    header = text[text.index("module m3vit_accelerator ("):text.index(");", text.index("module m3vit_accelerator ("))]
    ports = re.findall(r"(input|output) wire (?:\[(\d+):0\] )?(\w+)", header)
    names = {name: (direction, int(top or 0) + 1) for direction, top, name in ports}
    assert names["aclk"] == ("input", 1) and names["aresetn"] == ("input", 1)
    assert names["m_axi_araddr"] == ("output", 32) and names["m_axi_rdata"] == ("input", 8 * ACCEL.dram_bytes_per_beat)
    assert names["s_axi_awaddr"] == ("input", 8) and names["s_axi_rdata"] == ("output", 32)
    assert names["irq"] == ("output", 1)
    assert all(name in ("aclk", "aresetn", "irq", "issued") or name.startswith(("m_axi_", "s_axi_")) for name in names)


def test_build_estimate_refuses_a_configuration_before_synthesis(capsys):
    assert main(["build", "--estimate", "xczu7ev", "--preset", "m3vit-tiny-cityscapes", "--accel", "6x6"]) == 2
    assert "square array of a power-of-two side" in capsys.readouterr().err
