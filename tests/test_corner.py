"""The K corner-turn against its NumPy model: random jobs back to back, extreme values, short last blocks, stalls."""

import numpy as np
import pytest
from amaranth import signed, unsigned
from amaranth.lib import data

from hw.control.corner import CornerTurn
from hw.flow.export import lint, to_verilog
from hw.sim import simulate


def _unit(cols: int) -> CornerTurn:
    result = data.StructLayout({"row": unsigned(8), "tile": unsigned(4), "data": data.ArrayLayout(signed(32), cols)})
    return CornerTurn(cols, result, address_width=12, rows_width=9, stride_width=6)


def _run(unit: CornerTurn, jobs, rng, valid_probability: float) -> list[dict]:
    """Each job (values [tiles, rows, C] int8, base, stride) after the one before has left: its writes
    {address: the word's C bytes}, and that `active` falls once they have all left."""
    cols, got = unit.cols, []

    async def testbench(ctx):
        for values, base, stride in jobs:
            tiles, rows, _ = values.shape
            ctx.set(unit.job, {"base": base, "stride": stride, "rows": rows})
            ctx.set(unit.start, 1)
            await ctx.tick()
            ctx.set(unit.start, 0)
            beats = [(tile, row) for tile in range(tiles) for row in range(rows)]
            writes, idle = {}, 0
            while beats or idle < 2 * cols + 2:
                valid = bool(beats) and rng.random() < valid_probability
                if valid:
                    tile, row = beats[0]
                    lanes = [int(v) | (int(rng.integers(0, 1 << 24)) << 8) for v in values[tile, row]]  # high bits
                    ctx.set(unit.result.payload, {"row": row, "tile": tile, "data": lanes})             # ignored
                ctx.set(unit.result.valid, valid)
                if ctx.get(unit.write.en):
                    address = ctx.get(unit.write.addr)
                    assert address not in writes, f"word {address} written twice"
                    word = ctx.get(unit.write.data)
                    writes[address] = np.array([(word >> 8 * r) & 0xFF for r in range(cols)], np.uint8).view(np.int8)
                idle = 0 if beats or ctx.get(unit.active) else idle + 1
                if valid and ctx.get(unit.result.ready):
                    beats.pop(0)
                await ctx.tick()
            ctx.set(unit.result.valid, 0)
            assert not ctx.get(unit.active)
            got.append(writes)

    simulate(unit, testbench)
    return got


def _check(cols: int, jobs, rng, valid_probability: float = 1.0):
    unit = _unit(cols)
    for (values, base, stride), writes in zip(jobs, _run(unit, jobs, rng, valid_probability)):
        expected = CornerTurn.model(values, base, stride)
        assert writes.keys() == expected.keys()
        for address, word in expected.items():
            assert np.array_equal(writes[address], word), f"word {address}: {writes[address]} against {word}"


@pytest.mark.parametrize("cols, valid_probability", [(4, 1.0), (8, 0.5), (2, 0.3), (1, 0.7)])
def test_random_jobs_back_to_back_with_stalls(cols, valid_probability):
    rng = np.random.default_rng(cols)
    jobs = []
    for rows in (3 * cols, 2 * cols + 1, 1, cols - 1 or 1, cols + 1):     # a full block first, then short ones
        tiles = int(rng.integers(1, 4))
        values = rng.integers(-128, 128, (tiles, rows, cols)).astype(np.int8)
        jobs.append((values, int(rng.integers(0, 64)), tiles + int(rng.integers(0, 3))))
    _check(cols, jobs, rng, valid_probability)


def test_extreme_values_and_a_short_block_after_a_full_one():
    """−128 and 127 in every lane, then a job whose last block has one key: the rows the short block did not
    fill leave as zeros, not as the full block's bytes."""
    rng = np.random.default_rng(5)
    cols = 8
    full = np.where(rng.random((2, cols, cols)) < 0.5, -128, 127).astype(np.int8)
    short = np.full((2, cols + 1, cols), 127, np.int8)
    _check(cols, [(full, 0, 2), (short, 100, 2)], rng, 0.8)


def test_corner_turn_verilog_passes_lint():
    lint(to_verilog(_unit(8), "corner"), "corner")
