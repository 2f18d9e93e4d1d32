"""The analytic cycle model (`firmware.cycles`) against the RTL: the issued sequence as the controller counts it
(the RTL's `issued` trace is the same in both simulators: `test_accelerator`), and every layer of a whole tiny
inference (backbone and head, both tasks) within 2 % of the RTL's cycles, as is the whole; a model with a cost wrong
is caught."""

import json

import pytest

from firmware.compiler import backbone_program
from firmware.cycles import CycleModel, against, expert_counts, issued, measured
from golden.config import accelerator_preset, model_preset
from golden.float_model import M3ViT, quantize_model
from golden.images import natural_images
from golden.model import run
from golden.quantize import quantize_image
from hw.control.isa import InstructionSet, Opcode
from m3vit.cli import main

TINY, ACCEL = model_preset("tiny"), accelerator_preset("4x4")


@pytest.fixture(scope="module")
def quantized():
    return quantize_model(M3ViT.trained_like(TINY, seed=5), natural_images(TINY, 6, 17))


@pytest.fixture(scope="module")
def image(quantized):
    return quantize_image(quantized, natural_images(TINY, 1, 3)[0])


@pytest.fixture(scope="module", params=[0, 1])
def rtl(request, quantized, image):
    """The RTL's backbone and head runs of task 0 and of task 1, traced (Verilator)."""
    return measured(quantized, ACCEL, image, request.param)


def test_issued_repeats_each_experts_body_per_active_expert(quantized, image):
    program = backbone_program(quantized, ACCEL, image)
    counts = expert_counts(quantized, run(quantized, image, 0))
    sequence = issued(program, InstructionSet(TINY, ACCEL), "backbone", counts)
    lines = program.text.splitlines()
    bodies = [int(line.split("body=")[1].split()[0]) for line in lines[program.entry:] if line.startswith("EXPERTS")]
    active = [sum(1 for count in counts[layer] if count) for layer in sorted(counts)]
    assert len(sequence) == len(lines) - program.entry + sum(b * (a - 1) for b, a in zip(bodies, active))
    assert sequence[-1].opcode is Opcode.HALT and sequence[0].index == program.entry
    gathers = [issue for issue in sequence if issue.expert is not None and issue.opcode is Opcode.GEMM
               and issue["gather"]]
    assert [issue.m for issue in gathers] == [count for layer in sorted(counts) for count in counts[layer] if count]
    with pytest.raises(ValueError, match="no token counts"):
        issued(program, InstructionSet(TINY, ACCEL), "backbone", {})


def test_a_program_without_its_listing_is_the_same_program(quantized, image):
    listed = backbone_program(quantized, ACCEL, image, heads=True)
    bare = backbone_program(quantized, ACCEL, image, heads=True, listing=False)
    assert listed.text.count("\n") == len(listed.words) and bare.text == ""
    same = ("words", "model", "image", "layers", "heads", "outputs", "entry")
    assert all(getattr(bare, name) == getattr(listed, name) for name in same)


@pytest.mark.long(60)
def test_model_within_two_percent_of_the_rtl_per_layer_and_whole(rtl):
    result = against(rtl, CycleModel(TINY, ACCEL))
    task = next(run for run in result["runs"] if run != "backbone")
    names = [layer["layer"] for layer in result["runs"]["backbone"]["layers"]]
    assert names == ["patch_embed"] + [f"blocks.{b}" for b in range(TINY.depth)]
    assert [layer["layer"] for layer in result["runs"][task]["layers"]] == \
        [f"heads.{task}.norm"] + [f"heads.{task}.{conv.name}" for conv in TINY.head_layers(task)[:-1]]
    for run_result in result["runs"].values():
        assert sum(layer["cycles"] for layer in run_result["layers"]) == run_result["cycles"]
        for layer in run_result["layers"]:
            assert abs(layer["error"]) < 0.02, layer
    assert result["max_layer_error"] < 0.02 and abs(result["total_error"]) < 0.02


@pytest.mark.long(60)
def test_a_model_with_a_wrong_cost_is_caught(rtl):
    """The RTL's figures decide: a LayerNorm twice as slow, or tiles that stream as soon as their weights are in
    (the head's 4-row blocks wait for the tile two before to stream), put some layer beyond 2 %."""
    slow_norm = CycleModel(TINY, ACCEL)
    slow_norm.LAYERNORM = tuple(2 * value for value in CycleModel.LAYERNORM)
    assert against(rtl, slow_norm)["max_layer_error"] > 0.02
    eager = CycleModel(TINY, ACCEL)
    eager.beats = 1
    assert against(rtl, eager)["max_layer_error"] > 0.02


def test_bench_model_json(capsys):
    assert main(["bench", "model", "--preset", "tiny", "--arrays", "4x4", "--task", "depth", "--backbone-only",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (row,) = result["rows"]
    assert {"array", "task", "max_layer_error", "total_error"} <= row.keys()
    assert row["array"] == "4x4" and row["task"] == 1 and list(row["runs"]) == ["backbone"]
    assert row["max_layer_error"] < 0.02 and abs(row["total_error"]) < 0.02
    assert main(["bench", "model", "--preset", "tiny", "--arrays", "4x8"]) == 2
