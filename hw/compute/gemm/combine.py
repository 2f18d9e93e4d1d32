"""The GEMM engine's COMBINE output (expert fc2): each row y·g, rounded to the residual's step, as its token's row."""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden import ops

from ...common.arith import index_bits, round_shift
from ...common.multiplier import Multiplier
from ...common.pipeline import data_register, delay_line
from .geometry import GemmGeometry, GemmMode

__all__ = ["CombineTerms", "COMBINE_LATENCY", "TERM_SHIFT"]

TERM_SHIFT = ops.GATE_BITS + ops.COMBINE_FRACTION_BITS    # y at a quarter of the residual's step, g in Q1.15
COMBINE_LATENCY = 3      # from a row on `result` to its term on `term`: the multipliers' input and output, rounding


class CombineTerms(wiring.Component):
    """For each row m of an expert's fc2 output (its values already requantized to 18 bits, at a quarter of the
    residual's step), the row of terms round_shift(y·g, 17) (`golden.ops.gate_weighted` before its saturation,
    which the residual addition applies: |term| ≤ 2^15) of token t = `index[list_base + m]`, g =
    `gate[list_base + m]` (Q1.15); `list_base` is the command's, held while it runs.

    The token and the gate are read when the row issues into the drain (`issue`, row m on `row`; `scatter_read`
    and `gate_read`, data a cycle later) and travel with it; the row arrives on `result` (`valid` for one cycle)
    the drain's latency (`drain_latency`) later. y and g enter the multipliers' input registers, the product leaves
    their output registers and is rounded into `term`: {row: t, tile: the row's N tile, data: the terms} holds it from
    `COMBINE_LATENCY` cycles after the row arrived, and `arriving` announces it the cycle before (the output
    FIFO's contract). `active` says a row is between `result` and `term`.
    """

    @staticmethod
    def model(y, gates, tokens):
        """The rows of one command: (token, terms) for y [M, N] (18-bit rows), Q1.15 `gates` [M] and `tokens` [M];
        the terms unsaturated, round_shift(y·g, 17), int64."""
        products = np.asarray(y, np.int64) * np.asarray(gates, np.int64)[:, None]
        return list(zip(np.asarray(tokens).tolist(), ops.round_shift(products, TERM_SHIFT)))

    def __init__(self, geometry: GemmGeometry):
        self.geometry = g = geometry
        super().__init__({
            "list_base": In(g.command["list_base"].shape),
            "issue": In(1),
            "row": In(index_bits(g.max_m + 1)),
            "result": In(g.drained_row),
            "scatter_read": In(g.read_port("index")),
            "gate_read": In(g.read_port("gate")),
            "arriving": Out(1),
            "term": Out(g.result),
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        for port in (self.scatter_read, self.gate_read):
            m.d.comb += [port.addr.eq(self.list_base + self.row), port.en.eq(self.issue)]
        token = delay_line(m, self.scatter_read.data, g.drain_latency - 1 + COMBINE_LATENCY, "token", data=True)[-1]
        gate = delay_line(m, self.gate_read.data, g.drain_latency - 1, "gate", data=True)[-1]
        tile = delay_line(m, self.result.tile, COMBINE_LATENCY, "tile", data=True)[-1]
        valid = delay_line(m, self.result.valid, COMBINE_LATENCY, "valid")
        terms = data_register(m, self.term.data, "terms")
        for c in range(g.cols):
            # Saturated to 18 bits in COMBINE mode: one 18 × 17 DSP multiplier, no partial-product adder.
            multiplier = m.submodules[f"gate_weight{c}"] = Multiplier(signed(GemmMode.COMBINE.bits), gate.shape())
            m.d.comb += [multiplier.a.eq(self.result.data[c][:GemmMode.COMBINE.bits]), multiplier.b.eq(gate)]
            m.d.sync += terms[c].eq(round_shift(multiplier.p, TERM_SHIFT))
        m.d.comb += [self.term.row.eq(token), self.term.tile.eq(tile), self.arriving.eq(valid[-2]),
                     self.active.eq(Cat(*valid[1:]).any())]
        return m
