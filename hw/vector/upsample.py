"""`Upsampler`: bilinear ×2 of feature-map planes (align_corners = False), bit for bit `golden.ops.upsample2x`.

Each output is (9a + 3b + 3c + d) / 16 of its four nearest inputs (taps ¾ and ¼ on each axis, the edges
replicated), rounded half to even once and saturated to `out_bits`. The unit holds one input row: the rows of
a plane come in order, and every input row lets out the output rows it completes.

`input` (stream): {row: `width` signed `in_bits` values, last: the plane's last row}; a plane of H rows
(H ≥ 1) gives 2H output rows. `output` (stream): 2·`width` signed `out_bits` values, one output row a beat, in
order. After a plane's first row one output row leaves, after each further row two, after its last row one
more; an input row is taken once the output rows of the one before have left, so with the output always
ready a plane of H rows takes about 2H + 1 cycles. Planes follow one another with no gap.
"""

from __future__ import annotations

import numpy as np
from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden import ops

from ..common.arith import round_shift

__all__ = ["Upsampler"]


class Upsampler(wiring.Component):
    def __init__(self, width: int, in_bits: int = 16, out_bits: int = 16):
        problem = None if isinstance(width, int) and width >= 1 else \
            f"width = {width!r}: a positive number of values a row"
        for name, bits in (("in_bits", in_bits), ("out_bits", out_bits)):
            if problem is None and (not isinstance(bits, int) or not 2 <= bits <= 16):
                problem = f"{name} = {bits!r}: from 2 to 16 (golden.ops.upsample2x's range)"
        if problem is not None:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"Upsampler {problem}")
        self.width, self.in_bits, self.out_bits = width, in_bits, out_bits
        super().__init__({
            "input": In(stream.Signature(data.StructLayout({
                "row": data.ArrayLayout(signed(in_bits), width), "last": 1}))),
            "output": Out(stream.Signature(data.ArrayLayout(signed(out_bits), 2 * width))),
        })

    def model(self, plane: np.ndarray) -> np.ndarray:
        """The output rows of one plane [H, width]: [2H, 2·width]."""
        return ops.upsample2x(np.asarray(plane), self.out_bits)

    def elaborate(self, platform):
        m = Module()
        w = self.width
        previous = Signal(data.ArrayLayout(signed(self.in_bits), w))    # the plane's row before `current`
        current = Signal.like(previous)
        have_previous = Signal()        # `current` is not its plane's first row: `previous` is the row before
        in_plane = Signal()             # the last row taken was not its plane's last
        step, steps = Signal(range(3)), Signal(range(4))                  # output rows of `current` left, due
        emitting = step != steps

        # Vertical taps: output row 2i − 1 is ¾ row i − 1 + ¼ row i, row 2i is ¼ row i − 1 + ¾ row i; the first
        # and the last output rows take the edge row twice. `near` weighs 3, `far` 1.
        near = Mux(have_previous & (step == 0), previous.as_value(), current.as_value())
        far = Mux(have_previous & (step == 1), previous.as_value(), current.as_value())
        bits = self.in_bits
        vertical = [3 * near[bits * j:bits * (j + 1)].as_signed() + far[bits * j:bits * (j + 1)].as_signed()
                    for j in range(w)]
        high, low = (1 << (self.out_bits - 1)) - 1, -(1 << (self.out_bits - 1))
        for j in range(w):
            for k, neighbour in ((2 * j, vertical[max(j - 1, 0)]), (2 * j + 1, vertical[min(j + 1, w - 1)])):
                value = round_shift(3 * vertical[j] + neighbour, 4)
                m.d.comb += self.output.payload[k].eq(Mux(value > high, high, Mux(value < low, low, value)))
        m.d.comb += [self.output.valid.eq(emitting), self.input.ready.eq(~emitting | self.output.ready
                                                                        & (step == steps - 1))]

        with m.If(self.output.valid & self.output.ready):
            m.d.sync += step.eq(step + 1)
        with m.If(self.input.valid & self.input.ready):
            m.d.sync += [previous.eq(current), current.eq(self.input.payload.row), have_previous.eq(in_plane),
                         in_plane.eq(~self.input.payload.last), step.eq(0),
                         steps.eq(Mux(in_plane, 2, 1) + self.input.payload.last)]
        return m
