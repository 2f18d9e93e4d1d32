"""Benchmarks of the hardware units (run by `m3vit bench …`, never by the tests): cycle counts measured in the
fast simulator, against the floor and the dataflow's analytic bound."""

from __future__ import annotations

import numpy as np

from golden import ops
from golden.config import AcceleratorConfig, ModelConfig
from golden.fixtures import ROUTING_FIXTURE

from .gemm import GemmEngine, GemmMode, gemm_model, tiles

__all__ = ["backbone_gemms", "bench_gemm"]


def backbone_gemms(model: ModelConfig, task: int = 0) -> list[dict]:
    """Every distinct matrix product of one single-task backbone inference: name, M, K, N and how often it
    occurs. Experts take the routing fixture's token counts for `task`, the same in every MoE layer."""
    t, d, heads = model.num_tokens, model.embed_dim, model.num_heads
    moe, dense = len(model.moe_blocks), model.depth - len(model.moe_blocks)
    shapes = [
        {"name": "patch_embed", "m": model.num_patches, "k": model.patch_dim, "n": d, "count": 1},
        {"name": "qkv", "m": t, "k": d, "n": 3 * d, "count": model.depth},
        {"name": "attention_qk", "m": t, "k": model.head_dim, "n": t, "count": model.depth * heads},
        {"name": "attention_av", "m": t, "k": t, "n": model.head_dim, "count": model.depth * heads},
        {"name": "proj", "m": t, "k": d, "n": d, "count": model.depth},
        {"name": "dense_fc1", "m": t, "k": d, "n": model.mlp_hidden, "count": dense},
        {"name": "dense_fc2", "m": t, "k": model.mlp_hidden, "n": d, "count": dense},
    ]
    for expert, tokens in sorted(ROUTING_FIXTURE[task].items()):
        shapes.append({"name": f"expert{expert}_fc1", "m": tokens, "k": d, "n": model.expert_hidden, "count": moe})
        shapes.append({"name": f"expert{expert}_fc2", "m": tokens, "k": model.expert_hidden, "n": d, "count": moe})
    return shapes


def bench_gemm(model: ModelConfig, accel: AcceleratorConfig, task: int = 0, seed: int = 0) -> dict:
    """Cycles of every backbone GEMM on the engine `accel` builds for `model`, measured in the fast
    simulator with random int8 operands, each result checked against the golden model."""
    from .sim.gemm import GemmModelBench, run_gemm
    from .sim.verilator import run

    engine = GemmEngine.for_model(model, accel)
    bench = GemmModelBench(engine)
    r, c = accel.array_rows, accel.array_cols
    shapes = backbone_gemms(model, task)
    rng = np.random.default_rng(seed)

    async def testbench(ctx):
        for shape in shapes:
            m, k, n = shape["m"], shape["k"], shape["n"]
            x, w = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
            bias = rng.integers(-(1 << 16), 1 << 16, n)
            multiplier, shift = ops.quantize_multiplier(np.full(n, 1e-3))
            result, cycles = await run_gemm(ctx, bench, x, w, bias, multiplier, shift, GemmMode.INT8)
            floor = -(-m * k * n // (r * c))
            shape.update(cycles=cycles, floor=floor,
                         bound=tiles(k, r) * tiles(n, c) * max(m, accel.weight_load_cycles),
                         utilization=floor / cycles,
                         bit_exact=bool(np.array_equal(result, gemm_model(x, w, bias, multiplier, shift,
                                                                           GemmMode.INT8))))

    run(bench.context, testbench)
    weighted_floor = sum(s["floor"] * s["count"] for s in shapes)
    weighted_cycles = sum(s["cycles"] * s["count"] for s in shapes)
    return {"array": f"{r}x{c}", "weight_feed_bytes": accel.weight_feed_bytes, "preset": model.name,
            "task": task, "shapes": shapes,
            "backbone_cycles": weighted_cycles, "overall_utilization": weighted_floor / weighted_cycles}
