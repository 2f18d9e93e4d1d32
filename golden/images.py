"""Seeded test images (not random noise), in two families:

- `natural_images`: scenes in [0, 1] per channel with the statistics of the photographs a trained M³ViT was
  measured on (mean ≈ 0.35, std ≈ 0.22 per channel; `../shared/reference/m3vit.md`): a sky-to-ground
  gradient, 1/f texture, objects with soft edges and shading. The default calibration and test images.
- `structured_images`: gradients, shapes, textures and checkerboards normalised to zero mean and unit
  variance per channel (ImageNet-style normalisation of such images); kept for tests of the arithmetic.
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig

__all__ = ["structured_images", "natural_images", "load_images", "pink_noise", "ImageError", "NORMALIZATIONS",
           "NATURAL_MEAN", "NATURAL_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

NATURAL_MEAN, NATURAL_STD = 0.35, 0.22          # per channel, of the images the trained model was measured on
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_KINDS = ("gradient", "shapes", "texture", "checker")


def _image(rng: np.random.Generator, kind: str, channels: int, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    colour = lambda: rng.uniform(0.0, 1.0, (channels, 1, 1))  # noqa: E731
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * x + np.sin(angle) * y
        ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
        image = colour() * (1 - ramp) + colour() * ramp
    elif kind == "shapes":
        image = np.broadcast_to(colour(), (channels, height, width)).copy()
        for _ in range(rng.integers(2, 6)):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            mask = (y - cy * height / max(height, width)) ** 2 + (x - cx * width / max(height, width)) ** 2 < r * r
            if rng.random() < 0.5:
                mask = (np.abs(y - cy) < r) & (np.abs(x - cx) < r * rng.uniform(0.5, 2))
            image[:, mask] = colour()[:, :, 0]
    elif kind == "texture":
        image = np.zeros((channels, height, width))
        for _ in range(3):
            frequency, angle = rng.uniform(4, 40), rng.uniform(0, np.pi)
            wave = np.sin(2 * np.pi * frequency * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 6.3))
            image += colour() * wave
        image = 0.5 + image / 6
    else:
        size = rng.integers(4, 16)
        board = ((np.arange(height)[:, None] // size + np.arange(width)[None, :] // size) % 2).astype(float)
        image = colour() * board + colour() * (1 - board)
    image = image + rng.normal(0, 0.02, image.shape)  # sensor noise
    return np.clip(image, 0, 1)


def _count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count = {count!r}: at least one image")


def structured_images(config: ModelConfig, count: int, seed: int) -> np.ndarray:
    """`count` float images [count, C, H, W] for `config`, reproducible from `seed`, cycling through gradients,
    shapes, textures and checkerboards, normalised to mean 0.45 → 0 and std 0.225 → 1 per channel."""
    _count(count)
    rng = np.random.default_rng(seed)
    height, width = config.image_size
    images = np.stack([_image(rng, _KINDS[(i + seed) % len(_KINDS)], config.in_channels, height, width)
                       for i in range(count)])
    return ((images - 0.45) / 0.225).astype(np.float32)


def pink_noise(rng: np.random.Generator, height: int, width: int, exponent: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with a 1/f^exponent amplitude spectrum (natural images: ≈ 1)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius ** exponent
    spectrum[0, 0] = 0
    noise = np.fft.irfft2(spectrum, s=(height, width))
    return noise / max(noise.std(), 1e-12)


def _scene(rng: np.random.Generator, channels: int, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = y / height, x / width
    horizon = rng.uniform(0.25, 0.6) + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1.5) * x + rng.uniform(0, 6.3))
    sky, ground = rng.uniform(0.2, 0.9, (channels, 1, 1)), rng.uniform(0.05, 0.5, (channels, 1, 1))
    below = np.clip((y - horizon) * 20, 0, 1)
    image = sky * (1 - below) * (1 - 0.4 * y) + ground * below * (0.6 + 0.6 * y)
    texture = pink_noise(rng, height, width, rng.uniform(0.8, 1.3))
    image = image + rng.uniform(0.04, 0.15) * texture * (0.3 + below)
    for _ in range(rng.integers(3, 9)):                      # objects: shaded blobs and boxes with soft edges
        cy, cx = rng.uniform(0.2, 1.0), rng.uniform(0, 1)
        ry, rx = rng.uniform(0.05, 0.35), rng.uniform(0.03, 0.2)
        if rng.random() < 0.5:
            inside = 1 - np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
        else:
            inside = np.minimum(1 - np.abs(y - cy) / ry, 1 - np.abs(x - cx) / rx)
        mask = np.clip(inside * rng.uniform(5, 40), 0, 1)
        shade = 1 + rng.uniform(-0.4, 0.4) * (x - cx) / rx + 0.1 * pink_noise(rng, height, width, 1.5)
        object_colour = rng.uniform(0.0, 1.0, (channels, 1, 1)) * shade
        image = image * (1 - mask) + object_colour * mask
    return image + rng.normal(0, 0.01, image.shape)          # sensor noise


def natural_images(config: ModelConfig, count: int, seed: int) -> np.ndarray:
    """`count` float images [count, C, H, W] in [0, 1] for `config`, reproducible from `seed`: outdoor-like
    scenes (horizon, 1/f texture, shaded objects), each channel brought to mean `NATURAL_MEAN` and std
    `NATURAL_STD` over the image (then clipped to [0, 1]), as the photographs a trained M³ViT takes unnormalised."""
    _count(count)
    rng = np.random.default_rng(seed)
    height, width = config.image_size
    images = []
    for _ in range(count):
        image = _scene(rng, config.in_channels, height, width)
        mean = image.mean(axis=(1, 2), keepdims=True)
        std = np.maximum(image.std(axis=(1, 2), keepdims=True), 1e-6)
        target_mean = NATURAL_MEAN + rng.uniform(-0.08, 0.08, mean.shape)
        target_std = NATURAL_STD * rng.uniform(0.8, 1.2, std.shape)
        images.append(np.clip((image - mean) / std * target_std + target_mean, 0, 1))
    return np.stack(images).astype(np.float32)


class ImageError(ValueError):
    """Images given by the user cannot be used: a missing or unreadable file, a wrong shape, NaN or inf."""


NORMALIZATIONS = ("none", "imagenet")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _normalized(images: np.ndarray, normalize: str) -> np.ndarray:
    if normalize == "imagenet":
        mean = np.asarray(IMAGENET_MEAN, np.float32)[None, :, None, None]
        std = np.asarray(IMAGENET_STD, np.float32)[None, :, None, None]
        return ((images - mean) / std).astype(np.float32)
    return images.astype(np.float32)


def _picture(path, height: int, width: int) -> np.ndarray:
    """One PNG/JPEG as float RGB [3, height, width] in [0, 1]: scaled to cover the size, then centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            picture = opened.convert("RGB")
            picture.load()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: not a readable image ({type(error).__name__}: {error})") from None
    scale = max(height / picture.height, width / picture.width)
    size = (max(width, round(picture.width * scale)), max(height, round(picture.height * scale)))
    picture = picture.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    picture = picture.crop((left, top, left + width, top + height))
    return np.asarray(picture, dtype=np.float32).transpose(2, 0, 1) / 255.0


