"""Benchmarks of the hardware units (run by `m3vit bench …`, never by the tests): cycle counts measured in the
fast simulator, against the floor and the dataflow's analytic bound."""

from __future__ import annotations

import logging

import numpy as np

from golden import ops
from golden.config import AcceleratorConfig, ModelConfig
from golden.fixtures import ROUTING_FIXTURE

from ..compute.gemm import GemmEngine, GemmMode, gemm_model, tiles

log = logging.getLogger(__name__)

__all__ = ["backbone_gemms", "measure_gemms", "bench_gemm", "bench_loader", "bench_router", "bench_vector"]

GELU_PARAMETERS = (8, 1 << 14, 14)      # fraction bits, hidden multiplier and shift of a measured GELU GEMM


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
    utilization, and whether the result equals the golden model's. A shape's `mode` (default INT8) is the
    output mode it runs in (GELU with `GELU_PARAMETERS`). M beyond the engine's token block runs block by
    block (one command per block of rows, as the controller issues them): the cycles are their sum."""
    from .gemm import GemmModelBench, run_gemm
    from .verilator import run

    engine = GemmEngine.for_model(model, accel)
    bench = GemmModelBench(engine)
    r, c = accel.array_rows, accel.array_cols
    rng = np.random.default_rng(seed)

    async def testbench(ctx):
        for index, shape in enumerate(shapes):
            m, k, n = shape["m"], shape["k"], shape["n"]
            log.info(f"GEMM {index + 1} of {len(shapes)}: {shape.get('name', '')} M={m} K={k} N={n}")
            x, w = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
            bias = rng.integers(-(1 << 16), 1 << 16, n)
            multiplier, shift = ops.quantize_multiplier(np.full(n, 1e-3))
            mode = shape.get("mode", GemmMode.INT8)
            parts, cycles = [], 0
            for start in range(0, m, engine.max_m):
                part, spent = await run_gemm(ctx, bench, x[start:start + engine.max_m], w, bias, multiplier, shift,
                                             mode, gelu=GELU_PARAMETERS)
                parts.append(part)
                cycles += spent
            result = np.concatenate(parts)
            floor = -(-m * k * n // (r * c))
            expected = gemm_model(x, w, bias, multiplier, shift, mode, gelu=GELU_PARAMETERS)
            blocks = [min(engine.max_m, m - start) for start in range(0, m, engine.max_m)]
            shape.update(cycles=cycles, floor=floor,
                         bound=sum(tiles(k, r) * tiles(n, c) * max(b, accel.weight_load_cycles) for b in blocks),
                         utilization=floor / cycles, bit_exact=bool(np.array_equal(result, expected)))

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
    from ..memory.layout import expert_layer_layout
    from ..memory.loader import WeightPath
    from .dram import AXI4ReadModel
    from .loader import ideal_cycles, run_loads
    from .verilator import Verilated, VerilatorContext, run

    tokens = ROUTING_FIXTURE[task]
    active = sorted(tokens)
    d, h = model.embed_dim, model.expert_hidden
    shapes = measure_gemms(model, accel, [{"m": tokens[e], "k": k, "n": n, "expert": e}
                                          for e in active for k, n in ((d, h), (h, d))], seed)
    computes = [shape["cycles"] for shape in shapes]
    rows = []
    for bandwidth in bandwidths:
        log.info(f"weight path at {bandwidth} bytes per cycle")
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
    from ..moe.router import Router
    from .router import route_layer, write_router
    from .verilator import Verilated, VerilatorContext, run

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
        log.info(f"router with {count} MACs per cycle")
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


def _vector_cycles(model: ModelConfig, accel: AcceleratorConfig, seed: int) -> dict:
    """Cycles of the vector units on one block's rows, measured in the Python simulator with random inputs
    (checked against the golden operations): LayerNorm of T rows (two outputs), the softmax of one head's
    T rows, and the residual addition of T rows."""
    from ..vector.layernorm import LayerNorm
    from ..vector.residual import ResidualAdd
    from . import simulate
    from .vector import normalise_rows, row_beats, softmax_rows, stream_through, write_norm
    from ..vector.softmax import Softmax, score_bits

    rng = np.random.default_rng(seed)
    t, d = model.num_tokens, model.embed_dim
    cycles, exact = {}, {}

    norm = LayerNorm.for_model(model, accel)
    x = rng.integers(-(1 << 15), 1 << 15, (t, d))
    outputs = [(rng.integers(-(1 << 15) + 1, 1 << 15, d), rng.integers(-(1 << 30), 1 << 30, d), 22, bits)
               for bits in norm.output_bits]

    async def normalise(ctx):
        await write_norm(ctx, norm, 0, [(g, b) for g, b, _, _ in outputs])
        y, cycles["layernorm"] = await normalise_rows(ctx, norm, x, 1, [sh for _, _, sh, _ in outputs])
        exact["layernorm"] = all(np.array_equal(a, b) for a, b in zip(y, ops.layernorm(x, 1, outputs)))

    log.info("LayerNorm in the Python simulator")
    simulate(norm, normalise)

    softmax = Softmax.for_model(model, accel)
    bound = 1 << (score_bits(model.head_dim) - 1)
    scores = rng.integers(-bound, bound, (t, t))
    scalars = (20000, 22, 30000, 12)

    async def exponentials(ctx):     # a head's rows, a query block (the unit's `max_rows`) at a time
        results, cycles["softmax_head"] = [], 0
        for start in range(0, t, softmax.max_rows):
            *result, spent = await softmax_rows(ctx, softmax, scores[start:start + softmax.max_rows], *scalars)
            results.append(result)
            cycles["softmax_head"] += spent
        got = [np.concatenate(part) for part in zip(*results)]
        exact["softmax"] = all(np.array_equal(a, b) for a, b in zip(got, Softmax.model(scores, *scalars)))

    log.info("softmax in the Python simulator")
    simulate(softmax, exponentials)

    residual = ResidualAdd.for_model(model, accel)
    beats = row_beats(rng.integers(-(1 << 15), 1 << 15, (t, d)), residual.lanes)
    # addends of either kind: residual-format values and combine terms (up to ±2^15)
    addends = row_beats(rng.integers(-(1 << 15), (1 << 15) + 1, (t, d)), residual.lanes)
    payloads = [{"residual": [int(v) for v in a], "addend": [int(v) for v in b]} for a, b in zip(beats, addends)]

    async def add(ctx):
        run = await stream_through(ctx, residual.input, payloads,
                                   {"output": (residual.output, lambda p: [int(v) for v in p])},
                                   expected={"output": len(payloads)})
        cycles["residual"] = run.cycles
        exact["residual"] = np.array_equal(np.array(run.received["output"]),
                                           ResidualAdd.model(beats, addends, residual.width))

    log.info("residual addition in the Python simulator")
    simulate(residual, add)
    return {"cycles": cycles, "bit_exact": exact}


def _unit_resources(model: ModelConfig, accel: AcceleratorConfig, target: str) -> dict:
    """`synth_ecp5` cell counts of each vector unit and of the GEMM engine `accel` builds (GELU is inside its
    output path, at `requant_lanes`: also reported alone)."""
    from ..vector.gelu import Gelu
    from ..vector.layernorm import LayerNorm
    from ..vector.residual import ResidualAdd
    from ..vector.softmax import Softmax
    from ..flow.synth import cell_counts

    units = {"layernorm": LayerNorm.for_model(model, accel), "softmax": Softmax.for_model(model, accel),
             "gelu": Gelu(min(accel.requant_lanes, accel.array_cols)), "residual": ResidualAdd.for_model(model, accel),
             "gemm_engine": GemmEngine.for_model(model, accel)}
    counts = {}
    for name, unit in units.items():
        log.info(f"synth_ecp5 of {name}")
        counts[name] = cell_counts(unit, name, target)
    return counts


def bench_vector(model: ModelConfig, accel: AcceleratorConfig, task: int = 0, synth_accel: AcceleratorConfig |
                 None = None, target: str = "ulx3s-85f", seed: int = 0) -> dict:
    """Each vector operation of one dense and one MoE block: its cycles (measured), its share of the block's
    cycles (the block's GEMMs measured on the engine `accel` builds, plus the vector work the schedule does
    not hide), and whether the schedule of docs/architecture.md hides it behind GEMM work. With
    `synth_accel`, the units' and that accelerator's GEMM engine's cells after `synth_ecp5` on `target`."""
    t, d, heads = model.num_tokens, model.embed_dim, model.num_heads
    tokens = ROUTING_FIXTURE[task]
    shapes = [{"name": "qkv", "m": t, "k": d, "n": 3 * d},
              {"name": "attention_qk", "m": t, "k": model.head_dim, "n": t},
              {"name": "attention_av", "m": t, "k": t, "n": model.head_dim}, {"name": "proj", "m": t, "k": d, "n": d},
              {"name": "dense_fc2", "m": t, "k": model.mlp_hidden, "n": d}]
    for mode in (GemmMode.GELU, GemmMode.INT8):
        shapes.append({"name": f"dense_fc1_{mode.name.lower()}", "m": t, "k": d, "n": model.mlp_hidden, "mode": mode})
        for expert, count in sorted(tokens.items()):
            shapes.append({"name": f"expert{expert}_fc1_{mode.name.lower()}", "m": count, "k": d,
                           "n": model.expert_hidden, "mode": mode})
    for expert, count in sorted(tokens.items()):
        shapes.append({"name": f"expert{expert}_fc2", "m": count, "k": model.expert_hidden, "n": d})
    measured = {shape["name"]: shape for shape in measure_gemms(model, accel, shapes, seed)}
    gemm = {name: shape["cycles"] for name, shape in measured.items()}
    attention = gemm["qkv"] + heads * (gemm["attention_qk"] + gemm["attention_av"]) + gemm["proj"]
    experts = sorted(tokens)
    blocks = {
        "dense": {"gemm": attention + gemm["dense_fc1_gelu"] + gemm["dense_fc2"],
                  "gelu": gemm["dense_fc1_gelu"] - gemm["dense_fc1_int8"]},
        "moe": {"gemm": attention + sum(gemm[f"expert{e}_fc1_gelu"] + gemm[f"expert{e}_fc2"] for e in experts),
                "gelu": sum(gemm[f"expert{e}_fc1_gelu"] - gemm[f"expert{e}_fc1_int8"] for e in experts)},
    }
    vector = _vector_cycles(model, accel, seed)
    cycles = vector["cycles"]
    softmax_hidden = cycles["softmax_head"] <= gemm["attention_qk"]
    # softmax of head h runs during Q·Kᵀ of head h + 1: the last head's, and any excess, stay exposed
    softmax_exposed = cycles["softmax_head"] + (heads - 1) * max(0, cycles["softmax_head"] - gemm["attention_qk"])
    rows = []
    for block, work in blocks.items():
        ops_of_block = [("layernorm1", cycles["layernorm"], False, cycles["layernorm"]),
                        ("softmax", heads * cycles["softmax_head"], softmax_hidden, softmax_exposed),
                        ("residual_add_proj", cycles["residual"], True, 0),
                        ("layernorm2", cycles["layernorm"], False, cycles["layernorm"]),
                        ("gelu", work["gelu"], True, work["gelu"]),
                        ("residual_add_fc2", cycles["residual"], True, 0)]    # the experts' terms, or dense fc2's
        total = work["gemm"] + sum(exposed for *_, exposed in ops_of_block)
        for op, spent, overlapped, exposed in ops_of_block:
            rows.append({"block": block, "op": op, "cycles": spent, "exposed_cycles": exposed,
                         "fraction_of_block": spent / total, "overlapped": overlapped})
        work["total"] = total
    result = {"preset": model.name, "array": f"{accel.array_rows}x{accel.array_cols}", "lanes": accel.vector_lanes,
              "task": task, "gemm_cycles": gemm, "blocks": blocks, "rows": rows,
              "bit_exact": {**vector["bit_exact"], "gemm": all(s["bit_exact"] for s in measured.values())}}
    if synth_accel is not None:
        cells = _unit_resources(model, synth_accel, target)
        vector_luts = sum(cells[name]["LUT4"] for name in ("layernorm", "softmax", "gelu"))
        result["synthesis"] = {"target": target, "array": f"{synth_accel.array_rows}x{synth_accel.array_cols}",
                               "lanes": synth_accel.vector_lanes, "cells": cells,
                               "softmax_gelu_layernorm_lut4": vector_luts,
                               "fraction_of_engine_lut4": vector_luts / cells["gemm_engine"]["LUT4"]}
    return result
