"""Seeded structured test images (not random noise): gradients, shapes, textures, normalised as a ViT takes
them (per channel zero mean, unit-ish variance, like ImageNet-normalised photographs)."""

from __future__ import annotations

import numpy as np

from .config import ModelConfig

__all__ = ["structured_images"]

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


def structured_images(config: ModelConfig, count: int, seed: int) -> np.ndarray:
    """`count` float images [count, C, H, W] for `config`, reproducible from `seed`, cycling through gradients,
    shapes, textures and checkerboards, normalised to mean 0.45 → 0 and std 0.225 → 1 per channel."""
    if count < 1:
        raise ValueError(f"count = {count}: at least one image")
    rng = np.random.default_rng(seed)
    height, width = config.image_size
    images = np.stack([_image(rng, _KINDS[(i + seed) % len(_KINDS)], config.in_channels, height, width)
                       for i in range(count)])
    return ((images - 0.45) / 0.225).astype(np.float32)
