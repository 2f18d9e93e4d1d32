"""Benchmarks of the hardware units (run by `m3vit bench …`, never by the tests): cycle counts measured in the
fast simulator, against the floor and the dataflow's analytic bound."""

from __future__ import annotations

import numpy as np

from golden import ops
from golden.config import AcceleratorConfig, ModelConfig
from golden.fixtures import ROUTING_FIXTURE

from .gemm import GemmEngine, GemmMode, gemm_model, tiles

__all__ = ["backbone_gemms", "measure_gemms", "bench_gemm", "bench_loader", "bench_router"]


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


def measure_gemms(model: ModelConfig, accel: AcceleratorConfig, shapes: list[dict], seed: int = 0) -> list[dict]:
    """Add to each shape (`m`, `k`, `n`) the cycles the engine `accel` builds for `model` takes for it, measured
    in the fast simulator with random int8 operands, the floor ⌈M·K·N / (R·C)⌉, the dataflow's bound,
    utilization, and whether the result equals the golden model's."""
    from .sim.gemm import GemmModelBench, run_gemm
    from .sim.verilator import run

    engine = GemmEngine.for_model(model, accel)
    bench = GemmModelBench(engine)
    r, c = accel.array_rows, accel.array_cols
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
    return shapes


def bench_gemm(model: ModelConfig, accel: AcceleratorConfig, task: int = 0, seed: int = 0) -> dict:
    """Cycles of every backbone GEMM (`backbone_gemms`) on the engine `accel` builds for `model`."""
    shapes = measure_gemms(model, accel, backbone_gemms(model, task), seed)
    r, c = accel.array_rows, accel.array_cols
    weighted_floor = sum(s["floor"] * s["count"] for s in shapes)
    weighted_cycles = sum(s["cycles"] * s["count"] for s in shapes)
    return {"array": f"{r}x{c}", "weight_feed_bytes": accel.weight_feed_bytes, "preset": model.name,
            "task": task, "shapes": shapes,
            "backbone_cycles": weighted_cycles, "overall_utilization": weighted_floor / weighted_cycles}


