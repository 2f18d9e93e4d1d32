"""The synthetic trained-like model has a trained M³ViT-tiny's activation tails and routing
(`golden.fixtures`, from shared/reference/m3vit.md), on images it was not shaped on."""

import numpy as np
import pytest
import torch

from golden.config import model_preset
from golden.fidelity import CALIBRATION_SEED
from golden.fixtures import TRAINED_ROUTING, TRAINED_TAILS
from golden.float_model import M3ViT, float_inference
from golden.images import natural_images
from golden.trained_like import activation_tails, routing_statistics, tail_targets

CITYSCAPES = model_preset("m3vit-tiny-cityscapes")
TOLERANCE = 0.25


@pytest.mark.long(95)
def test_trained_like_model_has_the_trained_tails_and_routing():
    """One test, so one worker builds the model (about 30 s)."""
    model = M3ViT.trained_like(CITYSCAPES, 0)
    images = natural_images(CITYSCAPES, 8, CALIBRATION_SEED)     # the calibration images of `m3vit golden`
    _check_tails(model, images)
    _check_routing(model, images)


def _check_tails(model, images):
    measured = activation_tails(model, images)
    expected = {"embed"} | {f"blocks.{b}.{t}" for b in range(CITYSCAPES.depth)
                            for t in ("norm1", "v", "attn_out", "mid", "norm2", "out")}
    expected |= {f"blocks.{b}.gelu" for b in range(CITYSCAPES.depth) if not CITYSCAPES.is_moe(b)}
    expected |= {f"blocks.{b}.experts.gelu" for b in CITYSCAPES.moe_blocks}
    expected |= {f"blocks.{b}.router_logits" for b in CITYSCAPES.moe_blocks}
    assert expected <= set(measured)
    misses = []
    for name in sorted(expected):
        parts = name.split(".")
        block = None if name == "embed" else int(parts[1])
        target = tail_targets(CITYSCAPES, block, parts[-1])
        if any(abs(got / want - 1) > TOLERANCE for got, want in zip(measured[name], target)):
            misses.append((name, measured[name], target))
    assert not misses


def test_targets_are_the_tables():
    assert tail_targets(CITYSCAPES, 0, "norm1") == TRAINED_TAILS["norm1"]["dense"]
    assert tail_targets(CITYSCAPES, 1, "norm1") == TRAINED_TAILS["norm1"]["moe"]
    assert tail_targets(CITYSCAPES, None, "embed") == TRAINED_TAILS["embed"]
    tiny = tail_targets(model_preset("tiny"), 0, "gelu")         # embed 32: scaled by sqrt(32 / 192)
    assert np.allclose(tiny, np.array(TRAINED_TAILS["gelu"]) * np.sqrt(32 / 192))


def _check_routing(model, images):
    logits = {block: [[], []] for block in CITYSCAPES.moe_blocks}
    for task in range(CITYSCAPES.num_tasks):
        for image in images[:4]:
            result = float_inference(model, image, task)
            for block in CITYSCAPES.moe_blocks:
                logits[block][task].append(torch.from_numpy(result["logits"][block]))
    low, high = TRAINED_ROUTING["margin_median"]
    below = 0
    for block, by_task in logits.items():
        stats = routing_statistics([torch.stack(t) for t in by_task], CITYSCAPES.top_k, CITYSCAPES.num_experts)
        assert 11 <= stats["experts_used"] <= 14, (block, stats)
        assert stats["tokens_per_expert"][0] == 1 and stats["tokens_per_expert"][1] <= 100, (block, stats)
        assert 0.1 <= stats["shared_pair"] <= 0.3, (block, stats)
        assert low * 0.75 <= min(stats["margin_median"]) and max(stats["margin_median"]) <= high * 1.5, stats
        top = torch.topk(torch.cat([torch.stack(t) for t in by_task]), 3, -1).values
        below += int(((top[..., 1] - top[..., 2]) < 1e-3).sum())
    assert below >= 3       # a few tokens' top-2 margin under 0.001 logit units, as measured
