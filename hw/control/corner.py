"""`CornerTurn`: the K columns of the qkv product, transposed on their way into SCRATCH, so that attention's Kᵀ
lands in the stationary operand's layout (docs/architecture.md, section 3.3, mode 6).

Rows of one GEMM arrive N tile by N tile, rows in order, C int8 values each (`result`, the low bytes of the
engine's lanes). C consecutive rows of an N tile (a block of C keys; the last block of a tile may be shorter)
fill one of two C × C buffers; a full block leaves as C words, one a cycle, word q holding dimension q of the
tile for the block's keys (keys past the GEMM's `rows` zero): N tile i (dimensions i·C …) of key block j goes to
words `base + (j·stride + i)·C + q`, the layout of a W of K = stride·C dimensions by N = keys, a row a word.
A beat is taken while its buffer is free (`result.ready`); `active` while a block waits or leaves. A block's
words leave on `write` (no back-pressure) from the buffer's registers, its rows shifted a lane down each cycle.
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, unsigned
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

    @staticmethod
    def model(values: np.ndarray, base: int, stride: int) -> dict[int, np.ndarray]:
        """The words a job writes, {address: C int8 bytes, byte r key r of the block}, for `values` [N tiles, rows,
        C] int8 (the rows' low bytes, as they arrive)."""
        tiles, rows, c = values.shape
        words = {}
        for block in range(-(-rows // c)):
            for tile in range(tiles):
                keys = np.zeros((c, c), np.int8)                    # [key in the block, dimension in the tile]
                part = values[tile, block * c:(block + 1) * c]
                keys[:len(part)] = part
                for q in range(c):
                    words[base + (block * stride + tile) * c + q] = keys[:, q]
        return words

    def elaborate(self, platform):
        m = Module()
        c = self.cols
        shift = (c - 1).bit_length()
        job = Signal.like(self.job)
        with m.If(self.start):
            m.d.sync += job.eq(self.job)
        buffers = [[[Signal(8, name=f"buffer{b}_row{r}_lane{q}", reset_less=True) for q in range(c)] for r in range(c)]
                   for b in range(2)]
        base = [Signal.like(job.base, name=f"base{b}") for b in range(2)]
        # the rows a block filled, a bit a row (rows past them leave as zeros)
        filled = [Signal(c, name=f"filled{b}") for b in range(2)]

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
        # Blocks out, in the order they filled: word q is lane q of every row (rows past the block's zero). The
        # draining buffer shifts its rows a lane down each cycle, so the word is always lane 0: no multiplexer
        # indexed by q (whose net reached every byte of both buffers) on the way to SCRATCH.
        q = Signal(range(c))
        busy = full.bit_select(draining, 1)
        for b in range(2):
            shifting = busy & (draining == b)
            for r in range(c):
                with m.If(taken & (fill == b) & (slot == r)):
                    m.d.sync += [buffers[b][r][lane].eq(beat.data[lane][:8]) for lane in range(c)]
                with m.Elif(shifting):
                    m.d.sync += [buffers[b][r][lane].eq(buffers[b][r][lane + 1]) for lane in range(c - 1)]
            with m.If(taken & (fill == b) & last_of_block):
                m.d.sync += [base[b].eq(block_base),
                             filled[b].eq(Cat(Const(1), *(slot >= r for r in range(1, c))))]
        word = Cat(*(Mux(draining, Mux(filled[1][r], buffers[1][r][0], 0), Mux(filled[0][r], buffers[0][r][0], 0))
                     for r in range(c)))
        m.d.comb += done.eq(busy & (q == c - 1))
        m.d.comb += [self.write.en.eq(busy), self.write.data.eq(word),
                     self.write.addr.eq(Mux(draining, base[1], base[0]) + q)]
        with m.If(busy):
            m.d.sync += q.eq(Mux(done, 0, q + 1))
        with m.If(self.start):
            m.d.sync += [fill.eq(0), draining.eq(0), q.eq(0)]
        m.d.comb += self.active.eq(full.any())
        return m
