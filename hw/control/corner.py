"""`CornerTurn`: the K columns of the qkv product, transposed on their way into SCRATCH, so that attention's Kᵀ
lands in the stationary operand's layout (docs/architecture.md, section 3.3, mode 6).

Rows of one GEMM arrive N tile by N tile, rows in order, C int8 values each (`result`, the low bytes of the
engine's lanes). C consecutive rows of an N tile (a block of C keys; the last block of a tile may be shorter)
fill one of two C × C buffers; a full block leaves as C words, one a cycle, word q holding dimension q of the
tile for the block's keys (keys past the GEMM's `rows` zero): N tile i (dimensions i·C …) of key block j goes to
words `base + (j·stride + i)·C + q`, the layout of a W of K = stride·C dimensions by N = keys, a row a word.
A beat is taken while its buffer is free (`result.ready`); `active` while a block waits or leaves.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out

from ..common.arith import narrow_product
from ..common.pipeline import ping_pong

__all__ = ["CornerTurn"]


class CornerTurn(wiring.Component):
    def __init__(self, cols: int, result: data.StructLayout, address_width: int, rows_width: int,
                 stride_width: int):
        if cols < 1 or cols & (cols - 1):
            raise ValueError(f"CornerTurn cols = {cols}: a power of two")
        self.cols = cols
        super().__init__({
            "result": In(stream.Signature(result)),
            "start": In(1),
            "job": In(data.StructLayout({"base": unsigned(address_width), "stride": unsigned(stride_width),
                                         "rows": unsigned(rows_width)})),
            "write": In(WritePort.Signature(addr_width=address_width, shape=unsigned(8 * cols))),
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.cols
        shift = (c - 1).bit_length()
        job = Signal.like(self.job)
        with m.If(self.start):
            m.d.sync += job.eq(self.job)
        buffers = [[[Signal(8, name=f"buffer{b}_row{r}_lane{q}", reset_less=True) for q in range(c)] for r in range(c)]
                   for b in range(2)]
        meta = [Signal(data.StructLayout({"base": unsigned(len(job.base)), "rows": unsigned(shift + 1)}),
                       name=f"meta{b}") for b in range(2)]

        # Rows in: row t of N tile i into slot t mod C of the filling buffer.
        beat = self.result.payload
        slot = beat.row[:shift] if shift else Const(0, 1)
        block = beat.row >> shift
        last_of_block = (slot == c - 1) | (beat.row == job.rows - 1)
        taken, done = Signal(), Signal()
        # a block fills the buffer that is not full; the one that drains is full: never the same
        full, fill, draining = ping_pong(m, taken & last_of_block, done, "blocks")
        m.d.comb += self.result.ready.eq(~full.bit_select(fill, 1))
        m.d.comb += taken.eq(self.result.valid & self.result.ready)
        block_base = Signal.like(job.base)
        m.d.comb += block_base.eq(job.base + ((narrow_product(block, job.stride) + beat.tile) << shift))
        for b in range(2):
            for r in range(c):
                with m.If(taken & (fill == b) & (slot == r)):
                    m.d.sync += [buffers[b][r][q].eq(beat.data[q][:8]) for q in range(c)]
            with m.If(taken & (fill == b) & last_of_block):
                m.d.sync += [meta[b].base.eq(block_base), meta[b].rows.eq(slot + 1)]

        # Blocks out, in the order they filled: word q is lane q of every row (rows past the block's zero).
        q = Signal(range(c))
        rows_valid = Mux(draining, meta[1].rows, meta[0].rows)
        word = Cat(*(Mux(r < rows_valid, Mux(draining, Array(buffers[1][r])[q], Array(buffers[0][r])[q]), 0)
                     for r in range(c)))
        busy = full.bit_select(draining, 1)
        m.d.comb += done.eq(busy & (q == c - 1))
        m.d.comb += [self.write.en.eq(busy), self.write.data.eq(word),
                     self.write.addr.eq(Mux(draining, meta[1].base, meta[0].base) + q)]
        with m.If(busy):
            m.d.sync += q.eq(Mux(done, 0, q + 1))
        with m.If(self.start):
            m.d.sync += [fill.eq(0), draining.eq(0), q.eq(0)]
        m.d.comb += self.active.eq(full.any())
        return m
