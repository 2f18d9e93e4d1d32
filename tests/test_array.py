"""The systolic array against its model: random tiles back to back, short and long tiles, bubbles, extremes."""

import numpy as np
import pytest

from hw.compute.array import SystolicArray
from hw.flow.export import to_verilog
from hw.sim import simulate
from hw.sim.array import plan_tiles


async def _drive(ctx, array: SystolicArray, plan, outputs, cycles, stop=None):
    """Drive `plan` (until cycle `stop`, else to its end and the pipeline's), collecting output rows and cycles."""
    for cycle in range(plan.cycles + array.latency + 1 if stop is None else stop):
        load = plan.loads[cycle] if cycle < plan.cycles else None
        ctx.set(array.load.valid, load is not None)
        if load is not None:
            row, bank, weights = load
            ctx.set(array.load.payload, {"row": row, "bank": bank,
                                         "data": [[int(v) for v in lane] for lane in weights]})
        item = plan.streams[cycle] if cycle < plan.cycles else None
        ctx.set(array.stream_in.valid, item is not None)
        if item is not None:
            bank, x = item
            ctx.set(array.stream_in.payload, {"bank": bank, "data": [int(v) for v in x]})
        if ctx.get(array.out.valid):
            outputs.append(np.array(ctx.get(array.out.payload), dtype=np.int64))
            cycles.append(cycle)
        await ctx.tick()


def _simulate(array: SystolicArray, plan) -> tuple[list[np.ndarray], list[int]]:
    """Run `plan`; return every output row and the cycle it left."""
    outputs, cycles = [], []

    async def testbench(ctx):
        await _drive(ctx, array, plan, outputs, cycles)

    simulate(array, testbench)
    return outputs, cycles


def _random_tiles(rng, rows, cols, sizes, extreme=None):
    tiles = []
    for m in sizes:
        w = rng.integers(-128, 128, (rows, cols))
        x = rng.integers(-128, 128, (m, rows))
        if extreme is not None:
            w[:] = extreme
            x[:] = extreme
        tiles.append((w, x))
    return tiles


@pytest.mark.parametrize("rows, cols, load_rows", [(2, 2, 1), (3, 5, 1), (4, 4, 1), (5, 3, 1), (1, 4, 1),
                                                   (4, 4, 2), (5, 3, 2), (4, 3, 4), (6, 2, 4)])
def test_tiles_back_to_back(rows, cols, load_rows):
    rng = np.random.default_rng(rows * 10 + cols)
    sizes = [1, rows, 2 * rows + 1, 1, 1, 3, rows + 2, 2]
    tiles = _random_tiles(rng, rows, cols, sizes)
    tiles += _random_tiles(rng, rows, cols, [3], extreme=-128)      # the largest sum
    tiles += _random_tiles(rng, rows, cols, [2], extreme=127)
    array = SystolicArray(rows, cols, load_rows=load_rows)
    plan = plan_tiles(tiles, rows, load_rows=load_rows)
    outputs, cycles = _simulate(array, plan)
    expected = np.concatenate([SystolicArray.model(x, w) for w, x in tiles])
    assert np.array_equal(np.array(outputs), expected)
    # Results leave `latency` cycles after their rows entered, in order.
    entered = [i for i, item in enumerate(plan.streams) if item is not None]
    assert cycles == [i + array.latency for i in entered]
    # A tile costs max(M, ⌈R / load_rows⌉) cycles once the pipeline runs.
    starts = plan.first_row
    for t in range(2, len(tiles)):
        assert starts[t] - starts[t - 1] == max(len(tiles[t - 1][1]), -(-rows // load_rows))


def test_bubbles_between_and_within_tiles():
    rng = np.random.default_rng(7)
    rows, cols = 3, 4
    tiles = _random_tiles(rng, rows, cols, [4, 1, 5, 2])
    plan = plan_tiles(tiles, rows, gaps=[0, 3, 1, 5], spacing=[1, 0, 2, 3])
    outputs, _ = _simulate(SystolicArray(rows, cols), plan)
    expected = np.concatenate([SystolicArray.model(x, w) for w, x in tiles])
    assert np.array_equal(np.array(outputs), expected)


def test_a_reset_mid_stream_drops_the_rows_in_flight():
    """Reset while tiles load and stream (the data registers are not reset, the valid bits are): no row leaves
    until the next plan's first, and that plan's results are exact."""
    from amaranth import ResetInserter, Signal
    rng = np.random.default_rng(9)
    rows, cols = 4, 3
    array, reset = SystolicArray(rows, cols), Signal()
    first = plan_tiles(_random_tiles(rng, rows, cols, [6, 5, 7]), rows)
    tiles = _random_tiles(rng, rows, cols, [5, 2, 4])
    second = plan_tiles(tiles, rows)
    outputs, cycles = [], []

    async def testbench(ctx):
        await _drive(ctx, array, first, [], [], stop=first.cycles - 3)      # rows of the last tile in flight
        ctx.set(reset, 1)
        await ctx.tick()
        ctx.set(reset, 0)
        await _drive(ctx, array, second, outputs, cycles)

    simulate(ResetInserter(reset)(array), testbench)
    assert np.array_equal(np.array(outputs), np.concatenate([SystolicArray.model(x, w) for w, x in tiles]))
    assert cycles[0] == next(i for i, item in enumerate(second.streams) if item is not None) + array.latency


def test_narrow_accumulator_is_rejected():
    with pytest.raises(ValueError, match="accumulator_width = 16: 4 products of 8-bit operands need at least 18"):
        SystolicArray.Signature(4, 4, accumulator_width=16)
    with pytest.raises(ValueError, match="rows = 0"):
        SystolicArray.Signature(0, 4)
    with pytest.raises(ValueError, match="load_rows = 5: at most rows"):
        SystolicArray.Signature(4, 4, load_rows=5)


def test_verilog_elaborates():
    text = to_verilog(SystolicArray(3, 5), "systolic_array")
    header = text[text.index("module systolic_array("):].split(")", 1)[0]
    for port in ("stream_in__payload", "load__payload", "out__payload", "out__valid"):
        assert port in header
