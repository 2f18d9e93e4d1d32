"""The GEMM engine's accumulator: partial sums of two N tiles in flight, and the read port the drain empties."""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import ops

from ...common.arith import index_bits
from ...common.pipeline import data_register, delay_line, kept_copies
from .geometry import GemmGeometry

__all__ = ["Accumulator"]


class Accumulator(wiring.Component):
    """Adds the array's results into a memory of two banks of `max_m` rows (bank = N tile mod 2).

    `tag` is the tag of the row entering the array this cycle (`OperandStreamer.tag`); `results` are the array's
    outputs `array_latency` cycles later. A row of the first K tile is written as it comes, a later K tile's is
    added to what the row holds; the word is written 3 cycles after the results arrive. `tiles_done` counts the
    N tiles whose last K tile's last row (m = M − 1) has been written, from 0 at `start` (`command` read then).

    Drain side: `drain_tile`, `drain_row` address a word (combinationally); `drained_word` holds it the next
    cycle. The drain must not read a bank while rows are written into it (the sequencer's bank credits hold
    this); a row is revisited no sooner than two cycles later (the sequencer keeps M = 1 rows apart).
    """

    @staticmethod
    def model(x, w):
        """The words a command leaves: X [M, K] (int8, or int16 in wide-operand presets) times W [K, N] (int8),
        summed over every K tile exactly; [M, N] int64. The bias is added in the requantizer."""
        return ops.exact_matmul(np.asarray(x, np.int16), np.asarray(w, np.int8))

    def __init__(self, geometry: GemmGeometry, array_latency: int):
        self.geometry = g = geometry
        self.array_latency = array_latency
        super().__init__({
            "start": In(1),
            "command": In(g.command),
            "tag": In(g.tag),
            "results": In(g.accumulator_word),
            "drain_tile": In(index_bits(g.n_tiles_max + 1)),
            "drain_row": In(index_bits(g.max_m + 1)),
            "drained_word": Out(g.accumulator_word),
            "tiles_done": Out(range(g.n_tiles_max + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        m_last = Signal.like(self.command.m)
        before, arriving = delay_line(m, self.tag, self.array_latency, "tag")[-2:]

        # The bank is the address's top bit (no adder in front of the address ports; block RAM depths come in
        # powers of two anyway).
        row_bits = index_bits(g.max_m)

        def address(tile, row):
            return Cat(row[:row_bits], tile[0])
        # Each read port is an asynchronous read and a register (`accumulated`, `drained_word`) that synthesis
        # folds into the block RAM; `no_rw_check` leaves a read of the row being written undefined rather than
        # emulating the old word in logic (a multiplexer on every bit, a register on every written bit): the
        # drain never reads the bank being written, and the accumulation chooses the written word itself.
        m.submodules.memory = memory = Memory(shape=g.accumulator_word, depth=2 << row_bits, init=[],
                                              attrs={"no_rw_check": 1})
        write = memory.write_port()
        accumulate_read = memory.read_port(domain="comb")
        drain_read = memory.read_port(domain="comb")
        # the read registers are not reset (a reset would become the block RAM's output reset, a chip-wide net)
        accumulated = Signal(g.accumulator_word, reset_less=True)
        drained = data_register(m, self.drained_word, "drained")
        accumulate_address = Signal.like(accumulate_read.addr)
        m.d.comb += [accumulate_address.eq(address(before.j, before.m)), accumulate_read.addr.eq(accumulate_address),
                     drain_read.addr.eq(address(self.drain_tile, self.drain_row))]
        m.d.sync += [accumulated.eq(accumulate_read.data), drained.eq(drain_read.data)]
        # The array's results and the row read back are registered, then added and written a cycle later: the
        # next visit of a row is at least two cycles later, so its read is never issued before the write, at
        # the latest in the same cycle. Then the word being written is kept and chosen instead of the block
        # RAM's, after its output register. The words' registers are not reset (`settled.valid` says when one is
        # written).
        settled = Signal(g.tag)
        results = Signal(g.accumulator_word, reset_less=True)
        previous = Signal(g.accumulator_word, reset_less=True)
        collided = Signal()
        written = [Signal(g.accumulator_word, name=f"written{stage}", reset_less=True) for stage in range(2)]
        m.d.sync += [settled.eq(arriving), results.eq(self.results), previous.eq(accumulated),
                     collided.eq(write.en & (write.addr == accumulate_address)), written[0].eq(write.data),
                     written[1].eq(written[0])]
        m.d.comb += [write.addr.eq(address(settled.j, settled.m)), write.en.eq(settled.valid)]
        # `settled.first` and `collided` a cycle later, a copy per column: each drives one column's word
        firsts = kept_copies(m, arriving.first, g.cols, "first")
        chosen = kept_copies(m, collided, g.cols, "collided")
        for c in range(g.cols):
            before_sum = Mux(chosen[c], written[1][c], previous[c])
            m.d.comb += write.data[c].eq(Mux(firsts[c], 0, before_sum) + results[c])
        with m.If(settled.valid & settled.last & (settled.m == m_last)):
            m.d.sync += self.tiles_done.eq(self.tiles_done + 1)
        with m.If(self.start):
            m.d.sync += [m_last.eq(self.command.m - 1), self.tiles_done.eq(0)]
        return m
