"""The bilinear ×2 upsampler against `golden.ops.upsample2x`: random maps fed row segment by row segment, back to
back, with the extremes (−2^15, 2^15 − 1, saturation to 8 bits, rounding ties), one-row and one-column maps,
under random stalls on both streams; its timing with nothing stalled; parameter checks; Verilog that
elaborates."""

import numpy as np
import pytest

from golden import ops
from hw.flow.export import to_verilog
from hw.sim import simulate
from hw.vector.upsample import Upsampler


def _maps(rng, lanes, in_bits, count):
    """Feature maps [lanes, H, W] with the extremes (−2^(b−1), 2^(b−1) − 1), all-limit maps that saturate at 8
    bits, sixteenths that end in halves (ties to even), one-row and one-column maps, and (b > 8) maps whose sums
    step across 8 bits' saturation, its rounding ties included."""
    low, high = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    maps = []
    for index in range(count):
        shape = (lanes, int(rng.integers(1, 4)), int(rng.integers(1, 6)))
        feature_map = rng.integers(low, high + 1, shape)
        if index == 0:
            feature_map[:, 0, 0], feature_map[:, -1, -1] = low, high   # at the corners the edges replicate
        if index == 1:
            feature_map[:] = rng.choice([low, high], shape)
        if index == 2:
            feature_map[:] = 8 * rng.integers(-4, 4, shape) + 2
        maps.append(feature_map)
    if in_bits > 8:     # sums around 8 bits' saturation ties: 15·127 + d and −15·128 + d, d one pixel of four
        for edge, step in ((127, 1), (-128, -1)):
            boundary = np.full((lanes, 2, 28), edge)
            boundary[:, 1, 1::2] = edge + step * np.arange(1, 15)
            maps.append(boundary)
    return maps


def _segments(feature_map):
    """(near, far) rows [W, lanes] of each output row of a map, in order: output row 2y is ¾ row y + ¼ row
    y − 1, row 2y + 1 is ¾ row y + ¼ row y + 1 (the edge row itself outside)."""
    h = feature_map.shape[1]
    for row in range(2 * h):
        y = row // 2
        neighbour = min(max(y - 1 if row % 2 == 0 else y + 1, 0), h - 1)
        yield feature_map[:, y].T, feature_map[:, neighbour].T


async def _run(ctx, unit, segments, rng, valid, ready):
    """Feed `segments` with `valid`/`ready` probabilities; the output pixels as they left, and the cycles."""
    pixels = [(near[x], far[x], x == len(near) - 1) for near, far in segments for x in range(len(near))]
    expected = 2 * len(pixels)
    out, cycles, fed = [], 0, 0
    while len(out) < expected:
        offering = fed < len(pixels) and rng.random() < valid
        if offering:
            near, far, last = pixels[fed]
            ctx.set(unit.input.payload, {"near": [int(v) for v in near], "far": [int(v) for v in far],
                                         "last": int(last)})
        ctx.set(unit.input.valid, offering)
        ctx.set(unit.output.ready, rng.random() < ready)
        await ctx.delay(1e-9)
        taken = offering and ctx.get(unit.input.ready)
        if ctx.get(unit.output.valid) and ctx.get(unit.output.ready):
            out.append([int(v) for v in ctx.get(unit.output.payload)])
        await ctx.tick()
        fed += taken
        cycles += 1
        assert cycles < 50 * expected + 100, "the upsampler hangs"
    return np.array(out), cycles


@pytest.mark.parametrize("lanes, in_bits, out_bits, valid, ready",
                         [(4, 16, 16, 1.0, 1.0), (4, 16, 8, 0.6, 0.5), (1, 16, 16, 0.7, 0.6), (8, 8, 8, 0.8, 0.3)])
def test_maps_row_by_row_are_bit_exact(lanes, in_bits, out_bits, valid, ready):
    unit = Upsampler(lanes, in_bits, out_bits)
    rng = np.random.default_rng(lanes * 100 + out_bits)
    maps = _maps(rng, lanes, in_bits, 6)
    segments = [segment for feature_map in maps for segment in _segments(feature_map)]
    result = {}

    async def testbench(ctx):
        result["out"], result["cycles"] = await _run(ctx, unit, segments, rng, valid, ready)

    simulate(unit, testbench)
    # the whole maps, output row by output row, pixel by pixel, against the golden op on the map
    expected = np.concatenate([ops.upsample2x(feature_map, out_bits).transpose(1, 2, 0).reshape(-1, lanes)
                               for feature_map in maps])
    assert np.array_equal(result["out"], expected)
    assert np.array_equal(np.concatenate([unit.model(near, far) for near, far in segments]), expected)
    if valid == ready == 1.0:       # one output pixel a cycle, one cycle per segment to start
        assert result["cycles"] <= len(expected) + len(segments) + 1


@pytest.mark.parametrize("args, text", [((0,), "lanes"), ((4, 17), "in_bits"), ((4, 16, 1), "out_bits")])
def test_bad_parameters_are_named(args, text):
    with pytest.raises(ValueError, match=text):
        Upsampler(*args)


def test_verilog_elaborates():
    assert "module" in to_verilog(Upsampler(16, 16, 8), name="upsampler")
