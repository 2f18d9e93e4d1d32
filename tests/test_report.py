"""`m3vit report` (`firmware.report`): one configuration's inference simulated and modelled, its figures each
labelled with where it comes from, the DRAM orders computed as their formulas say, and the files."""

import json

import pytest

from firmware.report import dram_orders
from golden.config import accelerator_preset, model_preset
from m3vit.cli import main

TINY = model_preset("tiny")


@pytest.mark.long(50)
def test_report_of_tiny(tmp_path, capsys):
    assert main(["report", "--preset", "tiny", "--accel", "4x4", "--task", "depth", "-o", str(tmp_path),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("report.md", "report.json", "layers_depth.png", "utilization.png", "dram.png", "routing.png"):
        assert (tmp_path / name).stat().st_size > 500, name
    (task,) = report["tasks"]
    assert task["task_name"] == "depth" and task["source"] == "simulated"
    backbone, head = task["counters"]["backbone"], task["counters"]["head"]
    layers = task["layers"]
    assert [layer["layer"] for layer in layers][:2] == ["patch_embed", "blocks.0"]
    assert sum(layer["cycles"] for layer in layers) == task["cycles"]
    for layer in layers:
        assert abs(layer["model_cycles"] - layer["cycles"]) < 0.02 * layer["cycles"]
        assert sum(layer["model_breakdown"].values()) == layer["model_cycles"]
        assert 0 <= layer["utilization"] <= 1
    # the model's split of the backbone's cycles is the RTL's counters' within 2 % of the run
    split = {unit: sum(layer["model_breakdown"][unit] for layer in layers if layer["run"] == "backbone")
             for unit in ("gemm", "vector", "router", "loader", "other")}
    rtl = {"gemm": backbone["BUSY_GEMM"], **{unit: backbone[f"EXPOSED_{unit.upper()}"]
                                             for unit in ("vector", "router", "loader", "other")}}
    for unit in split:
        assert abs(split[unit] - rtl[unit]) < 0.02 * sum(rtl.values()), (unit, split, rtl)
    assert task["frames_per_s"] == pytest.approx(150e6 / task["cycles"])
    orders = task["dram_read_bytes"]
    assert orders["this_design"] == backbone["DRAM_READ_BYTES"] + head["DRAM_READ_BYTES"]
    # tiny's four experts fit its slab buffers: token by token reads each active expert once too
    assert orders["experts_fit_on_chip"] and orders["token_by_token"] == orders["this_design"]
    assert orders["dense_multitask"] > orders["this_design"]
    for tokens in task["tokens_per_expert"].values():
        assert sum(tokens) == TINY.num_tokens * TINY.top_k
    assert report["resources"]["fits"] and all(peer["source"] == "quoted" for peer in report["peers"])
    text = (tmp_path / "report.md").read_text()
    assert "simulated" in text and "modelled" in text and "quoted" in text and "| blocks.3 |" in text


def test_token_by_token_order_fetches_per_token_when_the_experts_do_not_fit():
    """With slab buffers smaller than a layer's experts, each token's k experts are fetched for it."""

    class Program:
        entry, heads = 0, {}
        text = "LOAD region=MODEL address=0 bytes=100 memory=WEIGHTS base=0 per_expert=1\n" * 2

    accel = accelerator_preset("4x4").replace(weight_buffer_bytes=1024)
    counts = {0: [5, 0, 29, 0], 1: [17, 17, 0, 0]}
    orders = dram_orders(Program(), TINY, accel, counts, 0, 10_000)
    assert not orders["experts_fit_on_chip"] and orders["per_expert_bytes"] == 100
    this_experts = (2 + 2) * 100
    assert orders["token_by_token"] == 10_000 - this_experts + 2 * TINY.num_tokens * TINY.top_k * 100
    assert orders["dense_multitask"] == 10_000 - this_experts + 2 * TINY.num_experts * 100
