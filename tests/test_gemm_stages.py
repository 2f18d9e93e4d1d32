"""The GEMM engine's stages on their own: the requantizer lane against its model (every saturation width, RAW,
relu, per-row scales, the extremes), one value per cycle through its pipeline."""

import numpy as np
import pytest

from golden import ops
from hw.compute.gemm import GemmGeometry
from hw.compute.gemm.requantizer import RequantizerLane
from hw.compute.multiplier import Multiplier
from hw.sim import simulate

GEOMETRY = GemmGeometry(2, 2, 4, 4, 4)


def _half(shift, width):
    return (1 << (min(shift, width) - 1)) - 1 if min(shift, width) > 0 else 0


def _cases(rng, count):
    aw = GEOMETRY.accumulator_width
    low, high = -(1 << (aw - 1)), (1 << (aw - 1)) - 1
    extremes = [(low, 0), (high, 0), (low, low), (high, high), (0, 0), (-1, 0), (1, -2)]
    cases = []
    for index in range(count):
        if index < len(extremes):
            word, bias = extremes[index]
        else:
            word, bias = (int(v) for v in rng.integers(low, high + 1, 2))
        multiplier = int(rng.choice([0, 1, (1 << 16) - 1, int(rng.integers(1, 1 << 16))]))
        shift = int(rng.choice([0, 1, 14, 31, 47, 62, int(rng.integers(0, 63))]))
        row_multiplier, row_shift = int(rng.integers(0, 1 << 16)), int(rng.integers(0, 63))
        width_index = int(rng.integers(0, len(GEOMETRY.saturation_widths)))
        raw = width_index == len(GEOMETRY.saturation_widths) - 1 and bool(rng.integers(0, 2))
        cases.append({"word": word, "bias": bias, "multiplier": multiplier, "shift": shift,
                      "row_multiplier": row_multiplier, "row_shift": row_shift, "width_index": width_index,
                      "raw": raw, "relu": bool(rng.integers(0, 2)), "row_scaled": bool(rng.integers(0, 2)) and not raw})
    return cases


def _expected(case):
    multiplier, shift = ((case["row_multiplier"], case["row_shift"]) if case["row_scaled"]
                         else (case["multiplier"], case["shift"]))
    bits = GEOMETRY.saturation_widths[case["width_index"]]
    return int(RequantizerLane.model(case["word"], case["bias"], multiplier, shift, bits, raw=case["raw"],
                                     relu=case["relu"]))


@pytest.mark.parametrize("seed", [1, 2])
def test_requantizer_lane_is_its_model(seed):
    lane = RequantizerLane(GEOMETRY)
    pw = GEOMETRY.product_width
    cases = _cases(np.random.default_rng(seed), 60)
    got = []

    async def testbench(ctx):
        # per command: flags held; here one "command" per case, the pipeline drained between cases so that the
        # flags (held for a whole command in the engine) never change under a value in flight
        for case in cases:
            ctx.set(lane.raw, case["raw"])
            ctx.set(lane.relu, case["relu"])
            ctx.set(lane.row_scaled, case["row_scaled"])
            ctx.set(lane.saturate, 1 << case["width_index"])
            for name in ("word", "bias", "multiplier", "shift", "row_multiplier"):
                ctx.set(getattr(lane, name), case[name])
            ctx.set(lane.half, _half(case["shift"], pw))
            await ctx.tick()
            ctx.set(lane.row_shift, min(case["row_shift"], pw))            # a cycle after the word
            ctx.set(lane.row_half, _half(case["row_shift"], pw))
            await ctx.tick().repeat(RequantizerLane.LATENCY - 1)
            got.append(ctx.get(lane.value))

    simulate(lane, testbench)
    expected = [_expected(case) for case in cases]
    assert np.array_equal(got, expected), [(c, g, e) for c, g, e in zip(cases, got, expected) if g != e][:3]


def test_multiplier_is_its_model():
    from amaranth import signed
    unit = Multiplier(signed(18), signed(17))
    pairs = [(-(1 << 17), -(1 << 16)), ((1 << 17) - 1, (1 << 16) - 1), (-(1 << 17), (1 << 16) - 1), (0, 5), (-3, 7)]
    got = []

    async def testbench(ctx):
        for a, b in pairs:
            ctx.set(unit.a, a)
            ctx.set(unit.b, b)
            await ctx.tick().repeat(Multiplier.LATENCY)
            got.append(ctx.get(unit.p))

    simulate(unit, testbench)
    assert got == [int(Multiplier.model(a, b)) for a, b in pairs]
    assert got == [a * b for a, b in pairs]


def test_requantizer_model_is_golden_requantize():
    # the lane's model is golden.ops.requantize of word + bias (RAW: the saturated sum)
    assert RequantizerLane.model(100, 28, 1 << 14, 15, 8) == ops.requantize(np.int64(128), 1 << 14, 15, 8)
    assert RequantizerLane.model(1 << 30, 1 << 30, 1, 0, 32, raw=True) == (1 << 31) - 1
