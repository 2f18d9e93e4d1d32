"""The softmax unit against `golden.ops.softmax_rows` + `row_multipliers`: random rows, edges, stalls."""

import numpy as np
import pytest

from golden.config import accelerator_preset, model_preset
from hw.flow.export import lint, to_verilog
from hw.sim import simulate
from hw.sim.vector import softmax_rows
from hw.vector.softmax import Softmax


def _edge_rows(rng, length):
    rows = [np.full(length, 7), np.full(length, -(1 << 31)), np.full(length, (1 << 31) - 1),
            rng.integers(-(1 << 20), 1 << 20, length), rng.integers(-3, 3, length)]
    rows[3][length // 2] = (1 << 31) - 1          # one huge value: every other P is 0
    rows.append(np.where(np.arange(length) % 2, (1 << 31) - 1, -(1 << 31)))
    return np.stack(rows).astype(np.int64)


def _check(unit, scores, params, rng, **stalls):
    got = {}

    async def testbench(ctx):
        got["result"] = await softmax_rows(ctx, unit, scores, *params, rng=rng, **stalls)

    simulate(unit, testbench)
    p, multipliers, shifts, cycles = got["result"]
    expected = Softmax.model(scores, *params)
    assert np.array_equal(p, expected[0]), f"rows {np.flatnonzero((p != expected[0]).any(1))}"
    assert np.array_equal(multipliers, expected[1]) and np.array_equal(shifts, expected[2])
    return cycles


def _params(rng):
    return (int(rng.integers(1 << 14, 1 << 15)), int(rng.integers(10, 30)), int(rng.integers(1 << 14, 1 << 15)),
            int(rng.integers(0, 30)))


@pytest.mark.parametrize("length, lanes", [(129, 16), (20, 8), (5, 4), (3, 8), (33, 1)])
def test_random_and_edge_rows_with_stalls(length, lanes):
    rng = np.random.default_rng(length * lanes)
    unit = Softmax(length, lanes)
    scores = np.concatenate([_edge_rows(rng, length), rng.integers(-(1 << 20), 1 << 20, (6, length))])
    _check(unit, scores, _params(rng), rng)
    _check(unit, scores[::-1].copy(), _params(rng), rng, valid_probability=0.6, ready_probability=0.4)


def test_every_exponent_in_the_table_and_past_it():
    """u = d exactly (multiplier 2^14, shift 14): rows of 0 and −1 … −640 reach every entry of the ROM of P
    (u < 512) and the zeros after it."""
    rng = np.random.default_rng(11)
    length, rows = 129, 5
    u = np.arange(1, rows * (length - 1) + 1).reshape(rows, length - 1)
    scores = np.concatenate([np.zeros((rows, 1), np.int64), -u], axis=1)
    _check(Softmax(length, 16), scores, (1 << 14, 14, int(rng.integers(1 << 14, 1 << 15)), 20), rng)


def test_longest_rows_of_every_preset_full_rate():
    """T = 1,201 keys (m3vit-small-nyud) at 32 lanes: 38 beats a row, the row scale hidden behind them."""
    rng = np.random.default_rng(5)
    length = max(model_preset(name).num_tokens for name in ("m3vit-small-nyud", "m3vit-small-pascal"))
    unit = Softmax(length, 32)
    scores = rng.integers(-(1 << 16), 1 << 16, (4, length))
    cycles = _check(unit, scores, (20000, 18, 30000, 12), rng)
    assert cycles <= (len(scores) + 1) * unit.beats + 40      # the first row comes in before any goes out


def test_softmax_verilog_passes_lint():
    unit = Softmax.for_model(model_preset("m3vit-tiny-cityscapes"), accelerator_preset("16x16"))
    lint(to_verilog(unit, "softmax"), "softmax")
