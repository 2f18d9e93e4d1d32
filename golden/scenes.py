"""A procedural multi-task dataset: seeded scenes of shapes standing on a textured ground plane, with a class and a
depth per pixel, at any preset's image size (`labelled_scenes`).

Each scene is a far backdrop above a horizon and a ground plane below it; 1-4 shapes stand on the ground, drawn far to
near so that nearer ones hide farther ones. Class 0 is the background (backdrop and ground); class c ≥ 1 is the
shape `SHAPES[c - 1]`. Every surface (backdrop, ground, each shape) takes a colour drawn from one distribution, with
its own shading and 1/f texture, so that no class can be told from a pixel's colour alone: the outline decides.
Depth is relative, in (0, 1]: the backdrop is at 1, the ground comes nearer towards the bottom of the image
(`NEAREST` at the last row), and a shape is at the depth of the ground where it stands, and smaller the farther it
is, so the context (where a shape stands, how large it is) decides its depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .images import pink_noise

__all__ = ["Scenes", "SceneError", "labelled_scenes", "check_labels", "SHAPES", "TASK_KINDS", "NEAREST"]

SHAPES = ("disc", "triangle", "cross", "square", "ring", "pole", "diamond")   # the fewest classes: the most distinct
TASK_KINDS = ("semseg", "depth")        # the tasks the scenes carry labels for
NEAREST = 0.1                           # the depth of the ground at the image's last row


class SceneError(ValueError):
    """The scenes cannot label a model's tasks (a task they do not know, too many classes), or a bad count."""


@dataclass
class Scenes:
    """`images` float32 [N, C, H, W] in [0, 1]; `labels` int64 [N, H, W], 0 the background, c ≥ 1 the shape
    `SHAPES[c - 1]`; `depth` float32 [N, H, W] in [`NEAREST`, 1]."""

    images: np.ndarray
    labels: np.ndarray
    depth: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def target(self, kind: str) -> np.ndarray:
        """The per-pixel target of a task kind (`TASK_KINDS`)."""
        return self.labels if kind == "semseg" else self.depth


def check_labels(config: ModelConfig) -> int:
    """The number of classes of `config`'s segmentation task, after checking that the scenes label every task
    (`SceneError` if not)."""
    unknown = [task.name for task in config.tasks if task.name not in TASK_KINDS]
    if unknown:
        raise SceneError(f"{config.name}: the procedural scenes label {' and '.join(TASK_KINDS)} only, not "
                         f"{', '.join(unknown)}")
    classes = [task.classes for task in config.tasks if task.name == "semseg"]
    if classes and not 2 <= classes[0] <= len(SHAPES) + 1:
        raise SceneError(f"{config.name}: semseg has {classes[0]} classes; the scenes draw the background and "
                         f"{len(SHAPES)} shapes (2 to {len(SHAPES) + 1} classes)")
    return classes[0] if classes else len(SHAPES) + 1


def _outline(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The mask of a shape in its own coordinates (u across, v down, both -1 … 1 over its box)."""
    radius = np.sqrt(u * u + v * v)
    if kind == "disc":
        return radius < 1
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.85
    if kind == "triangle":
        return (v < 1) & (np.abs(u) < (v + 1) / 2)
    if kind == "ring":
        return (radius < 1) & (radius > 0.55)
    if kind == "cross":
        return (np.abs(u) < 1) & (np.abs(v) < 1) & ((np.abs(u) < 0.4) | (np.abs(v) < 0.4))
    if kind == "pole":
        return (np.abs(u) < 0.3) & (np.abs(v) < 1)
    return np.abs(u) + np.abs(v) < 1                                     # diamond


def _surface(rng: np.random.Generator, channels: int, height: int, width: int, x: np.ndarray, y: np.ndarray):
    """A colour with a shading ramp and 1/f texture, [C, H, W]."""
    colour = rng.uniform(0.05, 0.95, (channels, 1, 1))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x + np.sin(angle) * y) * rng.uniform(0.0, 0.4)
    texture = rng.uniform(0.03, 0.12) * pink_noise(rng, height, width, rng.uniform(0.8, 1.5))
    return colour * (1 + ramp - ramp.mean()) + texture


def _scene(rng: np.random.Generator, channels: int, height: int, width: int, classes: int):
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    horizon = height * rng.uniform(0.2, 0.45)
    below = np.clip((y - horizon) / (height - 1 - horizon), 0, 1)       # 0 at the horizon, 1 at the last row
    ground_depth = 1 / (1 + (1 / NEAREST - 1) * below)                  # a plane seen from above it
    depth = np.where(y > horizon, ground_depth, 1.0)
    image = np.where(y > horizon, _surface(rng, channels, height, width, x / width, y / height),
                     _surface(rng, channels, height, width, x / width, y / height))
    labels = np.zeros((height, width), np.int64)
    stands = np.sort(rng.uniform(horizon + 1, height - 1, rng.integers(1, 5)))    # far to near
    for foot in stands:
        row = (foot - horizon) / (height - 1 - horizon)
        distance = 1 / (1 + (1 / NEAREST - 1) * row)
        size = height * (0.16 + 0.2 * row) * rng.uniform(0.85, 1.15)              # half its height
        centre_x, centre_y = rng.uniform(0, width), foot - size
        kind = int(rng.integers(1, classes))
        mask = _outline(SHAPES[kind - 1], (x - centre_x) / (size * rng.uniform(0.9, 1.1)), (y - centre_y) / size)
        image = np.where(mask, _surface(rng, channels, height, width, x / width, y / height), image)
        labels[mask] = kind
        depth[mask] = distance
    image = image + rng.normal(0, 0.01, image.shape)                    # sensor noise
    return np.clip(image, 0, 1), labels, depth


def labelled_scenes(config: ModelConfig, count: int, seed: int) -> Scenes:
    """`count` scenes at `config`'s image size, reproducible from `seed` (the module's doc says what they hold).
    `config`'s tasks must be among `TASK_KINDS`, its segmentation at most `len(SHAPES) + 1` classes."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SceneError(f"count = {count!r}: at least one scene")
    classes = check_labels(config)
    rng = np.random.default_rng(seed)
    height, width = config.image_size
    images, labels, depth = zip(*(_scene(rng, config.in_channels, height, width, classes) for _ in range(count)))
    return Scenes(np.stack(images).astype(np.float32), np.stack(labels), np.stack(depth).astype(np.float32))
