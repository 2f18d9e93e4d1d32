"""Fidelity and speed of the integer golden model against the float model (`m3vit golden`).

A trained-like seeded float model (or a checkpoint) is calibrated on natural images (or the user's) and
quantized; float and integer inference then run on held-out images of every task, and the report gives the
backbone's SNR (overall and per block), the routers' agreement with the float routing per MoE layer with the
float model's top-k margin histogram beside it, the task heads' SNR, and the wall time of one inference of
each, measured in the same run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .errors import CheckpointError
from .images import natural_images
from .model import run
from .quantize import quantize_image
from .quantized import QuantizedModel

log = logging.getLogger(__name__)

__all__ = ["measure", "load_float", "snr_db", "MARGIN_BINS", "CALIBRATION_SEED", "TEST_SEED"]

MARGIN_BINS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5, float("inf"))
CALIBRATION_SEED, TEST_SEED = 1000, 2000


def snr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """10·log10(Σ reference² / Σ (reference − approximation)²); inf when they are equal."""
    reference = np.asarray(reference, np.float64)
    error = float(((reference - np.asarray(approximation, np.float64)) ** 2).sum())
    return float("inf") if error == 0 else float(10 * np.log10(float((reference ** 2).sum()) / error))


def _best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def load_float(config: ModelConfig, seed: int, checkpoint: str | Path | None, backbone_only: bool = False):
    """(the float model, what loading its checkpoint did or None): the seeded trained-like model, or a
    checkpoint (`M3ViT.save`'s format, or official names: a backbone-only one gets seeded random heads)."""
    from .float_model import M3ViT, read_checkpoint

    if checkpoint is None:
        log.info(f"building the trained-like {config.name} (seed {seed})")
        return M3ViT.trained_like(config, seed), None
    log.info(f"reading {checkpoint}")
    data = read_checkpoint(checkpoint)
    if isinstance(data, dict) and "format" in data:
        network = M3ViT.load(checkpoint)
        if network.config != config:
            raise CheckpointError(f"{checkpoint}: holds a model of preset {network.config.name!r}, not {config.name!r} "
                                  "(choose it with --preset)")
        return network, None
    model = M3ViT.random(config, seed)
    report = model.load_official_state_dict(data, backbone_only=backbone_only)
    return model.eval(), report


def measure(config: ModelConfig, *, tasks: list[int] | None = None, seed: int = 0,
            checkpoint: str | Path | None = None, backbone_only: bool = False, calibration: np.ndarray | None = None,
            test: np.ndarray | None = None, calibration_images: int = 16, test_images: int = 8,
            repeats: int = 3, weights_floor: bool = False) -> dict:
    """The fidelity report of `config` for `tasks` (default all; timing uses the first). `calibration` and
    `test` are float images [N, C, H, W] (default: seeded natural images, `calibration_images` and
    `test_images` of them). A quantized-model file as `checkpoint` (`.npz`) has no float model beside it: the
    report then holds the integer model's figures only. `weights_floor`: the report's `weights_floor` holds the
    int8 weights' figures alone, every activation float (`golden.sensitivity.weights_floor`), else None."""
    tasks = list(range(config.num_tasks)) if tasks is None else [config.task_index(t) for t in tasks]
    test = natural_images(config, test_images, TEST_SEED + seed) if test is None else test
    if checkpoint is not None and str(checkpoint).endswith(".npz"):
        if weights_floor:
            raise CheckpointError(f"{checkpoint}: a quantized model holds no float weights to measure its int8 "
                                  "weights against")
        quantized = QuantizedModel.load(checkpoint, expect=config)
        image = quantize_image(quantized, test[0])
        return {"preset": config.name, "checkpoint": str(checkpoint),
                "golden_seconds": _best_time(lambda: run(quantized, image, tasks[0]), repeats)}

    from .float_model import float_inference, quantize_model
    network, loaded = load_float(config, seed, checkpoint, backbone_only)
    if calibration is None:
        calibration = natural_images(config, calibration_images, CALIBRATION_SEED + seed)
    log.info(f"calibrating and quantizing on {len(calibration)} images")
    rounding = {} if weights_floor else None            # the weights' rounding, for the floor below
    quantized = quantize_model(network, calibration, rounding=rounding)
    residual_scale = quantized.scales["residual"]
    per_task = {}
    for task in tasks:
        head_ref, head_int, blocks_ref, blocks_int = [], [], [], []
        agreement = {b: [] for b in config.moe_blocks}
        margins = {b: [] for b in config.moe_blocks}
        for index, image in enumerate(test):
            log.info(f"task {config.tasks[task].name}: image {index + 1} of {len(test)}, float and integer")
            reference = float_inference(network, image, task)
            result = run(quantized, quantize_image(quantized, image), task, intermediates=True)
            blocks_ref.append(reference["blocks"])
            blocks_int.append(np.stack([result.tensors[f"blocks.{b}.out"] for b in range(config.depth)]))
            head_ref.append(reference["output"])
            head_int.append(result.output * quantized.scales[f"heads.{task}.output"])
            for block in config.moe_blocks:
                float_ids = np.sort(reference["routing"][block][0], axis=-1)
                int_ids = np.sort(result.routing[block].expert_ids, axis=-1)
                agreement[block].append((float_ids == int_ids).all(-1))
                if config.top_k < config.num_experts:
                    top = -np.sort(-reference["logits"][block], axis=-1)
                    margins[block].append(top[:, config.top_k - 1] - top[:, config.top_k])
        blocks_ref, blocks_int = np.stack(blocks_ref), np.stack(blocks_int) * residual_scale
        per_task[config.tasks[task].name] = {
            "snr_db": snr_db(blocks_ref[:, -1], blocks_int[:, -1]),
            "snr_db_per_block": [snr_db(blocks_ref[:, b], blocks_int[:, b]) for b in range(config.depth)],
            "head_snr_db": snr_db(np.stack(head_ref), np.stack(head_int)),
            "router_agreement": {b: float(np.concatenate(v).mean()) for b, v in agreement.items()},
            "margin_median": {b: float(np.median(np.concatenate(v))) for b, v in margins.items() if v},
            "margin_histogram": {b: np.histogram(np.concatenate(v), MARGIN_BINS)[0].tolist()
                                 for b, v in margins.items() if v},
        }
    image = test[0]
    golden_seconds, float_seconds = _time_both(network, quantized, image, quantize_image(quantized, image),
                                               tasks[0], repeats)
    reports = per_task.values()
    per_layer = {block: {task: figures["router_agreement"][block] for task, figures in per_task.items()}
                 for block in config.moe_blocks}
    floor = None
    if weights_floor:
        from .sensitivity import weights_floor as int8_weights_alone
        log.info("the int8 weights alone: the float model with the quantizer's weights, every activation float")
        figures = int8_weights_alone(network, calibration, test, tasks=tasks, rounding=rounding)
        floor_layers = {block: {config.tasks[t].name: figures["agreement"][t][block] for t in tasks}
                        for block in config.moe_blocks}
        floor = {"snr_db": min(figures["snr_db"][t][-1] for t in tasks),
                 "snr_db_per_block": {block: min(figures["snr_db"][t][block] for t in tasks)
                                      for block in range(config.depth)},
                 "router_agreement_per_layer": floor_layers, **_worst_layer(floor_layers)}
    return {
        "preset": config.name, "seed": seed, "checkpoint": None if checkpoint is None else str(checkpoint),
        "checkpoint_report": None if loaded is None else loaded.summary(),
        "calibration_images": len(calibration), "test_images": len(test),
        "snr_db": min(t["snr_db"] for t in reports),
        "snr_db_per_block": {block: min(t["snr_db_per_block"][block] for t in reports)
                             for block in range(config.depth)},
        "router_agreement_per_layer": per_layer, **_worst_layer(per_layer),
        "head_snr_db": min(t["head_snr_db"] for t in reports),
        "golden_seconds": golden_seconds, "float_seconds": float_seconds,
        "time_ratio": golden_seconds / float_seconds,
        "margin_bins": [str(b) for b in MARGIN_BINS],
        "tasks": per_task,
        "weights_floor": floor,
    }


def _worst_layer(per_layer: dict) -> dict:
    """`worst_layer` ({block, task, agreement}, None without MoE layers) and `router_agreement` (its agreement,
    1.0 without) of per-layer agreements {block: {task: fraction}}."""
    worst = min(((agreement, block, task) for block, by_task in per_layer.items()
                 for task, agreement in by_task.items()), default=None)
    return {"worst_layer": None if worst is None else {"block": worst[1], "task": worst[2], "agreement": worst[0]},
            "router_agreement": 1.0 if worst is None else worst[0]}


def _time_both(network, quantized, image, image_int, task, repeats):
    """Best-of-`repeats` wall time of one float and one integer inference of `task`, interleaved."""
    from .float_model import float_output

    golden, floating = [], []
    run(quantized, image_int, task)
    float_output(network, image, task)
    for _ in range(repeats):
        golden.append(_best_time(lambda: run(quantized, image_int, task), 1))
        floating.append(_best_time(lambda: float_output(network, image, task), 1))
    return min(golden), min(floating)
