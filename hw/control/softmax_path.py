"""`SoftmaxPath`: `SOFTMAX` on one head's scores: rows of SCORES through the `Softmax` unit, P into ACTIVATION as
the streamed operand of P·V and each row's output scale into ROW_SCALES.

A command {rows, exp_multiplier, exp_shift, out_multiplier, out_shift, source, half, destination} is taken when
the path is idle. SCORES holds a block of up to B query rows a half (B = `score_rows`, the accelerator's token
block): score row `source` + r of half `half` is read tile by tile (SCORES words `half·H + j·B + source + r`, H
the half's words, C int32 each, the keys past T dropped), its P row
(T int8) written K tile by K tile into ACTIVATION words `destination + i·T + r` (R keys a word, keys past T zero)
and its {multiplier, shift} into ROW_SCALES word r, where a `row_scaled` GEMM reads its row r (the shift capped
at 63: the engine's requantizer caps it lower still). `busy` until the last word of the last row is written.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from ..common.arith import address_bits, times_constant
from ..common.gearbox import Gearbox
from .isa import Space
from .memories import OnChip

__all__ = ["SoftmaxPath", "ROW_SCALE"]

ROW_SCALE = data.StructLayout({"multiplier": unsigned(16), "shift": unsigned(6)})


class SoftmaxPath(wiring.Component):
    def __init__(self, spaces: dict[Space, OnChip], softmax, tokens: int, score_rows: int):
        self.softmax, self.tokens, self.score_rows = softmax, tokens, score_rows
        self.scores_space, self.p_space = spaces[Space.SCORES], spaces[Space.ACTIVATION]
        self.scales_space = spaces[Space.ROW_SCALES]
        if softmax.lanes > self.scores_space.word_bytes // 4:
            raise ValueError(f"SoftmaxPath: {softmax.lanes} lanes read from words of {self.scores_space.word_bytes // 4} "
                             "scores; the path needs at most as many lanes as the array has columns")
        self.row_width = address_bits(tokens + 1)
        command = softmax.signature.members["command"].signature.members["payload"].shape
        super().__init__({
            "command": In(stream.Signature(data.StructLayout({
                **{name: field.shape for name, field in command},
                "source": unsigned(self.row_width), "half": 1,
                "destination": unsigned(address_bits(self.p_space.depth))}))),
            "scores_read": In(ReadPort.Signature(addr_width=address_bits(self.scores_space.depth),
                                                 shape=unsigned(8 * self.scores_space.word_bytes))),
            "activation": In(WritePort.Signature(addr_width=address_bits(self.p_space.depth),
                                                 shape=unsigned(8 * self.p_space.word_bytes))),
            "row_scales": In(WritePort.Signature(addr_width=address_bits(self.scales_space.depth),
                                                 shape=unsigned(8 * self.scales_space.word_bytes))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.softmax = softmax = self.softmax
        t, lanes = self.tokens, softmax.lanes
        columns, operands = self.scores_space.word_bytes // 4, self.p_space.word_bytes
        command = self.command.payload
        m.d.comb += [self.command.ready.eq(~self.busy & softmax.command.ready),
                     softmax.command.valid.eq(self.command.valid & ~self.busy)]
        for name, _ in softmax.command.payload.shape():
            m.d.comb += getattr(softmax.command.payload, name).eq(getattr(command, name))
        accepted = self.command.valid & self.command.ready
        words_in = -(-t // columns)                  # SCORES words of a row
        beats = -(-t // lanes)                       # the unit's beats of a row

        # Score rows in, the beats past T's dropped.
        m.submodules.narrow = narrow = Gearbox(32 * columns, 32 * lanes)
        rows_left, row, tile = Signal(self.row_width), Signal(self.row_width), Signal(range(words_in + 1))
        word_valid, fetch = Signal(), Signal()
        half = Signal()
        m.d.comb += [fetch.eq((rows_left != 0) & (~word_valid | narrow.input.ready)),
                     self.scores_read.addr.eq(Mux(half, self.scores_space.depth // 2, 0)
                                              + times_constant(tile, self.score_rows) + row),
                     self.scores_read.en.eq(fetch),
                     narrow.input.valid.eq(word_valid), narrow.input.payload.eq(self.scores_read.data)]
        with m.If(fetch):
            m.d.sync += word_valid.eq(1)
            with m.If(tile == words_in - 1):
                m.d.sync += [tile.eq(0), row.eq(row + 1), rows_left.eq(rows_left - 1)]
            with m.Else():
                m.d.sync += tile.eq(tile + 1)
        with m.Elif(narrow.input.ready):
            m.d.sync += word_valid.eq(0)
        beat_in = Signal(range(words_in * columns // lanes + 1))
        keep = beat_in < beats
        m.d.comb += [softmax.input.valid.eq(narrow.output.valid & keep),
                     narrow.output.ready.eq(Mux(keep, softmax.input.ready, 1))]
        for lane in range(lanes):
            m.d.comb += softmax.input.payload[lane].eq(narrow.output.payload[32 * lane:32 * lane + softmax.score_width])
        with m.If(narrow.output.valid & narrow.output.ready):
            m.d.sync += beat_in.eq(Mux(beat_in == words_in * columns // lanes - 1, 0, beat_in + 1))

        # P rows out, each padded with zero beats to whole ACTIVATION words, K tile by K tile.
        m.submodules.widen = widen = Gearbox(8 * lanes, 8 * operands)
        pad_beats = (-beats) % (operands // lanes)
        padding = Signal(range(pad_beats + 1))
        out_row, out_tile = Signal(self.row_width), Signal(range(-(-t // operands) + 1))
        words_left = Signal(range(t * -(-t // operands) + 1))
        destination = Signal.like(command.destination)
        m.d.comb += [widen.input.valid.eq(Mux(padding != 0, 1, softmax.output.valid)),
                     widen.input.payload.eq(Mux(padding != 0, 0, softmax.output.payload.p.as_value())),
                     softmax.output.ready.eq((padding == 0) & widen.input.ready), widen.output.ready.eq(1),
                     self.activation.addr.eq(destination + times_constant(out_tile, t) + out_row),
                     self.activation.data.eq(widen.output.payload), self.activation.en.eq(widen.output.valid)]
        with m.If(softmax.output.valid & softmax.output.ready & softmax.output.payload.last):
            m.d.sync += padding.eq(pad_beats)
        with m.If((padding != 0) & widen.input.ready):
            m.d.sync += padding.eq(padding - 1)
        with m.If(widen.output.valid):
            m.d.sync += words_left.eq(words_left - 1)
            with m.If(out_tile == -(-t // operands) - 1):
                m.d.sync += [out_tile.eq(0), out_row.eq(out_row + 1)]
            with m.Else():
                m.d.sync += out_tile.eq(out_tile + 1)

        # Row scales out.
        scale_row = Signal(self.row_width)
        scale = Signal(ROW_SCALE)
        shift = softmax.scales.payload.shift
        m.d.comb += [softmax.scales.ready.eq(1), scale.multiplier.eq(softmax.scales.payload.multiplier),
                     scale.shift.eq(Mux(shift > 63, 63, shift)),
                     self.row_scales.addr.eq(scale_row), self.row_scales.data.eq(scale),
                     self.row_scales.en.eq(softmax.scales.valid)]
        with m.If(softmax.scales.valid):
            m.d.sync += scale_row.eq(scale_row + 1)

        with m.If(accepted):
            m.d.sync += [self.busy.eq(command.rows != 0), rows_left.eq(command.rows), row.eq(command.source),
                         half.eq(command.half),
                         tile.eq(0), beat_in.eq(0), out_row.eq(0), out_tile.eq(0), destination.eq(command.destination),
                         words_left.eq(times_constant(command.rows, -(-t // operands))), scale_row.eq(0)]
        with m.Elif(self.busy & (words_left == 0) & ~softmax.busy & (padding == 0)):
            m.d.sync += self.busy.eq(0)
        return m