def load_images(source, config: ModelConfig, normalize: str = "none") -> np.ndarray:
    """The user's images as the float model takes them, [N, C, H, W] float32: a `.npy` of float images
    [N, C, H, W] at the preset's size, or a directory of PNG/JPEG files or one such file (Pillow; resized to cover
    the preset's size and centre-cropped), in [0, 1]; `normalize` = `imagenet` subtracts ImageNet's mean and divides by its
    std per channel (for a model trained on such inputs), `none` leaves them. Any problem is an `ImageError`."""
    from pathlib import Path

    if normalize not in NORMALIZATIONS:
        raise ImageError(f"normalize = {normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")
    path = Path(source)
    channels, (height, width) = config.in_channels, config.image_size
    if path.is_dir() or path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise ImageError(f"{path}: no PNG or JPEG files in the directory")
        if channels != 3:
            raise ImageError(f"{path}: picture files give 3 channels, {config.name} takes {channels}")
        images = np.stack([_picture(file, height, width) for file in files])
    elif path.suffix.lower() == ".npy":
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        try:
            images = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError, EOFError) as error:
            raise ImageError(f"{path}: not a readable .npy file ({type(error).__name__}: {error})") from None
        expected = (channels, height, width)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected or images.shape[0] == 0:
            raise ImageError(f"{path}: images of shape {tuple(images.shape)}, {config.name} takes "
                             f"[N ≥ 1, {channels}, {height}, {width}]")
        if not np.issubdtype(images.dtype, np.floating):
            raise ImageError(f"{path}: dtype {images.dtype}; images are float arrays (values in [0, 1])")
        images = np.asarray(images, dtype=np.float32)
    else:
        raise ImageError(f"{path}: neither a PNG/JPEG file, a directory of them, nor a .npy file"
                         + ("" if path.exists() else " (it does not exist)"))
    if not np.all(np.isfinite(images)):
        raise ImageError(f"{path}: images contain NaN or inf")
    return _normalized(images, normalize)
