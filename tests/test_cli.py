"""The `m3vit` command line: thin over the library, clear errors, exit codes."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from m3vit.cli import fit_table, main


def _json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_info_json_default_preset(capsys):
    info = _json(capsys, "info", "--json")
    assert info["preset"] == "m3vit-tiny-cityscapes"
    assert info["backbone_macs"] == 782_719_488
    assert info["backbone_macs_all_experts"] > info["backbone_macs"]


def test_info_text_names_every_kind(capsys):
    assert main(["info", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    for word in ("patch_embed", "qkv", "attention", "proj", "dense_mlp", "router", "experts", "Parameters"):
        assert word in out


def test_info_task_head_by_name(capsys):
    semseg = _json(capsys, "info", "--json", "--task", "semseg")["head_macs"]
    depth = _json(capsys, "info", "--json", "--task", "1")["head_macs"]
    assert semseg > depth


@pytest.mark.parametrize("argv, words", [
    (["info", "--preset", "nope"], "model preset = 'nope': unknown"),
    (["info", "--task", "7"], "task = 7: must be a task index"),
    (["fit", "--target", "arty"], "target = 'arty'"),
    (["fit", "--accel", "16x16", "--preset", "m3vit-tiny-cityscapes", "--target", "zcu104"], None),
])
def test_errors_are_one_line(capsys, argv, words):
    code = main(argv)
    err = capsys.readouterr().err
    if words is None:
        assert code == 0 and err == ""
    else:
        assert code == 2 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_fit_that_does_not_fit_exits_1(capsys):
    assert main(["fit", "--accel", "16x16", "--target", "ulx3s-85f"]) == 1
    assert "problem: multipliers" in capsys.readouterr().out


def test_fit_table_covers_every_combination():
    table = fit_table().splitlines()
    assert len(table) == 2 + 4 * 4 * 2


def test_console_script_runs():
    script = shutil.which("m3vit", path=os.path.dirname(sys.executable))
    assert script, "the m3vit console script is not installed in this environment"
    result = subprocess.run([script, "info", "--json", "--preset", "tiny"], capture_output=True, text=True,
                            check=True)
    assert json.loads(result.stdout)["preset"] == "tiny"


def test_golden_report_on_tiny(capsys):
    report = _json(capsys, "golden", "--preset", "tiny", "--images", "2", "--json")
    for key in ("snr_db", "router_agreement", "head_snr_db", "golden_seconds", "float_seconds"):
        assert isinstance(report[key], float), key
    assert report["snr_db"] > 20 and 0.8 <= report["router_agreement"] <= 1
    assert set(report["tasks"]) == {"semseg", "depth"}
    assert set(report["router_agreement_per_layer"]) == {"1", "3"}          # JSON keys are strings
    assert set(report["router_agreement_per_layer"]["1"]) == {"semseg", "depth"}
    assert set(report["snr_db_per_block"]) == {"0", "1", "2", "3"}
    worst = report["worst_layer"]
    assert report["router_agreement_per_layer"][str(worst["block"])][worst["task"]] == report["router_agreement"]
    assert len(report["tasks"]["depth"]["snr_db_per_block"]) == 4
    assert main(["golden", "--preset", "tiny", "--images", "1", "--task", "depth"]) == 0
    out = capsys.readouterr().out
    assert "router_agreement" in out and "task depth" in out and "task semseg" not in out
    assert report["weights_floor"] is None


def test_golden_with_the_int8_weights_alone(tmp_path, capsys):
    """--weights-floor: the int8 weights alone (every activation float) lose less than the whole integer model,
    reported as the model's figures are; a quantized file has no float weights for it."""
    report = _json(capsys, "golden", "--preset", "tiny", "--images", "2", "--weights-floor", "--json")
    floor = report["weights_floor"]
    assert set(floor["router_agreement_per_layer"]) == {"1", "3"} and len(floor["snr_db_per_block"]) == 4
    assert floor["snr_db"] > report["snr_db"] + 10
    assert floor["router_agreement_per_layer"][str(floor["worst_layer"]["block"])][floor["worst_layer"]["task"]] \
        == floor["router_agreement"]
    assert main(["golden", "--preset", "tiny", "--images", "1", "--task", "depth", "--weights-floor"]) == 0
    assert "int8 weights alone (every activation float): snr_db" in capsys.readouterr().out
    path = tmp_path / "tiny.npz"
    assert main(["quantize", "--preset", "tiny", "--images", "2", "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["golden", "--preset", "tiny", "--checkpoint", str(path), "--weights-floor"]) == 2
    error = capsys.readouterr().err
    assert "holds no float weights" in error and "Traceback" not in error


def test_quantize_then_golden_from_the_file(tmp_path, capsys):
    path = tmp_path / "tiny.npz"
    assert main(["quantize", "--preset", "tiny", "--images", "2", "-o", str(path)]) == 0
    capsys.readouterr()
    report = _json(capsys, "golden", "--preset", "tiny", "--checkpoint", str(path), "--json")
    assert report["golden_seconds"] > 0
    assert main(["golden", "--preset", "m3vit-tiny-cityscapes", "--checkpoint", str(path)]) == 2
    assert "quantized for tiny" in capsys.readouterr().err


def test_golden_from_an_official_state_dict(tmp_path, capsys):
    import torch

    from golden.config import model_preset
    from golden.float_model import M3ViT
    path = tmp_path / "official.pth"
    torch.save({"model": M3ViT.random(model_preset("tiny"), 3).state_dict()}, path)
    report = _json(capsys, "golden", "--preset", "tiny", "--checkpoint", str(path), "--images", "1", "--json")
    assert report["checkpoint"] == str(path) and report["snr_db"] > 20
    broken = tmp_path / "broken.pth"
    torch.save({"cls_token": torch.zeros(1)}, broken)
    assert main(["golden", "--preset", "tiny", "--checkpoint", str(broken)]) == 2
    assert "state dict does not match tiny" in capsys.readouterr().err


def test_elaborate_gemm(tmp_path, capsys):
    assert main(["elaborate", "gemm", "--preset", "tiny", "--array", "2x3", "-o", str(tmp_path)]) == 0
    verilog = (tmp_path / "gemm_2x3.v").read_text()
    assert "module gemm_2x3" in verilog and (tmp_path / "gemm_2x3.il").read_text().startswith("attribute")
    assert main(["elaborate", "gemm", "--array", "0x3", "-o", str(tmp_path)]) == 2
    assert "MULT18X18D" not in verilog


def test_elaborate_gemm_for_ecp5_uses_its_dsp_blocks(tmp_path, capsys):
    """A 2×3 engine: 6 array multipliers, 2 per lane in the requantizer, 1 per lane for the combine, 1 per GELU
    lane (`requant_lanes` = 2 here) for the hidden requantization."""
    assert main(["elaborate", "gemm", "--preset", "tiny", "--array", "2x3", "--target", "ulx3s-85f",
                 "-o", str(tmp_path)]) == 0
    verilog = (tmp_path / "gemm_2x3.v").read_text()
    assert verilog.count("MULT18X18D #(") == 2 * 3 + 3 * 2 + 3 * 1 + 2
    assert "primitives of ulx3s-85f" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["synth", "gemm", "--target", "zcu104"],
                                  ["elaborate", "gemm", "--target", "zcu104", "-o", "unused"]])
