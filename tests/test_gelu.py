"""The GELU unit against `golden.ops.gelu`: every int16 value and fraction-bit count, each lane in its own
Q.f, stalls, back-pressure."""

import numpy as np
import pytest

from golden import ops
from golden.config import accelerator_preset
from hw.flow.export import lint, to_verilog
from hw.vector.gelu import Gelu
from hw.sim import simulate
from hw.sim.vector import stream_through


def _run(unit, beats, rng, valid_probability=1.0, ready_probability=1.0):
    """Stream (values [lanes], f [lanes]) beats through; return the output beats in order."""
    got = {}

    async def testbench(ctx):
        payloads = [{"data": [int(v) for v in values], "fraction_bits": [int(f) for f in fs]} for values, fs in beats]
        got["run"] = await stream_through(ctx, unit.input, payloads,
                                          {"output": (unit.output, lambda p: [int(v) for v in p])},
                                          expected={"output": len(beats)}, rng=rng,
                                          valid_probability=valid_probability, ready_probability=ready_probability,
                                          timeout=50 * len(beats) + 100)

    simulate(unit, testbench)
    return np.array(got["run"].received["output"], dtype=np.int64)


def _beats(values, lanes, fs):
    """Beats of `lanes` values, lane l of beat i in Q.f with f = fs[(i + l) % len(fs)]: the lanes' counts differ."""
    values = np.asarray(values).reshape(-1, lanes)
    return [(row, np.array([fs[(i + lane) % len(fs)] for lane in range(lanes)])) for i, row in enumerate(values)]


def test_every_int16_value_at_every_fraction_bits():
    """All 65,536 inputs, spread over f = 5 … 15 lane by lane (each f sees every residue of the table walk)."""
    lanes = 16
    unit = Gelu(lanes)
    rng = np.random.default_rng(0)
    values = np.arange(-(1 << 15), 1 << 15)
    beats = _beats(values, lanes, list(range(5, 16)))
    got = _run(unit, beats, rng)
    expected = np.stack([ops.gelu(row.astype(np.int64), f) for row, f in beats])
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_random_values_with_stalls_and_back_pressure(lanes):
    unit = Gelu(lanes)
    rng = np.random.default_rng(lanes)
    values = rng.integers(-(1 << 15), 1 << 15, 60 * lanes)
    values[:lanes] = -(1 << 15)
    values[lanes:2 * lanes] = (1 << 15) - 1
    fs = rng.integers(5, 16, 61)
    beats = _beats(values, lanes, fs)
    got = _run(unit, beats, rng, valid_probability=0.5, ready_probability=0.4)
    expected = np.stack([ops.gelu(row.astype(np.int64), f) for row, f in beats])
    assert np.array_equal(got, expected)


def test_fraction_bits_outside_the_range_set_error():
    unit = Gelu(2)

    async def testbench(ctx):
        ctx.set(unit.output.ready, 1)
        for fs, error in (((15, 5), 0), ((9, 4), 1), ((9, 9), 1)):   # sticky
            ctx.set(unit.input.payload, {"data": [1, 2], "fraction_bits": list(fs)})
            ctx.set(unit.input.valid, 1)
            await ctx.tick()
            assert ctx.get(unit.error) == error

    simulate(unit, testbench)


def test_gelu_verilog_passes_lint():
    unit = Gelu(accelerator_preset("16x16").vector_lanes)
    lint(to_verilog(unit, "gelu"), "gelu")
