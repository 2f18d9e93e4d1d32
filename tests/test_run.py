"""`m3vit run` and its library (`firmware.run`): a whole backbone per task on the simulated accelerator against
the golden model, its figures, and the diagnosis that names the first operation whose result differs."""

import dataclasses
import json

import numpy as np
import pytest

from firmware.compiler import backbone_program
from firmware.run import expected_read_bytes, first_mismatch
from golden.config import accelerator_preset, model_preset
from golden.float_model import M3ViT, quantize_model
from golden.images import natural_images
from golden.model import run
from golden.quantize import quantize_image
from golden.quantized import QuantizedModel
from m3vit.cli import main

TINY, ACCEL = model_preset("tiny"), accelerator_preset("4x4")
KEYS = {"task", "bit_exact", "cycles", "floor_cycles", "utilization", "dram_read_bytes", "expected_read_bytes",
        "dram_write_bytes", "busy"}
HEAD_KEYS = {"output_bit_exact", "head_cycles", "head_floor_cycles", "head_utilization", "head_dram_stall_cycles",
             "head_dram_read_bytes", "head_dram_write_bytes", "inference_cycles", "inference_utilization"}


def test_m3vit_run_json_every_task_bit_exact(capsys):
    """The README's main job on its defaults (tiny on 4×4, every task, Verilator), as JSON."""
    assert main(["run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [task["task"] for task in report["tasks"]] == list(range(TINY.num_tasks))
    for task in report["tasks"]:
        assert KEYS <= task.keys() and task["bit_exact"]
        assert 0 < task["floor_cycles"] < task["cycles"] and task["utilization"] == task["floor_cycles"] / task["cycles"]
        # fetch may run up to the instruction buffer (8) and a chunk (4) past HALT
        assert task["expected_read_bytes"] <= task["dram_read_bytes"] <= task["expected_read_bytes"] + 16 * 12
        assert set(task["busy"]) == {"gemm", "loader", "router", "vector"}
        assert all(0 < cycles < task["cycles"] for cycles in task["busy"].values())
        # every cycle the GEMM engine is idle is exposed by exactly one unit (or none: "other")
        assert set(task["exposed"]) == {"vector", "router", "loader", "other"}
        assert task["busy"]["gemm"] + sum(task["exposed"].values()) == task["cycles"]
        assert task["exposed"]["vector"] <= task["busy"]["vector"]
        assert task["exposed"]["router"] <= task["busy"]["router"]
        assert task["gemm_overhead_cycles"] == task["busy"]["gemm"] - task["floor_cycles"] > 0
        # the task's head, image to prediction: bit-exact, its bytes as the compiler states them
        assert HEAD_KEYS <= task.keys() and task["output_bit_exact"] and task["head_error"] == "NONE"
        assert 0 < task["head_floor_cycles"] < task["head_cycles"]
        assert task["head_utilization"] == task["head_floor_cycles"] / task["head_cycles"]
        assert task["head_expected_read_bytes"] <= task["head_dram_read_bytes"] <= task["head_expected_read_bytes"] \
            + 16 * 12
        assert task["head_dram_write_bytes"] == task["head_expected_write_bytes"] > 0
        assert 0 <= task["head_dram_stall_cycles"] < task["head_cycles"]
        assert task["inference_cycles"] == task["cycles"] + task["head_cycles"]
        assert task["inference_floor_cycles"] == task["floor_cycles"] + task["head_floor_cycles"]
    start_up = report["start_up"]       # the resident router weights, read once before the first run
    assert start_up["expected_read_bytes"] <= start_up["dram_read_bytes"] <= start_up["expected_read_bytes"] + 16 * 12
    # back to the first task after the last: the same cycles and outputs, and nothing but the host's few
    # register accesses between the two runs
    switch = report["switch"]
    assert (switch["from"], switch["to"]) == (TINY.num_tasks - 1, 0) and switch["bit_exact_again"]
    assert switch["cycles_again"] == report["tasks"][0]["cycles"]
    assert 0 < report["switch_cycles"] == switch["switch_cycles"] < 64
    assert report["switch_fraction"] == switch["switch_cycles"] / report["tasks"][0]["cycles"] < 1e-3


def test_m3vit_run_table_and_bad_arguments(capsys, tmp_path):
    assert main(["run", "--task", "depth", "--sim", "verilator", "--output", str(tmp_path / "depth.npy")]) == 0
    out = capsys.readouterr().out
    assert "depth" in out and "PASS" in out and "semseg" not in out and "output bit-exact" in out
    depth = np.load(tmp_path / "depth.npy")         # one channel: the map, in real units
    assert depth.shape == TINY.image_size and depth.dtype == np.float32 and np.isfinite(depth).all()
    assert main(["run", "--task", "semseg", "--output", str(tmp_path / "seg.npy"), "--json"]) == 0
    classes = np.load(tmp_path / "seg.npy")        # several classes: the host's argmax
    assert classes.shape == TINY.image_size and classes.min() >= 0 and classes.max() < TINY.tasks[0].classes
    assert main(["run", "--task", "9"]) == 2
    assert "task" in capsys.readouterr().err
    assert main(["run", "--accel", "4x8"]) == 2
    assert "array_rows" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quantized():
    return quantize_model(M3ViT.trained_like(TINY, seed=3), natural_images(TINY, 6, 13))


def test_expected_read_bytes_counts_per_expert_loads_per_active_expert(quantized):
    """With one active expert per layer instead of the real routing, the expected bytes drop by one EXPERTS body's
    loads for each expert fewer (every MoE layer's body loads the same bytes)."""
    image = quantize_image(quantized, natural_images(TINY, 1, 2)[0])
    program = backbone_program(quantized, ACCEL, image)
    routing = run(quantized, image, 0).routing
    empty = np.array([], np.int32)
    single = {block: dataclasses.replace(r, expert_tokens=[r.expert_tokens[0]] + [empty] * (TINY.num_experts - 1))
              for block, r in routing.items()}
    assert all(len(r.active_experts) == 1 for r in single.values())
    per_expert = [int(line.split("bytes=")[1].split()[0]) for line in program.text.splitlines()
                  if line.startswith("LOAD") and "per_expert=1" in line]
    body_bytes = sum(per_expert) // len(routing)
    fewer = sum(len(r.active_experts) - 1 for r in routing.values())
    assert fewer > 0
    assert expected_read_bytes(program, TINY, routing) - expected_read_bytes(program, TINY, single) == body_bytes * fewer


def test_router_weights_are_read_by_the_start_up_only(quantized):
    """The backbone's start-up loads every layer's router weights for every task; a run (from `entry`) loads
    none, so a task switch reads nothing the new task does not use."""
    image = quantize_image(quantized, natural_images(TINY, 1, 2)[0])
    program = backbone_program(quantized, ACCEL, image)
    lines = program.text.splitlines()
    assert program.entry > 0 and lines[program.entry - 1].startswith("HALT")
    router = {"memory=ROUTER", "memory=ROUTER_PARAMS"}
    assert {field for line in lines[:program.entry] for field in line.split()} >= router
    assert not any(field in router for line in lines[program.entry:] for field in line.split())
    assert expected_read_bytes(program, TINY, run="start_up") == 16 * program.entry + sum(
        int(line.split("bytes=")[1].split()[0]) for line in lines[:program.entry] if line.startswith("LOAD"))


def test_bench_sim_both_simulators_agree(capsys):
    """`m3vit bench sim` runs the same cycles in both simulators: the counters agree, and the fast one is
    faster (its figure is a benchmark's, not a test's)."""
    assert main(["bench", "sim", "--cycles", "2000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cycles"] == 2000 and result["counters_agree"]
    assert result["counters"]["INSTRUCTIONS"] > 0 and result["counters"]["DRAM_READ_BYTES"] > 0
    assert result["ratio"] == result["fast_cycles_per_s"] / result["pysim_cycles_per_s"] > 1


def test_first_mismatch_names_the_operation(quantized):
    """A golden model whose block 2 projection has another bias: the run is compared with it, and the first
    intermediate that differs is block 2's `mid`, made by attention."""
    image = quantize_image(quantized, natural_images(TINY, 1, 4)[0])
    arrays = dict(quantized.arrays)
    arrays["blocks.2.proj.bias"] = arrays["blocks.2.proj.bias"] + 1000
    other = QuantizedModel(TINY, arrays, quantized.scales)
    assert first_mismatch(quantized, ACCEL, image, 1) == ""
    assert first_mismatch(quantized, ACCEL, image, 1, reference=other) == "blocks.2.mid (attention)"
