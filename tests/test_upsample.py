"""The bilinear ×2 upsampler against `golden.ops.upsample2x`: random planes back to back with the extremes
(−2^15, 2^15 − 1, saturation to 8 bits, rounding ties), one-row and one-column planes, under random stalls on
both streams; its timing with nothing stalled; parameter checks; Verilog that elaborates."""

import numpy as np
import pytest

from golden import ops
from hw.flow.export import to_verilog
from hw.sim import simulate
from hw.vector.upsample import Upsampler


def _planes(rng, width, in_bits, count):
    low, high = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    planes = []
    for index in range(count):
        plane = rng.integers(low, high + 1, (int(rng.integers(1, 5)), width))
        if index == 0:
            plane[0, 0], plane[-1, -1] = low, high            # the extremes, at the corners the edges replicate
        if index == 1:
            plane[:] = rng.choice([low, high], plane.shape)   # every output saturates at 8 bits or sits at a limit
        if index == 2:
            plane[:] = 8 * rng.integers(-4, 4, plane.shape) + 2   # sixteenths that end in halves: ties to even
        planes.append(plane)
    return planes


async def _run(ctx, unit, planes, rng, valid, ready):
    """Feed `planes` with `valid`/`ready` probabilities; the output rows as they left, and the cycles taken."""
    rows = [(row, index == len(plane) - 1) for plane in planes for index, row in enumerate(plane)]
    expected = sum(2 * len(plane) for plane in planes)
    out, cycles, fed = [], 0, 0
    while len(out) < expected:
        offering = fed < len(rows) and rng.random() < valid
        if offering:
            row, last = rows[fed]
            ctx.set(unit.input.payload, {"row": [int(v) for v in row], "last": int(last)})
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


@pytest.mark.parametrize("width, in_bits, out_bits, valid, ready",
                         [(5, 16, 16, 1.0, 1.0), (5, 16, 8, 0.6, 0.5), (1, 16, 16, 0.7, 0.6), (8, 12, 8, 0.8, 0.3)])
def test_planes_back_to_back_are_bit_exact(width, in_bits, out_bits, valid, ready):
    unit = Upsampler(width, in_bits, out_bits)
    rng = np.random.default_rng(width * 100 + out_bits)
    planes = _planes(rng, width, in_bits, 6)
    result = {}

    async def testbench(ctx):
        result["out"], result["cycles"] = await _run(ctx, unit, planes, rng, valid, ready)

    simulate(unit, testbench)
    expected = np.concatenate([unit.model(plane) for plane in planes])
    assert np.array_equal(result["out"], expected)
    assert np.array_equal(expected[:2 * len(planes[0])], ops.upsample2x(planes[0], out_bits))
    if valid == ready == 1.0:       # one output row a cycle, one cycle per plane to start
        assert result["cycles"] <= len(expected) + len(planes) + 1


@pytest.mark.parametrize("args, text", [((0,), "width"), ((4, 17), "in_bits"), ((4, 16, 1), "out_bits")])
def test_bad_parameters_are_named(args, text):
    with pytest.raises(ValueError, match=text):
        Upsampler(*args)


def test_verilog_elaborates():
    assert "module" in to_verilog(Upsampler(16, 16, 8), name="upsampler")
