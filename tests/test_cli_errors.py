"""Ordinary command-line mistakes: each ends in one line naming the problem and exit status 2, before any long
work, and leaves no output behind."""

import numpy as np
import pytest

from m3vit.cli import main

TINY = "tiny"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    (root / "garbage.pt").write_bytes(b"\x80\x02not a torch file at all" * 10)
    (root / "garbage.npz").write_bytes(b"PK\x03\x04" + bytes(range(200)))
    (root / "empty_images").mkdir()
    (root / "plain_file").write_text("a file, not a directory")
    np.save(root / "wrong_shape.npy", np.zeros((2, 5, 7)))
    from golden.config import model_preset
    from golden.float_model import M3ViT
    M3ViT.random(model_preset(TINY), 0).save(root / "tiny.pt")
    return root


# (arguments, a fragment of the message); "{f}" is the directory of the files above, "{o}" a fresh one
CASES = [
    (["golden", "--checkpoint", "/nonexistent/model.pt"], "no such file"),
    (["golden", "--checkpoint", "{f}/empty_images"], "is not a file"),
    (["golden", "--checkpoint", "{f}/garbage.pt", "--preset", TINY], "cannot be read as a torch"),
    (["quantize", "--preset", TINY, "--checkpoint", "{f}/garbage.pt", "-o", "{o}/q.npz"], "cannot be read as a torch"),
    (["golden", "--checkpoint", "{f}/garbage.npz", "--preset", TINY], "garbage.npz"),
    (["golden", "--checkpoint", "{f}/tiny.pt"], "holds a model of preset 'tiny'"),
    (["golden", "--images", "0"], "--images: 0 is out of range"),
    (["golden", "--images", "many"], "'many' is not an integer"),
    (["golden", "--seed", "-100000000000"], "--seed: -100000000000 is out of range"),
    (["golden", "--task", "colour"], "no such task"),
    (["golden", "--normalize", "zscore"], "invalid choice"),
    (["golden", "--calibration", "/nonexistent/images"], "no such file"),
    (["golden", "--preset", TINY, "--calibration", "{f}/empty_images"], "empty_images"),
    (["golden", "--preset", TINY, "--calibration", "{f}/plain_file"], "neither a PNG/JPEG file"),
    (["golden", "--preset", TINY, "--test", "{f}/wrong_shape.npy"], "wrong_shape.npy"),
    (["quantize", "-o", "/nonexistent/dir/model.npz"], "cannot write into"),
    (["quantize", "-o", "{f}"], "is a directory"),
    (["quantize", "--images", "-3", "-o", "{o}/model.npz"], "--images: -3 is out of range"),
    (["info", "--preset", "m3vit-huge"], "preset"),
    (["info", "--task", "99"], "task"),
    (["fit", "--accel", "0x0"], "accelerator"),
    (["fit", "--target", "zcu999"], "zcu999"),
    (["fit", "--preset", TINY, "--accel", "32x32"], "the head dimension (16) a multiple of the array's columns"),
    (["run", "--preset", TINY, "--accel", "32x32"], "the head dimension (16) a multiple of the array's columns"),
    (["elaborate", "gemm", "--array", "100000x100000", "-o", "{o}/rtl"], "at most 128"),
    (["elaborate", "gemm", "-o", "{f}/plain_file/rtl"], "not writable"),
    (["elaborate", "multiplier", "-o", "{o}/rtl"], "invalid choice"),
    (["synth", "gemm", "--freq", "-5"], "--freq: -5 MHz is out of range"),
    (["synth", "gemm", "--target", "ice40"], "ice40"),
    (["synth", "gemm", "--array", "16x16"], "does not fit ulx3s-85f"),
    (["synth", "gemm", "--seed", "x"], "'x' is not an integer"),
    (["build", "--preset", TINY], "a board build needs -o/--output"),
    (["build", "--estimate", "xc7a35t"], "'xc7a35t': no such device; choose one of xczu7ev"),
    (["build", "--estimate", "xczu7ev", "--program"], "--program takes a board build"),
    (["build", "--estimate", "xczu7ev", "--accel", "3x3"], "3x3"),
    (["bench", "gemm", "--array", "3x"], "accelerator"),
    (["bench", "gemm", "--weight-feed", "0"], "--weight-feed: 0 is out of range"),
    (["bench", "loader", "--latency", "0"], "--latency: 0 is out of range"),
    (["bench", "float", "--repeats", "0"], "--repeats: 0 is out of range"),
    (["bench", "router", "--task", "7"], "task"),
    (["bench", "model", "--preset", TINY, "--arrays", "4x8"], "array_rows"),
    (["report", "--preset", TINY, "--accel", "4x8", "-o", "{o}/report"], "array_rows"),
    (["report", "--preset", TINY, "--task", "9", "-o", "{o}/report"], "task"),
    (["report", "--preset", TINY, "--target", "zcu999", "-o", "{o}/report"], "zcu999"),
    (["sweep", "--preset", "m3vit-huge", "-o", "{o}/sweep"], "m3vit-huge"),
    (["sweep", "--arrays", "4,x", "-o", "{o}/sweep"], "'x' is not an integer"),
    (["sweep", "--target", "zcu999", "-o", "{o}/sweep"], "zcu999"),
    (["simulate"], "invalid choice"),
]


@pytest.mark.parametrize("arguments, fragment", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_mistake_is_one_line_and_exit_2(arguments, fragment, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.replace("{f}", str(files)).replace("{o}", str(out)) for a in arguments]
    try:
        status = main(argv)
    except SystemExit as exit:          # argparse's own errors
        status = exit.code
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert status == 2, captured.err
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    assert fragment in errors[0], errors[0]
    assert errors[0] == captured.err.splitlines()[-1]
    assert not any(out.iterdir()), "a failed command left output behind"


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    from golden.files import atomic_open
    target = tmp_path / "model.npz"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as file:
            file.write(b"half of the new")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
