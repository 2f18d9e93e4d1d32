"""The residual addition, bit for bit `golden.model`'s: x ← sat(x + sat(a)) on the residual stream's format.

The addend a is a value in the residual format (the projection's and dense fc2's output, the position
embedding), which its saturation leaves as it is, or an expert's combine term round_shift(y·g, 17), which can
reach 2^15 and is saturated first, as `golden.ops.gate_weighted` does.

`input` (stream): {residual[lanes], addend[lanes] (one bit wider than the residual)}; `output` (stream):
[lanes] of the residual format, the same beats in order `LATENCY` = 3 cycles later when nothing stalls (the
addend saturated, the sum, its saturation: a stage each). The last stage is a skid buffer's
(`hw.common.pipeline.skid_stage`): the output's `ready` reaches only its registers, and the two stages before it
(and `input.ready`) stop as a whole once its skid entry is full and stage 2 holds a beat.
"""

from __future__ import annotations

import numpy as np
from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden import ops

from ..common.pipeline import skid_stage

__all__ = ["ResidualAdd"]


def _saturate(value, bits):
    high, low = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    return Mux(value > high, high, Mux(value < low, low, value))


class ResidualAdd(wiring.Component):
    LATENCY = 3

    def __init__(self, lanes: int = 16, width: int = 16):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"ResidualAdd lanes = {lanes!r}: must be a positive integer")
        if not isinstance(width, int) or not 2 <= width <= 32:
            raise ValueError(f"ResidualAdd width = {width!r}: the residual stream has 2 to 32 bits")
        self.lanes, self.width = lanes, width
        super().__init__({
            "input": In(stream.Signature(data.StructLayout({
                "residual": data.ArrayLayout(signed(width), lanes),
                "addend": data.ArrayLayout(signed(width + 1), lanes)}))),
            "output": Out(stream.Signature(data.ArrayLayout(signed(width), lanes))),
        })

    @classmethod
    def for_model(cls, model, accel) -> "ResidualAdd":
        return cls(accel.vector_lanes, accel.residual_width)

    @staticmethod
    def model(residual, addend, width: int = ops.RESIDUAL_BITS):
        """sat(x + sat(a)) in `width` bits (`golden.model`'s residual additions; an addend already in the residual
        format passes its saturation unchanged)."""
        addend = ops.saturate(np.asarray(addend, np.int64), width)
        return ops.saturate(np.asarray(residual, np.int64) + addend, width)

    def elaborate(self, platform):
        m = Module()
        valid = [Signal(name=f"valid{stage}") for stage in range(self.LATENCY - 1)]
        advance, staged = skid_stage(m, valid[-1], self.output)         # stage 3
        m.d.comb += self.input.ready.eq(advance)
        with m.If(advance):
            m.d.sync += [valid[0].eq(self.input.valid), *(valid[i].eq(valid[i - 1]) for i in range(1, len(valid)))]
        for lane in range(self.lanes):
            residual = Signal(signed(self.width), name=f"residual{lane}", reset_less=True)     # data, valid with
            addend = Signal(signed(self.width), name=f"addend{lane}", reset_less=True)         # `valid`
            total = Signal(signed(self.width + 1), name=f"sum{lane}", reset_less=True)
            with m.If(advance):
                m.d.sync += [
                    residual.eq(self.input.payload.residual[lane]),                                 # stage 1
                    addend.eq(_saturate(self.input.payload.addend[lane], self.width)),
                    total.eq(residual + addend),                                                    # stage 2
                ]
            m.d.comb += staged[lane].eq(_saturate(total, self.width))                               # into 3
        return m
