"""`Upsampler`: bilinear ×2 of a feature map's rows (align_corners = False), bit for bit `golden.ops.upsample2x`.

Each output is (9a + 3b + 3c + d) / 16 of its four nearest inputs (taps ¾ and ¼ on each axis, the edges
replicated), rounded half to even once and saturated to `out_bits`. The map is stored a pixel a word (`lanes`
channels, `docs/architecture.md` section 6), so the unit works along a row: an output row 2y or 2y + 1 is ¾ of
input row y (`near`) and ¼ of its neighbour row y ∓ 1 (`far`, row y itself at the edges) vertically, then ×2
horizontally across the pixels.

`input` (stream): one pixel of a row segment a beat, {near: `lanes` signed `in_bits` values, far: the same,
last: the segment's last pixel}; a segment of W pixels (W ≥ 1) gives 2W output pixels. `output` (stream):
`lanes` signed `out_bits` values, one output pixel a beat, in order. After a segment's first pixel one output
pixel leaves, after each further pixel two, after its last one more; a pixel is taken once the outputs of the
one before have begun (their taps chosen), so with the output always ready a segment of W pixels takes about
2W + 1 cycles, and segments follow one another with no gap. An output pixel is computed in two registered
steps, the taps' sum 3·near + far, then its rounding and saturation into a skid buffer, and leaves from a
register (`output.payload`, nothing combinational from the unit's state on it; `output.ready` reaches only the
skid buffer's registers).
"""

from __future__ import annotations

import numpy as np
from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden import ops

from ..common.arith import round_shift, times_constant
from ..common.pipeline import skid_buffer

__all__ = ["Upsampler"]


class Upsampler(wiring.Component):
    def __init__(self, lanes: int, in_bits: int = 16, out_bits: int = 16):
        problem = None if isinstance(lanes, int) and lanes >= 1 else \
            f"lanes = {lanes!r}: a positive number of values a pixel"
        for name, bits in (("in_bits", in_bits), ("out_bits", out_bits)):
            if problem is None and (not isinstance(bits, int) or not 2 <= bits <= 16):
                problem = f"{name} = {bits!r}: from 2 to 16 (golden.ops.upsample2x's range)"
        if problem is not None:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"Upsampler {problem}")
        self.lanes, self.in_bits, self.out_bits = lanes, in_bits, out_bits
        pixel = data.ArrayLayout(signed(in_bits), lanes)
        super().__init__({
            "input": In(stream.Signature(data.StructLayout({"near": pixel, "far": pixel, "last": 1}))),
            "output": Out(stream.Signature(data.ArrayLayout(signed(out_bits), lanes))),
        })

    def model(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """The output pixels [2W, lanes] of one segment: near and far rows [W, lanes]. Output row 2y + 1 of
        a map is ¾ row y + ¼ row y + 1: the middle row of `ops.upsample2x` of the two rows (far, near)."""
        pair = np.stack([np.asarray(far), np.asarray(near)]).transpose(2, 0, 1)     # [lanes, 2, W]
        return ops.upsample2x(pair, self.out_bits)[:, 2].T

    def elaborate(self, platform):
        m = Module()
        lanes, bits = self.lanes, self.in_bits + 2                 # 3·near + far
        vertical = data.ArrayLayout(signed(bits), lanes)
        taken = Signal(vertical)
        payload = self.input.payload
        m.d.comb += [taken[j].eq(times_constant(payload.near[j], 3) + payload.far[j]) for j in range(lanes)]
        previous = Signal(vertical, reset_less=True)     # the segment's pixel before `current` (data: the flags
        current = Signal(vertical, reset_less=True)      # below say when they hold pixels)
        have_previous = Signal()        # `current` is not its segment's first pixel
        in_segment = Signal()           # the last pixel taken was not its segment's last
        step, steps = Signal(range(3)), Signal(range(4))                  # outputs of `current` left, due
        emitting = step != steps

        # Horizontal taps: output pixel 2x − 1 is ¾ pixel x − 1 + ¼ pixel x, 2x is ¼ x − 1 + ¾ x; the first and
        # the last output pixels take the edge pixel twice. `near` weighs 3, `far` 1 (a shift and an add: Yosys maps
        # a `*` by a constant to a DSP block, 64 DSP48E2 for a 16×16 accelerator's two upsamplers).
        near = Mux(have_previous & (step == 0), previous.as_value(), current.as_value())
        far = Mux(have_previous & (step == 1), previous.as_value(), current.as_value())
        # Each output pixel is computed in two steps, each ending in a register: the taps' sum, then its rounding
        # and saturation (the skid buffer's). The sum moves on when the skid buffer takes it.
        high, low = (1 << (self.out_bits - 1)) - 1, -(1 << (self.out_bits - 1))
        summed = Signal(data.ArrayLayout(signed(bits + 2), lanes), reset_less=True)
        summed_valid, rounded_ready = Signal(), Signal()
        moving = summed_valid & rounded_ready
        room = ~summed_valid | moving
        emit = emitting & room
        with m.If(emit):
            m.d.sync += [summed[j].eq(times_constant(near[bits * j:bits * (j + 1)].as_signed(), 3)
                                      + far[bits * j:bits * (j + 1)].as_signed()) for j in range(lanes)]
            m.d.sync += step.eq(step + 1)
        m.d.sync += summed_valid.eq(emit | (summed_valid & ~moving))
        # The rounded pixel leaves through a skid buffer, so the output's readiness reaches its registers alone,
        # not the taps, the input's readiness or the pixels' enables.
        # The saturation is decided from the sum beside its rounding, not after it: round_shift(s, 4) (half to even)
        # is above `high` from s = 16·high + 8 on (the tie rounds to the even high + 1) and below `low` up to
        # s = 16·low − 9 (the tie at 16·low − 8 rounds to the even low).
        rounded = Signal.like(self.output.payload)
        for j in range(lanes):
            value = round_shift(summed[j], 4)
            m.d.comb += rounded[j].eq(Mux(summed[j] >= 16 * high + 8, high,
                                          Mux(summed[j] <= 16 * low - 9, low, value)))
        skid_buffer(m, summed_valid, rounded_ready, {"out": rounded}, self.output.valid, self.output.ready,
                    {"out": self.output.payload})
        m.d.comb += self.input.ready.eq(~emitting | room & (step == steps - 1))

        with m.If(self.input.valid & self.input.ready):
            m.d.sync += [previous.eq(current), current.eq(taken), have_previous.eq(in_segment),
                         in_segment.eq(~payload.last), step.eq(0),
                         steps.eq(Mux(in_segment, 2, 1) + payload.last)]
        return m
