"""Images: the natural-looking built-in family, and the user's images from a .npy or a directory of pictures."""

import numpy as np
import pytest

from golden.config import model_preset
from golden.images import (IMAGENET_MEAN, IMAGENET_STD, NATURAL_MEAN, NATURAL_STD, ImageError, load_images,
                           natural_images)

TINY, CITYSCAPES = model_preset("tiny"), model_preset("m3vit-tiny-cityscapes")


def test_natural_images_have_the_measured_statistics_and_structure():
    images = natural_images(CITYSCAPES, 8, 3)
    assert images.shape == (8, 3, 128, 256) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    assert abs(images.mean() - NATURAL_MEAN) < 0.03 and abs(images.std(axis=(2, 3)).mean() - NATURAL_STD) < 0.03
    rows = images.reshape(-1, 256)
    assert np.corrcoef(rows[:, :-1].ravel(), rows[:, 1:].ravel())[0, 1] > 0.8      # smooth, not noise
    assert np.array_equal(images, natural_images(CITYSCAPES, 8, 3))
    assert not np.array_equal(images, natural_images(CITYSCAPES, 8, 4))


def test_npy_and_picture_directories(tmp_path):
    from PIL import Image
    images = natural_images(TINY, 3, 1)
    np.save(tmp_path / "images.npy", images)
    assert np.array_equal(load_images(tmp_path / "images.npy", TINY), images)
    normalised = load_images(tmp_path / "images.npy", TINY, "imagenet")
    assert np.allclose(normalised[:, 1], (images[:, 1] - IMAGENET_MEAN[1]) / IMAGENET_STD[1], atol=1e-6)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    Image.fromarray(np.stack([gradient] * 3, -1)).save(pictures / "b.png")      # 64 wide, 48 high: crop the sides
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(pictures / "a.jpg")
    (pictures / "notes.txt").write_text("not an image")
    loaded = load_images(pictures, TINY)
    assert loaded.shape == (2, 3, 32, 32) and loaded.dtype == np.float32
    assert np.allclose(loaded[0], 200 / 255, atol=2 / 255)                     # a.jpg first (sorted names)
    assert 0.1 < loaded[1, 0, :, 0].mean() < 0.3 and 0.7 < loaded[1, 0, :, -1].mean() < 0.9   # centre crop
    assert np.array_equal(load_images(pictures / "b.png", TINY), loaded[1:])    # one file alone


@pytest.mark.parametrize("case, words", [
    ("missing.npy", "no such file"), ("wrong_shape", r"images of shape \(2, 3, 16, 16\), tiny takes"),
    ("integers", "dtype int64; images are float"), ("nan", "NaN or inf"), ("empty_dir", "no PNG or JPEG"),
    ("broken_png", "not a readable image"), ("text.txt", "neither a PNG/JPEG file"), ("pickle", "not a readable .npy"),
])
def test_bad_images_get_one_clear_error(tmp_path, case, words):
    path = tmp_path / case
    if case == "wrong_shape":
        path = tmp_path / "wrong.npy"
        np.save(path, np.zeros((2, 3, 16, 16), np.float32))
    elif case == "integers":
        path = tmp_path / "ints.npy"
        np.save(path, np.zeros((1, 3, 32, 32), np.int64))
    elif case == "nan":
        path = tmp_path / "nan.npy"
        np.save(path, np.full((1, 3, 32, 32), np.nan, np.float32))
    elif case == "empty_dir":
        path.mkdir()
    elif case == "broken_png":
        path.mkdir()
        (path / "x.png").write_bytes(b"\x89PNG not really")
    elif case == "text.txt":
        path.write_text("hello")
    elif case == "pickle":
        path = tmp_path / "objects.npy"
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError, match=words):
        load_images(path, TINY)
    with pytest.raises(ImageError, match="normalize = 'zscore'"):
        load_images(tmp_path, TINY, "zscore")