def bench_loader(model: ModelConfig, accel: AcceleratorConfig, task: int = 0, bandwidths=(8, 16, 32),
                 latency: int = 24, seed: int = 0) -> dict:
    """One MoE layer's expert sequence through the weight path (fast simulator) against a DRAM model of
    `latency` cycles to the first beat, at each bandwidth in bytes per cycle: the bus is the accelerator's or,
    for more bytes per cycle, as wide as needed; the consumer holds each buffer for the cycles the GEMM engine
    takes for that expert matrix at the routing fixture's token count (measured). Compares the total with
    the ideal double-buffered schedule L₁ + Σ max(Cᵢ, Lᵢ₊₁)."""
    from .layout import expert_layer_layout
    from .loader import WeightPath
    from .sim.dram import AXI4ReadModel
    from .sim.loader import ideal_cycles, run_loads
    from .sim.verilator import Verilated, VerilatorContext, run

    tokens = ROUTING_FIXTURE[task]
    active = sorted(tokens)
    d, h = model.embed_dim, model.expert_hidden
    shapes = measure_gemms(model, accel, [{"m": tokens[e], "k": k, "n": n, "expert": e}
                                          for e in active for k, n in ((d, h), (h, d))], seed)
    computes = [shape["cycles"] for shape in shapes]
    rows = []
    for bandwidth in bandwidths:
        bus = max(accel.dram_bytes_per_beat, bandwidth)
        config = accel.replace(dram_data_width=8 * bus)
        layout = expert_layer_layout(model, config)
        base = 1 << 20
        image = np.random.default_rng(seed).integers(0, 256, base + layout.bytes, dtype=np.uint8)
        dram = AXI4ReadModel(image, bus, latency=latency, beats_per_cycle=bandwidth / bus)
        path = WeightPath.for_config(model, config)
        loads = layout.loads(active, base)
        buffers = [i % config.weight_buffers for i in range(len(loads))]
        result = {}

        async def testbench(ctx, path=path, dram=dram, loads=loads, buffers=buffers):
            ctx.set(path.layer_base, base)
            ctx.set(path.read.en, 0)
            result["run"] = await run_loads(ctx, path, dram, [(path.experts, active)], buffers, computes)

        run(VerilatorContext(Verilated(path, "weight_path")), testbench)
        load_cycles = [-(-load.length // bandwidth) for load in loads]
        ideal = ideal_cycles(load_cycles, computes)
        rows.append({"bandwidth": bandwidth, "bus_bytes": bus, "cycles": result["run"].cycles,
                     "ideal_cycles": ideal, "ratio": result["run"].cycles / ideal,
                     "compute_cycles": sum(computes), "load_cycles": sum(load_cycles),
                     "bytes_read": dram.bytes_read, "active_expert_bytes": sum(load.length for load in loads),
                     "max_bursts_in_flight": dram.max_in_flight})
    layout = expert_layer_layout(model, accel)
    return {"preset": model.name, "array": f"{accel.array_rows}x{accel.array_cols}", "task": task,
            "active_experts": active, "latency": latency, "outstanding": accel.dram_outstanding,
            "rows": rows,
            "weight_buffer_bytes": accel.weight_buffers * accel.weight_buffer_bytes,
            "all_experts_bytes": model.num_experts * (layout.fc1.slab_bytes + layout.fc2.slab_bytes)}


def bench_router(model: ModelConfig, accel: AcceleratorConfig, task: int = 0, macs=(16, 64, 128),
                 seed: int = 0) -> dict:
    """Cycles for the router to route all tokens of one MoE layer (fast simulator, random int16 tokens and
    int8 router weights, checked against the golden router), at each number of multiply-accumulates per cycle,
    against the layer's expert compute on the GEMM engine `accel` builds (the routing fixture's token counts,
    measured)."""
    from .router import Router
    from .sim.router import route_layer, write_router
    from .sim.verilator import Verilated, VerilatorContext, run

    tokens = ROUTING_FIXTURE[task]
    d, h = model.embed_dim, model.expert_hidden
    shapes = measure_gemms(model, accel, [{"m": tokens[e], "k": k, "n": n}
                                          for e in sorted(tokens) for k, n in ((d, h), (h, d))], seed)
    expert_cycles = sum(shape["cycles"] for shape in shapes)
    rng = np.random.default_rng(seed)
    x = rng.integers(-(1 << 15), 1 << 15, (model.num_tokens, d))
    weights = rng.integers(-127, 128, (1, model.num_tasks, d, model.num_experts))
    multipliers = np.full((1, model.num_tasks), 1 << 14)
    shifts = np.full((1, model.num_tasks), 30)
    logits = ops.exact_matmul(x.astype(np.int16), weights[0, task].astype(np.int8))
    expected_ids, expected_weights = ops.route(logits, model.top_k, model.gate, 1 << 14, 30)
    rows = []
    for count in macs:
        router = Router.for_model(model, accel.replace(router_macs_per_cycle=count))
        result = {}

        async def testbench(ctx, router=router):
            ctx.set(router.queue_read.en, 1)
            await write_router(ctx, router, weights, multipliers, shifts)
            result["layer"] = await route_layer(ctx, router, 0, task, x)

        run(VerilatorContext(Verilated(router, "router")), testbench)
        layer = result["layer"]
        rows.append({"macs_per_cycle": count, "cycles": layer.cycles,
                     "cycles_per_token": layer.cycles / model.num_tokens,
                     "fraction_of_moe_layer": layer.cycles / expert_cycles,
                     "bit_exact": bool(np.array_equal(layer.ids, expected_ids)
                                       and np.array_equal(layer.weights, expected_weights))})
    return {"preset": model.name, "array": f"{accel.array_rows}x{accel.array_cols}", "task": task,
            "tokens": model.num_tokens, "expert_cycles": expert_cycles, "rows": rows}
