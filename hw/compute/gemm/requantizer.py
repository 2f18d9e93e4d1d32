"""One lane of the GEMM engine's requantizer: bias, multiplier, rounding shift and saturation of one column."""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden import ops

from ...common.arith import at_most, half_minus_one, kept_bit_of_byte, kept_byte
from ...common.multiplier import WideMultiplier
from ...common.pipeline import delay_line
from .geometry import REQUANTIZER_STAGES, GemmGeometry

__all__ = ["RequantizerLane"]


class RequantizerLane(wiring.Component):
    """y = saturate(round_shift((word + bias) · multiplier, shift)), exactly `golden.ops.requantize` with the
    rounding half to even, `LATENCY` = 13 cycles after `word`. The one lane of the engine's requantization: the
    drain's C lanes take the accumulator's words (`word_width` = its width, `saturation_widths` the modes'
    and RAW's), the GELU path's take GELU's int16 values into int8 (`word_width` 16, `saturation_widths`
    [8]).

    Cycle 0 (with `word`): `bias`, the column's `multiplier` and `shift`, the row's `row_multiplier`, and the
    command's flags; cycle 1: the row's `row_shift` (clamped to P = `product_width`). `row_scaled` takes the row's
    multiplier and shift instead of the column's; `raw` passes word + bias unscaled (no rounding). `saturate` is
    one-hot over `saturation_widths`: the signed width the value is clamped to (the drain's last, the accumulator's,
    for RAW); `relu` clamps at 0 too. The flags hold for the whole command.

    Stages, one register each so the lane meets timing on FPGA block RAMs and DSP blocks: the word, + bias, the
    product (a `WideMultiplier`: the DSPs' input and output registers and one beside them, two partial products
    when word + bias is wider than a DSP operand, one otherwise; × 1 for RAW), the product (the partials' sum),
    + 2^(shift−1) − 1 (decoded the stage before from the shift, which travels with the value, clamped to P; and
    the kept bit's byte), the kept bit, + kept bit, shift by bytes, by bits, the range check, saturate.
    No register is reset but `value`'s: the lane carries no valid bit, its user does.
    """
    LATENCY = REQUANTIZER_STAGES

    def __init__(self, geometry: GemmGeometry, *, word_width: int | None = None,
                 saturation_widths: list[int] | None = None):
        self.geometry = g = geometry
        self.word_width = g.accumulator_width if word_width is None else word_width
        self.widths = g.saturation_widths if saturation_widths is None else list(saturation_widths)
        if not 1 <= max(self.widths) <= self.word_width + 1:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"RequantizerLane saturation widths {self.widths}: from 1 to the word's "
                             f"{self.word_width} + 1 bits")
        self.product_width = self.word_width + 1 + g.multiplier_width + 1
        super().__init__({
            "word": In(signed(self.word_width)),
            "bias": In(signed(self.word_width)),
            "multiplier": In(unsigned(g.multiplier_width)),
            "shift": In(unsigned(ops.SHIFT_BITS)),
            "row_multiplier": In(unsigned(g.multiplier_width)),
            "row_shift": In(range(self.product_width + 1)),
            "row_scaled": In(1),
            "raw": In(1),
            "relu": In(1),
            "saturate": In(len(self.widths)),
            "value": Out(signed(max(self.word_width, *self.widths))),
        })

    @staticmethod
    def model(word, bias, multiplier, shift, bits, raw=False, relu=False):
        """What `value` becomes: `bits` is the saturation width (the accumulator's for RAW)."""
        lower = 0 if relu else None
        acc = np.asarray(word, np.int64) + bias
        if raw:
            return ops.saturate(acc, bits, lower=lower)
        return ops.requantize(acc, multiplier, shift, bits, lower=lower)

    def elaborate(self, platform):
        m = Module()
        aw, pw = self.word_width, self.product_width
        raw, row_scaled = self.raw, self.row_scaled

        # A lane is data alone (the drain carries each row's valid bit): its registers are not reset
        read = Signal(signed(aw), reset_less=True)
        bias = Signal.like(self.bias, reset_less=True)
        multiplier = Signal.like(self.multiplier, reset_less=True)
        biased = Signal(signed(aw + 1), reset_less=True)
        # the multiplier beside biased (1 for RAW: the product is the word)
        scale = Signal.like(multiplier, reset_less=True)
        # The product in registered DSP slices (`WideMultiplier`): the biased word leaves a fabric register for
        # the DSP blocks (no adder at their inputs), and their products land in registers beside them.
        m.submodules.product = wide = WideMultiplier(biased.shape(), multiplier.shape())
        m.d.comb += [wide.a.eq(biased), wide.b.eq(scale)]
        product = Signal(signed(pw))
        m.d.comb += product.eq(wide.p)
        halfway = Signal(signed(pw + 1), reset_less=True)
        kept = Signal(reset_less=True)
        byte = Signal(8, reset_less=True)       # the byte of the product holding the kept bit
        halfway_held = Signal.like(halfway, reset_less=True)
        rounded, coarse, shifted = (Signal(signed(pw + 1), name=n, reset_less=True)
                                    for n in ("rounded", "coarse", "shifted"))
        # the shift travels with the value, the row's replacing the column's at stage 1; 2^(shift−1) − 1 is
        # decoded from it into a register beside the product
        shift_column = Signal(ops.SHIFT_BITS, reset_less=True)
        shift = [shift_column,
                 *delay_line(m, Mux(row_scaled, self.row_shift, shift_column), 9, "shift", data=True)[1:]]
        half = Signal(pw, reset_less=True)
        m.d.sync += [
            # the accumulator word straight into a register (the block RAM's output register)
            read.eq(self.word), bias.eq(self.bias),
            multiplier.eq(Mux(row_scaled, self.row_multiplier, self.multiplier)),
            shift[0].eq(Mux(raw, 0, at_most(self.shift, pw))),
            half.eq(half_minus_one(shift[4], pw)),
            biased.eq(read + bias), scale.eq(Mux(raw, 1, multiplier)),
            # the kept bit picked in two steps (its byte, then the bit) beside + 2^(shift−1) − 1
            halfway.eq(product + half),
            byte.eq(kept_byte(product, shift[5])),
            halfway_held.eq(halfway), kept.eq(kept_bit_of_byte(byte, shift[6])),
            rounded.eq(halfway_held + kept),
            # the shift in two steps: by whole bytes, then by the rest
            coarse.eq(rounded >> Cat(Const(0, 3), shift[8][3:])),
            shifted.eq(coarse >> shift[9][:3]),
        ]
        m.d.sync += self.value.eq(self._saturate(m, shifted))
        return m

    def _saturate(self, m, value):
        """Clamp to the command's signed range of b bits (to 0 from below with `relu`), b chosen by the one-hot
        `saturate`. Two steps, one register apart: first, for each span of bits between the widths' sign
        positions b − 1, whether it is all ones and whether all zeros (reductions, no comparator's carry chain);
        then whether the value fits b bits (its bits from b − 1 up all equal: the spans' flags), and the choice;
        the sign says on which side it left the range. The result is a register later than `value`."""
        ranges = list(zip(self.widths, self.saturate))
        held = Signal.like(value, name="held")      # reset_less, as `value` is
        result = Signal(self.value.shape(), name="saturated")
        m.d.sync += held.eq(value)
        starts = sorted({bits - 1 for bits, _ in ranges if bits - 1 < len(value)})
        ones, zeros = (Signal(len(starts), name=name, reset_less=True) for name in ("ones", "zeros"))
        for index, start in enumerate(starts):
            span = value[start:starts[index + 1] if index + 1 < len(starts) else len(value)]
            m.d.sync += [ones[index].eq(span.all()), zeros[index].eq(~span.any())]
        checks = []
        for bits, flag in ranges:
            first = starts.index(bits - 1) if bits - 1 < len(value) else len(starts)
            checks.append(flag & (ones[first:].all() | zeros[first:].all()))
        fits = Cat(*checks).any()
        sign = held[-1]
        for index, (bits, flag) in enumerate(ranges):
            with m.If(flag) if index == 0 else m.Elif(flag) if index < len(ranges) - 1 else m.Else():
                with m.If(~fits & ~sign):
                    m.d.comb += result.eq((1 << (bits - 1)) - 1)
                with m.Elif(self.relu & sign):
                    m.d.comb += result.eq(0)
                with m.Elif(~fits):
                    m.d.comb += result.eq(-(1 << (bits - 1)))
                with m.Else():
                    m.d.comb += result.eq(held)
        return result
