"""Benchmarks of the specification side (run by `m3vit bench`, never by the tests)."""

from __future__ import annotations

import time

from .config import ModelConfig


def bench_float(model: ModelConfig, *, task: int | str = 0, repeats: int = 3, seed: int = 0) -> dict:
    """Best-of-`repeats` wall time of one float inference of a seeded random model on one image."""
    import torch

    from .float_model import M3ViT

    network = M3ViT.random(model, seed)
    image = torch.randn(1, model.in_channels, *model.image_size, generator=torch.Generator().manual_seed(seed))
    times = []
    with torch.inference_mode():
        network(image, task)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            network(image, task)
            times.append(time.perf_counter() - start)
    return {"preset": model.name, "task": model.tasks[model.task_index(task)].name, "repeats": repeats,
            "threads": torch.get_num_threads(), "float_seconds": min(times)}
