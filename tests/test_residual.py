"""The residual addition against the golden model's: plain saturating adds and the combine's rounding."""

import numpy as np
import pytest

from golden import ops
from hw.flow.export import lint, to_verilog
from hw.compute.gemm import COMBINE_WIDTH
from hw.vector.residual import ResidualAdd
from hw.sim import simulate
from hw.sim.vector import stream_through


@pytest.mark.parametrize("lanes, stalls", [(4, {}), (3, {"valid_probability": 0.5, "ready_probability": 0.4})])
def test_adds_and_combine_rounding(lanes, stalls):
    rng = np.random.default_rng(lanes)
    unit = ResidualAdd(lanes)
    beats = 120
    residual = rng.integers(-(1 << 15), 1 << 15, (beats, lanes))
    residual[:4] = [[32767], [-32768], [32767], [-32768]]
    plain = rng.integers(-(1 << 15), 1 << 15, (beats, lanes))
    plain[:2] = [[32767], [-32768]]                                     # saturating both ways
    accumulator = rng.integers(-(1 << (COMBINE_WIDTH - 1)), 1 << (COMBINE_WIDTH - 1), (beats, lanes))
    accumulator[4:8] = rng.integers(-(1 << 16), 1 << 16, (4, lanes)) * 4 + 2          # ties, both ways to even
    combine = rng.random(beats) < 0.5
    addend = np.where(combine[:, None], accumulator, plain)
    payloads = [{"residual": [int(v) for v in r], "addend": [int(v) for v in a], "combine": int(c)}
                for r, a, c in zip(residual, addend, combine)]
    got = {}

    async def testbench(ctx):
        got["run"] = await stream_through(ctx, unit.input, payloads,
                                          {"output": (unit.output, lambda p: [int(v) for v in p])},
                                          expected={"output": beats}, rng=rng, **stalls)

    simulate(unit, testbench)
    rounded = ops.saturate(ops.round_shift(accumulator, ops.COMBINE_FRACTION_BITS), 16)
    expected = ops.saturate(residual + np.where(combine[:, None], rounded, plain), 16)
    assert np.array_equal(np.array(got["run"].received["output"]), expected)
    for c in (False, True):
        assert np.array_equal(unit.model(residual[combine == c], addend[combine == c], c), expected[combine == c])


def test_residual_verilog_passes_lint():
    lint(to_verilog(ResidualAdd(16), "residual"), "residual")
