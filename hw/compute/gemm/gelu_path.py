"""The GEMM engine's GELU path (fc1): requantized rows through GELU and into the int8 hidden activation."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden import ops

from ...common.arith import at_most
from ...common.pipeline import delay_line
from ...vector.gelu import Gelu
from .geometry import FRACTION_WIDTH, GELU_STAGES, GemmGeometry
from .requantizer import RequantizerLane

__all__ = ["GeluPath"]


class GeluPath(wiring.Component):
    """y = sat8(round_shift(gelu(z, f_c) · m_h, s_h)) for a row z of int16 values in their columns' Q.f_c, with
    the command's hidden multiplier m_h and shift s_h (taken when the command is): GELU, then one
    `RequantizerLane` per GELU lane, the drain's own lane at GELU's width.

    A row on `row` (valid one cycle; its `data` already requantized to int16) enters the `Gelu` unit
    `gelu_lanes` values a cycle, so rows must come at least ⌈C / gelu_lanes⌉ cycles apart (the drain spaces them);
    columns past C take f = 15. The chunks are gathered back into a row: it is on `hidden` (combinationally)
    `LATENCY` = ⌈C / gelu_lanes⌉ + `GELU_STAGES` cycles after it came, in the cycle after `arriving`.
    `active` says a row is inside; `error` is `Gelu.error` (a column's f below 5), sticky. `command` is read in
    the cycle `start` is set.
    """

    @staticmethod
    def model(z, fraction_bits, hidden_multiplier: int, hidden_shift: int):
        """The hidden rows of int16 rows z [.., C] with their columns' Q.f (`fraction_bits` [C] or one)."""
        return ops.requantize(ops.gelu(z, fraction_bits), hidden_multiplier, hidden_shift, 8)

    def __init__(self, geometry: GemmGeometry):
        self.geometry = g = geometry
        self.LATENCY = g.gelu_chunks + GELU_STAGES
        super().__init__({
            "start": In(1),
            "command": In(g.command),
            "row": In(g.drained_row),
            "hidden": Out(g.result),
            "arriving": Out(1),
            "active": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        lanes, chunks = g.gelu_lanes, g.gelu_chunks
        row = self.row
        m.submodules.gelu = gelu = Gelu(lanes)
        # the row, shifted out a chunk a cycle, and its columns' Q.f alike (data: `serializing` says when)
        pending = Signal(data.ArrayLayout(signed(16), chunks * lanes), reset_less=True)
        pending_f = Signal(data.ArrayLayout(unsigned(FRACTION_WIDTH), chunks * lanes), reset_less=True)
        pending_row, pending_tile = Signal.like(row.row, reset_less=True), Signal.like(row.tile, reset_less=True)
        chunk = Signal(range(max(chunks, 2)))
        serializing = Signal()
        with m.If(row.valid):
            m.d.sync += [pending.eq(Cat(*(row.data[c][:16] for c in range(g.cols)))),
                         pending_f.eq(Cat(row.fraction_bits,
                                          *([Const(ops.MAX_FRACTION_BITS, FRACTION_WIDTH)] * (chunks * lanes - g.cols)))),
                         pending_row.eq(row.row), pending_tile.eq(row.tile), chunk.eq(0), serializing.eq(1)]
        with m.Elif(serializing):
            m.d.sync += [pending.eq(pending.as_value() >> (16 * lanes)),
                         pending_f.eq(pending_f.as_value() >> (FRACTION_WIDTH * lanes)), chunk.eq(chunk + 1)]
            with m.If(chunk == chunks - 1):
                m.d.sync += serializing.eq(0)
        m.d.comb += [gelu.input.valid.eq(serializing), gelu.output.ready.eq(1), self.error.eq(gelu.error)]
        m.d.comb += [gelu.input.payload.data[lane].eq(pending[lane]) for lane in range(lanes)]
        m.d.comb += [gelu.input.payload.fraction_bits[lane].eq(pending_f[lane]) for lane in range(lanes)]

        # Each GELU lane's int16 value into int8 through a requantizer lane (× m_h, round, saturate), with the
        # command's shift clamped to the lane's product when it is taken.
        requantizers = [RequantizerLane(g, word_width=16, saturation_widths=[8]) for _ in range(lanes)]
        width = requantizers[0].product_width
        # (the command's, set at its start: not reset)
        hidden_multiplier = Signal.like(self.command.hidden_multiplier, reset_less=True)
        hidden_shift = Signal(range(width + 1), reset_less=True)
        with m.If(self.start):
            m.d.sync += [hidden_multiplier.eq(self.command.hidden_multiplier),
                         hidden_shift.eq(at_most(self.command.hidden_shift, width))]
        # each chunk's row, tile and whether it is the row's last, beside the GELU lanes (data, valid with `valid`)
        valid = delay_line(m, serializing, GELU_STAGES, "gelu_valid")
        side_layout = data.StructLayout({"row": len(row.row), "tile": len(row.tile), "last": 1})
        side = delay_line(m, Signal(side_layout, name="gelu_side_in"), GELU_STAGES, "gelu_side", data=True)
        m.d.comb += [side[0].row.eq(pending_row), side[0].tile.eq(pending_tile), side[0].last.eq(chunk == chunks - 1)]
        out_chunk = Signal(data.ArrayLayout(signed(8), lanes))
        for lane, requantizer in enumerate(requantizers):
            m.submodules[f"hidden{lane}"] = requantizer
            m.d.comb += [requantizer.word.eq(gelu.output.payload[lane]), requantizer.bias.eq(0),
                         requantizer.multiplier.eq(hidden_multiplier), requantizer.shift.eq(hidden_shift),
                         requantizer.saturate.eq(1),
                         out_chunk[lane].eq(requantizer.value)]
        # chunks gathered into the row: the newest at the top, the row complete with its last chunk
        gathered = Signal(data.ArrayLayout(signed(8), chunks * lanes), reset_less=True)
        row_out = Cat(gathered.as_value()[8 * lanes:], out_chunk.as_value()) if chunks > 1 else out_chunk.as_value()
        out = side[-1]
        with m.If(valid[-1]):
            m.d.sync += gathered.eq(row_out)
        assembled = Signal(data.ArrayLayout(signed(8), chunks * lanes))
        m.d.comb += [assembled.eq(row_out), self.hidden.row.eq(out.row), self.hidden.tile.eq(out.tile)]
        m.d.comb += [self.hidden.data[c].eq(assembled[c]) for c in range(g.cols)]
        m.d.comb += [self.arriving.eq(valid[-2] & side[-2].last), self.active.eq(Cat(*valid).any())]
        return m
