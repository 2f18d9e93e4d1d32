"""Multi-task training of the float M³ViT on the CPU, on the procedural scenes of `golden.scenes` (`train`), and
what a trained model scores on held-out scenes (`evaluate`).

Each step draws a batch from a pool of scenes (flipped left-right at random) and runs it once per task, with that
task's routers: cross-entropy for segmentation, L1 for depth, plus `BALANCE_WEIGHT` × the reference's MoE load-balance
loss per MoE layer (cv² of the experts' importance, the sum of the gate weights each receives, plus cv² of their
load, the smooth count of noisy top-k: Shazeer et al. 2017), with noisy top-k gating during training (a
learned noise scale per router, `softplus(x · w_noise)`, as the official code; inference has no noise). AdamW
with a linear warm-up and a cosine decay over the budget (minutes, or a number of steps).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .float_model import M3ViT, route
from .scenes import Scenes, labelled_scenes

__all__ = ["train", "evaluate", "TrainResult", "BALANCE_WEIGHT", "HELD_OUT_SCENES"]

BALANCE_WEIGHT = 0.01           # the reference's weight of the load-balance loss
LEARNING_RATE, WEIGHT_DECAY, WARM_UP = 3e-3, 0.05, 0.05
BATCH = 32
POOL_PIXELS = 1 << 22           # the training pool's size in pixels (4,096 scenes of 32 × 32, 128 of 128 × 256)
HELD_OUT_SCENES = 256
HELD_OUT_SEED = 1 << 20         # held-out scenes come from seed + this; the pool from the seed itself


def _cv_squared(values: torch.Tensor) -> torch.Tensor:
    return values.var() / (values.mean() ** 2 + 1e-10)


class NoisyGating(nn.Module):
    """Noisy top-k gating for every MoE layer of `model` while it trains, and the balance loss it gathers
    (`take()` returns the sum over the layers run since the last call, and clears it)."""

    def __init__(self, model: M3ViT):
        super().__init__()
        config = model.config
        self.top_k, self.gate = config.top_k, config.gate
        self.w_noise = nn.ParameterList(nn.Parameter(torch.zeros(len(config.tasks), config.embed_dim,
                                                                 config.num_experts))
                                        for _ in config.moe_blocks)
        self._losses: list[torch.Tensor] = []
        for layer, block in enumerate(config.moe_blocks):
            model.blocks[block].mlp.training_noise = self._noise_of(layer)

    def _noise_of(self, layer: int):
        def noise(tokens, logits, task):
            std = F.softplus(tokens @ self.w_noise[layer][task]) + 1e-2
            noisy = logits + torch.randn_like(logits) * std
            top = noisy.topk(self.top_k + 1, dim=-1).values
            threshold_in, threshold_out = top[:, self.top_k:], top[:, self.top_k - 1:self.top_k]
            normal = torch.distributions.Normal(0.0, 1.0)
            stays_in = torch.where(noisy > threshold_in, normal.cdf((logits - threshold_in) / std),
                                   normal.cdf((logits - threshold_out) / std))
            ids, weights = route(noisy, self.top_k, self.gate)
            importance = torch.zeros(logits.shape[-1]).index_add(0, ids.flatten(), weights.flatten())
            self._losses.append(_cv_squared(importance) + _cv_squared(stays_in.sum(0)))
            return noisy
        return noise

    def take(self) -> torch.Tensor:
        total = sum(self._losses, torch.zeros(()))
        self._losses.clear()
        return total


def _task_loss(kind: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "semseg":
        return F.cross_entropy(output, target)
    return F.l1_loss(output[:, 0], target)


@dataclass
class TrainResult:
    """The trained model (in eval mode), its held-out scores (`evaluate`) and how the training went."""

    model: M3ViT
    report: dict = field(default_factory=dict)


def _learning_rate(progress: float) -> float:
    if progress < WARM_UP:
        return LEARNING_RATE * progress / WARM_UP
    return LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - WARM_UP) / (1 - WARM_UP))))


def train(config: ModelConfig, *, minutes: float = 10.0, steps: int | None = None, seed: int = 0,
          pool_scenes: int | None = None, progress=None) -> TrainResult:
    """Train a seeded random M³ViT of `config` on every task of it for `minutes` of wall time, or for `steps`
    steps when given (then reproducible: the same seed gives the same model on the same machine), on a pool of
    `pool_scenes` scenes (default: `POOL_PIXELS` pixels' worth, at most 4,096) of `seed`.
    `progress(step, fraction, losses)`, if given, is called after each step with the fraction of the budget
    spent and the step's loss per task (and `balance`)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    height, width = config.image_size
    pool = labelled_scenes(config, max(BATCH, pool_scenes or min(4096, POOL_PIXELS // (height * width))), seed)
    targets = {task.name: torch.from_numpy(pool.target(task.name)) for task in config.tasks}
    images = torch.from_numpy(pool.images)
    model = M3ViT.random(config, seed).train()
    gating = NoisyGating(model)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(gating.parameters()), lr=LEARNING_RATE,
                                  weight_decay=WEIGHT_DECAY)
    start, step = time.monotonic(), 0

    def spent() -> float:          # the fraction of the budget spent
        return step / steps if steps is not None else (time.monotonic() - start) / (minutes * 60)

    while spent() < 1:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(spent())
        chosen = torch.from_numpy(rng.choice(len(pool), BATCH, replace=False))
        flip = bool(rng.random() < 0.5)
        batch = images[chosen].flip(-1) if flip else images[chosen]
        losses, total = {}, torch.zeros(())
        for index, task in enumerate(config.tasks):
            target = targets[task.name][chosen]
            loss = _task_loss(task.name, model(batch, index), target.flip(-1) if flip else target)
            balance = gating.take()
            losses[task.name], losses["balance"] = loss.item(), losses.get("balance", 0.0) + balance.item()
            total = total + loss + BALANCE_WEIGHT * balance
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        step += 1
        if progress is not None:
            progress(step, min(1.0, spent()), losses)
    model.eval()
    for block in config.moe_blocks:
        model.blocks[block].mlp.training_noise = None
    report = evaluate(model, labelled_scenes(config, HELD_OUT_SCENES, seed + HELD_OUT_SEED), pool)
    report.update({"steps": step, "train_seconds": round(time.monotonic() - start, 1), "seed": seed,
                   "pool_scenes": len(pool), "batch": BATCH})
    return TrainResult(model, report)


def _miou(predicted: np.ndarray, labels: np.ndarray, classes: int) -> tuple[float, list[float]]:
    """The mean over classes present (in the labels or the prediction) of intersection over union."""
    confusion = np.bincount(labels.ravel() * classes + predicted.ravel(), minlength=classes * classes)
    confusion = confusion.reshape(classes, classes)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    ious = [float(confusion[c, c] / union[c]) for c in range(classes) if union[c]]
    return float(np.mean(ious)), ious


def evaluate(model: M3ViT, scenes: Scenes, training: Scenes | None = None, batch: int = 64) -> dict:
    """Held-out scores of `model` on `scenes`: segmentation `miou` (and `iou_per_class`), `depth_error` (mean
    absolute error) against `constant_depth_error` (the error of predicting the median depth of `training`, or of
    `scenes` when not given, everywhere), and the routing: `expert_shares` {block: {task: share per expert}}, the
    fraction of the (token, slot) assignments each expert receives, and its minimum `min_expert_share`."""
    config = model.config
    report: dict = {"expert_shares": {}}
    counts = {block: np.zeros((config.num_tasks, config.num_experts)) for block in config.moe_blocks}
    with torch.no_grad():
        for index, task in enumerate(config.tasks):
            outputs = []
            for first in range(0, len(scenes), batch):
                result = model(torch.from_numpy(scenes.images[first:first + batch]), index, intermediates=True)
                outputs.append(result.output.numpy())
                for block, routing in result.routing.items():
                    counts[block][index] += np.bincount(routing.expert_ids.numpy().ravel(),
                                                        minlength=config.num_experts)
            output = np.concatenate(outputs)
            if task.name == "semseg":
                report["miou"], report["iou_per_class"] = _miou(output.argmax(1), scenes.labels, task.classes)
            else:
                median = float(np.median((training if training is not None else scenes).depth))
                report["depth_error"] = float(np.abs(output[:, 0] - scenes.depth).mean())
                report["constant_depth_error"] = float(np.abs(median - scenes.depth).mean())
    shares = {block: count / count.sum(1, keepdims=True) for block, count in counts.items()}
    report["expert_shares"] = {str(block): {task.name: [round(float(s), 4) for s in share[index]]
                                            for index, task in enumerate(config.tasks)}
                               for block, share in shares.items()}
    report["min_expert_share"] = float(min(share.min() for share in shares.values())) if shares else 1.0
    return report