def test_no_place_and_route_for_zcu104(capsys, argv):
    assert main(argv) == 2
    assert "target = 'zcu104': no open place-and-route flow; choose one of ulx3s-85f" in capsys.readouterr().err


@pytest.mark.parametrize("unit, port", [("loader", "axi__araddr"), ("router", "queue_read__addr"),
                                        ("gelu", "input__payload")])
def test_elaborate_other_units(tmp_path, unit, port):
    assert main(["elaborate", unit, "--preset", "tiny", "--array", "4x4", "-o", str(tmp_path)]) == 0
    verilog = (tmp_path / f"{unit}_4x4.v").read_text()
    assert f"module {unit}_4x4" in verilog and port in verilog


@pytest.mark.parametrize("unit", ["layernorm", "softmax", "residual", "gelu"])
def test_elaborate_vector_units(unit, tmp_path, capsys):
    assert main(["elaborate", unit, "--preset", "tiny", "--array", "4x4", "-o", str(tmp_path)]) == 0
    assert f"module {unit}_4x4" in (tmp_path / f"{unit}_4x4.v").read_text()
    assert f"{unit} for tiny" in capsys.readouterr().out


def _official_checkpoint(tmp_path, heads=True):
    import torch

    from golden.config import model_preset
    from golden.float_model import M3ViT
    tiny = model_preset("tiny")
    official = {}
    for key, value in M3ViT.random(tiny, 3).state_dict().items():
        if key.startswith("heads."):
            if heads:
                _, task, rest = key.split(".", 2)
                official[f"module.decoders.{tiny.tasks[int(task)].name}.{rest}"] = value
        else:
            official[f"module.backbone.{key}"] = value
    path = tmp_path / ("full.pth" if heads else "backbone.pth")
    torch.save({"model": official, "optimizer": {"step": 3}}, path)
    return path


def test_golden_on_a_training_checkpoint_and_the_users_images(tmp_path, capsys):
    import numpy as np

    from golden.config import model_preset
    from golden.images import natural_images
    tiny = model_preset("tiny")
    np.save(tmp_path / "calibration.npy", natural_images(tiny, 3, 1))
    np.save(tmp_path / "test.npy", natural_images(tiny, 2, 2))
    backbone = _official_checkpoint(tmp_path, heads=False)
    report = _json(capsys, "golden", "--preset", "tiny", "--checkpoint", str(backbone), "--backbone-only",
                   "--calibration", str(tmp_path / "calibration.npy"), "--test", str(tmp_path / "test.npy"),
                   "--json")
    assert report["calibration_images"] == 3 and report["test_images"] == 2
    assert "seeded random weights" in report["checkpoint_report"]
    assert "optimizer (training state)" in report["checkpoint_report"]
    full = _official_checkpoint(tmp_path)
    assert main(["golden", "--preset", "tiny", "--checkpoint", str(full), "--test", str(tmp_path / "test.npy"),
                 "--normalize", "imagenet"]) == 0
    out = capsys.readouterr().out
    assert "keys mapped (prefixes stripped: module., backbone.)" in out and "worst: block" in out
    assert main(["golden", "--preset", "tiny", "--checkpoint", str(backbone)]) == 2
    assert "give --backbone-only" in capsys.readouterr().err
    out_file = tmp_path / "q.npz"
    assert main(["quantize", "--preset", "tiny", "--checkpoint", str(full), "--calibration",
                 str(tmp_path / "calibration.npy"), "-o", str(out_file)]) == 0
    assert "calibrated on 3 images" in capsys.readouterr().out and out_file.exists()
