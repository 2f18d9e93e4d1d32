"""The residual addition against the golden model's: saturating adds of residual-format values and combine terms."""

import numpy as np
import pytest

from golden import ops
from hw.flow.export import lint, to_verilog
from hw.vector.residual import ResidualAdd
from hw.sim import simulate
from hw.sim.vector import stream_through


@pytest.mark.parametrize("lanes, stalls", [(4, {}), (3, {"valid_probability": 0.5, "ready_probability": 0.4})])
def test_adds_residual_format_values_and_combine_terms(lanes, stalls):
    """Addends in the residual format and combine terms (up to ±2^15, which saturates on its own) added with
    saturation, under random stalls and back-pressure: bit for bit the model and the golden combine's step."""
    rng = np.random.default_rng(lanes)
    unit = ResidualAdd(lanes)
    beats = 120
    residual = rng.integers(-(1 << 15), 1 << 15, (beats, lanes))
    residual[:6] = [[32767], [-32768], [32767], [-32768], [-1], [0]]
    addend = rng.integers(-(1 << 15), 1 << 15, (beats, lanes))
    addend[:6] = [[32767], [-32768], [1 << 15], [-(1 << 15)], [1 << 15], [-(1 << 15)]]   # both limits, a term's
    payloads = [{"residual": [int(v) for v in r], "addend": [int(v) for v in a]} for r, a in zip(residual, addend)]
    got = {}

    async def testbench(ctx):
        got["run"] = await stream_through(ctx, unit.input, payloads,
                                          {"output": (unit.output, lambda p: [int(v) for v in p])},
                                          expected={"output": beats}, rng=rng, **stalls)

    simulate(unit, testbench)
    expected = np.clip(residual + np.clip(addend, -32768, 32767), -32768, 32767)
    assert expected[4].tolist() == [32766] * lanes and expected[5].tolist() == [-32768] * lanes
    assert np.array_equal(np.array(got["run"].received["output"]), expected)
    assert np.array_equal(unit.model(residual, addend), expected)
    # A combine term is the golden combine's step for a token with one expert.
    y, g = addend[6:10] * 4, np.full(4, 1 << 15)
    assert np.array_equal(unit.model(residual[6:10], ops.round_shift(y * (1 << 15), 17)),
                          ops.combine(residual[6:10], y[:, None], g[:, None], np.zeros((4, 1), int), 16))


def test_residual_verilog_passes_lint():
    lint(to_verilog(ResidualAdd(16), "residual"), "residual")
