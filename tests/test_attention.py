"""Attention heads end to end on the hardware: Q·Kᵀ on the GEMM engine (raw int32 scores), the softmax unit on
the score rows, attention·V on the GEMM engine requantized per row with the softmax unit's row scales;
bit-exact against the golden model's attention of every head of every block of the `tiny` preset."""

import numpy as np
import pytest
from amaranth import Elaboratable, Module

from golden.config import accelerator_preset, model_preset
from golden.float_model import M3ViT, quantize_model
from golden.images import structured_images
from golden.model import run
from golden.quantize import quantize_image
from hw.compute.gemm import GemmEngine, GemmMode
from hw.sim import simulate
from hw.sim.gemm import GemmBench, run_gemm
from hw.sim.vector import softmax_rows
from hw.vector.softmax import Softmax

TINY = model_preset("tiny")


class AttentionBench(Elaboratable):
    """The GEMM engine with its memories, and the softmax unit beside it."""

    def __init__(self, model, accel):
        t = model.num_tokens
        self.gemm = GemmBench(GemmEngine(accel.array_rows, accel.array_cols, max_m=t, max_k=max(t, model.head_dim),
                                         max_n=max(t, model.head_dim)))
        self.softmax = Softmax.for_model(model, accel)

    def elaborate(self, platform):
        m = Module()
        m.submodules.gemm, m.submodules.softmax = self.gemm, self.softmax
        return m


@pytest.mark.long(25)
@pytest.mark.parametrize("stalls", [{}, {"valid_probability": 0.7, "ready_probability": 0.5}])
def test_every_head_of_the_tiny_model_matches_the_golden_attention(stalls):
    quantized = quantize_model(M3ViT.trained_like(TINY, seed=1), structured_images(TINY, 8, 11))
    image = quantize_image(quantized, structured_images(TINY, 1, 3)[0])
    golden = run(quantized, image, 0, intermediates=True)
    accel = accelerator_preset("4x4")
    bench = AttentionBench(TINY, accel)
    d, hd, t = TINY.embed_dim, TINY.head_dim, TINY.num_tokens
    zeros = np.zeros(max(t, hd), dtype=np.int64)
    unused = (zeros, zeros)                       # per-column multiplier and shift: RAW, or per row instead
    mismatches = []

    async def testbench(ctx):
        rng = np.random.default_rng(7)
        ready = stalls.get("ready_probability", 1.0)
        for block in range(TINY.depth):
            p = f"blocks.{block}"
            qkv = golden.tensors[f"{p}.qkv"].astype(np.int64)
            scalars = [int(quantized[f"{p}.attn.{name}"]) for name in
                       ("exp_multiplier", "exp_shift", "out_multiplier", "out_shift")]
            for head in range(TINY.num_heads):
                q, k, v = (qkv[:, part * d + head * hd:part * d + (head + 1) * hd] for part in range(3))
                scores, _ = await run_gemm(ctx, bench.gemm, q, k.T.copy(), zeros[:t], *unused, GemmMode.RAW,
                                           rng=rng, ready_probability=ready)
                probabilities, multipliers, shifts, _ = await softmax_rows(ctx, bench.softmax, scores, *scalars,
                                                                           rng=rng, **stalls)
                out, _ = await run_gemm(ctx, bench.gemm, probabilities, v, zeros[:hd], *unused, GemmMode.INT8,
                                        row_scales=(multipliers, shifts), rng=rng, ready_probability=ready)
                checks = {"scores": (scores, golden.tensors[f"{p}.scores"][head]),
                          "probabilities": (probabilities, golden.tensors[f"{p}.probabilities"][head]),
                          "attention": (out, golden.tensors[f"{p}.attn_out"][:, head * hd:(head + 1) * hd])}
                mismatches.extend((block, head, name) for name, (got, expected) in checks.items()
                                  if not np.array_equal(got, expected))

    simulate(bench, testbench)
    assert not mismatches
