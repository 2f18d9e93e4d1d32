"""The procedural multi-task scenes: reproducible, labelled consistently, and the class not in a pixel's colour."""

import numpy as np
import pytest

from golden.config import model_preset
from golden.scenes import NEAREST, SceneError, labelled_scenes

TINY = model_preset("tiny")


def test_scenes_are_reproducible_and_in_range():
    scenes = labelled_scenes(TINY, 24, 5)
    again = labelled_scenes(TINY, 24, 5)
    other = labelled_scenes(TINY, 24, 6)
    assert np.array_equal(scenes.images, again.images) and np.array_equal(scenes.labels, again.labels)
    assert not np.array_equal(scenes.images, other.images)
    assert scenes.images.shape == (24, 3, 32, 32) and scenes.images.dtype == np.float32
    assert scenes.labels.shape == scenes.depth.shape == (24, 32, 32) and scenes.labels.dtype == np.int64
    assert 0 <= scenes.images.min() and scenes.images.max() <= 1
    classes = TINY.tasks[TINY.task_index("semseg")].classes
    assert set(np.unique(scenes.labels)) == set(range(classes))          # every class drawn
    assert NEAREST - 1e-6 <= scenes.depth.min() and scenes.depth.max() == 1


def test_depth_follows_the_ground_and_shapes_stand_on_it():
    scenes = labelled_scenes(TINY, 16, 2)
    for labels, depth in zip(scenes.labels, scenes.depth):
        background = labels == 0
        for column in range(depth.shape[1]):           # the ground comes nearer row by row, down the image
            rows = depth[background[:, column], column]
            assert np.all(np.diff(rows) <= 1e-6)
        for kind in np.unique(labels)[1:]:            # a shape is at one depth or several (several shapes)
            assert np.all(depth[labels == kind] < 1)


def test_a_pixels_colour_does_not_tell_its_class():
    classes = TINY.tasks[TINY.task_index("semseg")].classes
    scenes = labelled_scenes(TINY, 600, 3)
    pixels = scenes.images.transpose(0, 2, 3, 1).reshape(-1, 3)
    labels = scenes.labels.ravel()
    means = np.array([pixels[labels == c].mean(0) for c in range(classes)])
    assert np.ptp(means, axis=0).max() < 0.05, means         # every class: the same colours on average
    stds = np.array([pixels[labels == c].std(0) for c in range(classes)])
    assert stds.min() > 0.15                                  # and spread over the whole range


@pytest.mark.parametrize("preset, words", [
    ("m3vit-small-pascal", "label semseg and depth only, not human_parts, saliency, normals, edge"),
    ("m3vit-small-nyud", "semseg has 40 classes"),
])
def test_a_model_whose_tasks_the_scenes_cannot_label_is_refused(preset, words):
    with pytest.raises(SceneError, match=words):
        labelled_scenes(model_preset(preset), 1, 0)


@pytest.mark.parametrize("count", [0, -1, 2.5, True])
def test_a_bad_count_is_refused(count):
    with pytest.raises(SceneError, match="at least one scene"):
        labelled_scenes(TINY, count, 0)
