"""The combine drain (COMBINE's reader of the combine accumulator): after a reset it clears every word; a command
drains tokens 0 … rows − 1 N tile by N tile, one word a cycle, each word cleared as it is read."""

import numpy as np
import pytest
from amaranth import signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory

from golden import ops
from hw.control.datapath import CombineDrain
from hw.flow.export import lint, to_verilog
from hw.sim import simulate

WIDTH, COLS, TOKENS, TILES, TILES_MAX = ops.COMBINE_BITS, 2, 5, 3, 4
WORD = data.ArrayLayout(signed(WIDTH), COLS)
ROW = data.StructLayout({"row": unsigned(3), "tile": unsigned(2), "data": WORD})


class _Harness(CombineDrain):
    """The drain with its accumulator memory, which starts with `init`."""

    def __init__(self, init):
        super().__init__(ROW, WORD, tokens=TOKENS, tiles=TILES, tiles_max=TILES_MAX)
        self.storage = Memory(shape=WORD, depth=self.depth, init=init)

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.submodules.storage = self.storage
        write, read = self.storage.write_port(), self.storage.read_port()
        m.d.comb += [write.addr.eq(self.write.addr), write.en.eq(self.write.en), write.data.eq(self.write.data),
                     read.addr.eq(self.read.addr), read.en.eq(self.read.en), self.read.data.eq(read.data)]
        return m


@pytest.mark.parametrize("rows", [TOKENS, 2, 0])
def test_drains_token_by_token_and_clears(rows):
    rng = np.random.default_rng(rows)
    extremes = [-(1 << (WIDTH - 1)), (1 << (WIDTH - 1)) - 1]
    stale = [[int(v) for v in rng.choice(extremes + list(rng.integers(-1000, 1000, 4)), COLS)]
             for _ in range(TOKENS * TILES_MAX)]
    drain = _Harness(stale)
    sums = rng.integers(-(1 << (WIDTH - 1)), 1 << (WIDTH - 1), (TOKENS, TILES_MAX, COLS))
    sums[0, 0] = extremes
    seen, cycles = [], {}

    async def testbench(ctx):
        clearing = 0
        while ctx.get(drain.busy):                  # after reset: every word cleared first
            clearing += 1
            await ctx.tick()
        cycles["clear"] = clearing
        assert all(ctx.get(drain.storage.data[i]) == [0] * COLS for i in range(drain.depth))
        for t in range(TOKENS):                     # the engine's sums, token t's tile j at t·TILES_MAX + j
            for j in range(TILES_MAX):
                ctx.set(drain.storage.data[t * TILES_MAX + j], [int(v) for v in sums[t, j]])
        ctx.set(drain.command.payload.rows, rows)
        ctx.set(drain.command.valid, 1)
        assert ctx.get(drain.command.ready)
        await ctx.tick()
        ctx.set(drain.command.valid, 0)
        for _ in range(TILES * TOKENS + 4):
            if ctx.get(drain.rows.valid):
                beat = ctx.get(drain.rows.payload)
                seen.append((beat.row, beat.tile, list(beat.data)))
            await ctx.tick()
        assert not ctx.get(drain.busy)
        for t in range(TOKENS):
            for j in range(TILES_MAX):
                drained = t < rows and j < TILES
                expected = [0] * COLS if drained else [int(v) for v in sums[t, j]]
                assert ctx.get(drain.storage.data[t * TILES_MAX + j]) == expected, (t, j)

    simulate(drain, testbench)
    assert cycles["clear"] == TOKENS * TILES_MAX
    assert seen == [(t, j, [int(v) for v in sums[t, j]]) for j in range(TILES) for t in range(rows)]


def test_combine_drain_verilog_passes_lint():
    drain = CombineDrain(ROW, WORD, tokens=TOKENS, tiles=TILES, tiles_max=TILES_MAX)
    lint(to_verilog(drain, "combine_drain"), "combine_drain")
