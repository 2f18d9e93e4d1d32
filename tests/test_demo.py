"""`m3vit demo`: a trained model's image through the simulated accelerator, drawn; the pictures say what was
computed."""

import json

import numpy as np
import pytest
from PIL import Image

from firmware.demo import CLASS_COLOURS, _depth_colours, _expert_colours, _panels, _routing_picture
from golden.config import model_preset
from golden.float_model import M3ViT
from golden.scenes import labelled_scenes
from golden.train import train
from m3vit.cli import main

TINY = model_preset("tiny")


def test_each_patch_is_tinted_by_its_first_expert():
    image = np.random.default_rng(0).uniform(0, 1, (3, 32, 32))
    first = np.arange(16) % 4
    picture = np.asarray(_routing_picture(image, first, (4, 4), 4, factor=8), np.float64)
    enlarged = image.transpose(1, 2, 0).repeat(8, 0).repeat(8, 1) * 255
    colours = _expert_colours(4)
    for patch in range(16):
        row, col = divmod(patch, 4)
        y, x = row * 64 + 40, col * 64 + 40                    # inside the patch, clear of its number
        expected = 0.45 * np.floor(enlarged[y, x]) + 0.55 * colours[first[patch]]
        assert np.allclose(picture[y, x], expected, atol=1.01), patch


def test_depth_runs_from_bright_near_to_dark_far_and_panels_line_up():
    ramp = _depth_colours(np.linspace(0.1, 1.0, 11)[None, :], 0.1, 1.0)[0].astype(int).sum(1)
    assert np.all(np.diff(ramp) < 0)
    labels = np.array([[0, 1], [2, 3]])
    canvas = _panels([("a", CLASS_COLOURS[labels]), ("b", CLASS_COLOURS[labels[::-1]])], factor=4)
    assert canvas.size == (2 * 8 + 6, 8 + 14)
    assert np.array_equal(np.asarray(canvas)[14 + 1, 8 + 6 + 1], CLASS_COLOURS[2])   # panel b, top-left: class 2
    assert np.array_equal(np.asarray(canvas)[14 + 5, 8 + 6 + 5], CLASS_COLOURS[1])   # and its bottom right


@pytest.mark.long(60)
def test_the_demo_runs_a_trained_model_through_the_accelerator(tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    train(TINY, steps=40, seed=1, pool_scenes=128).model.save(checkpoint)
    out = tmp_path / "demo"
    assert main(["demo", "--checkpoint", str(checkpoint), "-o", str(out), "--seed", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accelerator_equals_golden"] is True
    assert all(task["accelerator_equals_golden"] and task["cycles"] > 0 for task in report["tasks"].values())
    assert 0.5 < report["pixel_agreement_float"] <= 1 and report["depth_snr_db"] > 10
    names = {"input.png", "semseg.png", "depth.png", "experts.png", "summary.png"} | {
        f"routing_{block}_{task}.png" for block in TINY.moe_blocks for task in ("semseg", "depth")}
    assert {path.split("/")[-1] for path in report["files"]} == names
    with Image.open(out / "semseg.png") as picture:          # truth, float, golden, accelerator
        assert picture.size == (4 * 256 + 3 * 6, 256 + 14)
        panels = np.asarray(picture.convert("RGB"))[14:]
    golden, accelerator = panels[:, 2 * 262:2 * 262 + 256], panels[:, 3 * 262:]
    assert np.array_equal(golden, accelerator)
    assert all(tuple(colour) in {tuple(c) for c in CLASS_COLOURS} for colour in accelerator.reshape(-1, 3)[::97])

    picture = tmp_path / "scene.png"                          # a picture file instead of a held-out scene
    scene = labelled_scenes(TINY, 1, 77).images[0]
    Image.fromarray((scene.transpose(1, 2, 0) * 255).astype(np.uint8)).save(picture)
    assert main(["demo", "--checkpoint", str(checkpoint), "--image", str(picture), "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accelerator_equals_golden"] is True
    with Image.open(out / "depth.png") as drawn:             # no truth panel for a picture
        assert drawn.size == (3 * 256 + 2 * 6, 256 + 14)


def test_the_demo_refuses_bad_input_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:                   # a directory is not a checkpoint
        main(["demo", "--checkpoint", str(tmp_path), "-o", str(tmp_path / "d")])
    assert exit_.value.code == 2 and "is not a file" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["demo", "--checkpoint", str(bad), "-o", str(tmp_path / "d")]) == 2
    assert "cannot be read as a torch checkpoint" in capsys.readouterr().err
    model = tmp_path / "random.pt"
    M3ViT.random(TINY, 0).save(model)
    assert main(["demo", "--checkpoint", str(model), "--accel", "4x8", "-o", str(tmp_path / "d")]) == 2
    assert "square array" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert main(["demo", "--checkpoint", str(model), "--preset", "m3vit-small-pascal", "-o", str(tmp_path / "d")]) == 2
    assert "holds a model of preset 'tiny'" in capsys.readouterr().err
