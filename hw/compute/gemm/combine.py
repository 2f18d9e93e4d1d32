"""The GEMM engine's combine scatter (COMBINE, expert fc2): y·g, rounded to y's step, added into each token's
combine word."""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden import ops

from ...common.arith import index_bits, round_shift, times_constant
from ...common.pipeline import delay_line
from ..multiplier import Multiplier
from .geometry import DRAIN_STAGES, GemmGeometry, GemmMode

__all__ = ["CombineScatter"]


class CombineScatter(wiring.Component):
    """For each row m of an expert's fc2 output (its values already requantized to 18 bits), adds
    round_shift(y·g, 15) (`golden.ops.gate_weighted`) into the combine memory at token t = `index[list_base + m]`,
    N tile j: word t·combine_tiles + `tile_base` + j, g = `gate[list_base + m]` (Q1.15). `list_base` and
    `tile_base` are the command's, held while it runs (a matrix in several slab buffers runs as several commands,
    each on its own N tiles of the combine word).

    The token and the gate are read when the row issues into the drain (`issue`, row m on `row`; `scatter_read`
    and `gate_read`, data a cycle later) and travel with it; the row arrives on `result` (`valid` for one
    cycle) `DRAIN_STAGES` cycles later. Then the combine word is read (`combine_read`: data a cycle after its
    address, and it must return a word written two or more cycles earlier) while y and g enter the multipliers'
    input registers; y·g rounded and the word land in registers the cycle after, and are added and written
    (`combine_write`) the next, 3 cycles after the row arrived. A token list holds each token at most once,
    so a word is written once per command and no read meets a pending write. `active` says a row is between
    the read and the write.
    """

    @staticmethod
    def model(words, y, gates, tokens):
        """The combine words [T, N] after one command: y [M, N] (18-bit rows) times the list's Q1.15 `gates` [M],
        rounded to y's step, added at the list's `tokens` [M] (each at most once); int64."""
        words = np.array(words, dtype=np.int64)
        words[np.asarray(tokens)] += ops.gate_weighted(y, gates)
        return words

    def __init__(self, geometry: GemmGeometry):
        self.geometry = g = geometry
        super().__init__({
            "list_base": In(g.command["list_base"].shape),
            "tile_base": In(g.command["tile_base"].shape),
            "issue": In(1),
            "row": In(index_bits(g.max_m + 1)),
            "result": In(g.drained_row),
            "scatter_read": In(g.read_port("index")),
            "gate_read": In(g.read_port("gate")),
            "combine_read": In(g.read_port("combine")),
            "combine_write": In(g.combine_write),
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        list_base = self.list_base
        for port in (self.scatter_read, self.gate_read):
            m.d.comb += [port.addr.eq(list_base + self.row), port.en.eq(self.issue)]
        # The token is registered off the read, then its word offset (token · combine_tiles + tile_base) worked out
        # in two stages: the constant product as shifts and adds (a `*` would be a DSP block without its
        # registers: the 8×8 engine's critical path), then + tile_base.
        token = Signal.like(self.scatter_read.data)
        scaled = Signal.like(self.combine_read.addr, name="token_scaled")
        offset = Signal.like(self.combine_read.addr, name="token_offset")
        m.d.sync += [token.eq(self.scatter_read.data), scaled.eq(times_constant(token, g.combine_tiles)),
                     offset.eq(scaled + self.tile_base)]
        offset = delay_line(m, offset, DRAIN_STAGES - 4, "token_offset")[-1]
        gate = delay_line(m, self.gate_read.data, DRAIN_STAGES - 1, "gate")[-1]
        combine_address = Signal.like(self.combine_read.addr)
        m.d.sync += combine_address.eq(offset + self.result.tile)
        m.d.comb += [self.combine_read.addr.eq(combine_address), self.combine_read.en.eq(1)]
        reading, weighted, writing = Signal(), Signal(), Signal()
        weighted_address, writing_address = Signal.like(combine_address), Signal.like(combine_address)
        m.d.sync += [reading.eq(self.result.valid), weighted.eq(reading), writing.eq(weighted),
                     weighted_address.eq(combine_address), writing_address.eq(weighted_address)]
        for c in range(g.cols):
            # Saturated to 18 bits in COMBINE mode: one 18 × 17 DSP multiplier, no partial-product adder.
            multiplier = m.submodules[f"gate_weight{c}"] = Multiplier(signed(GemmMode.COMBINE.bits), gate.shape())
            stored = Signal.like(self.combine_read.data[c], name=f"stored{c}")
            product = Signal.like(self.combine_read.data[c], name=f"weighted{c}")
            m.d.comb += [multiplier.a.eq(self.result.data[c][:GemmMode.COMBINE.bits]), multiplier.b.eq(gate),
                         self.combine_write.data[c].eq(stored + product)]
            m.d.sync += [stored.eq(self.combine_read.data[c]), product.eq(round_shift(multiplier.p, ops.GATE_BITS))]
        m.d.comb += [self.combine_write.addr.eq(writing_address), self.combine_write.en.eq(writing),
                     self.active.eq(Cat(reading, weighted, writing).any())]
        return m
