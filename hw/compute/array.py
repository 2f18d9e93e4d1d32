"""The weight-stationary systolic array (docs/architecture.md, section 2).

`SystolicArray(rows=R, cols=C)` multiplies a streamed row x [R] by a stationary tile W [R, C] each cycle:
out[c] = Σ_r x[r]·W[r, c], exactly, in `accumulator_width` bits. Every processing element holds two weight
banks; a streamed row names the bank it multiplies with, so a tile can be loaded into one bank while the
other computes, and consecutive tiles stream back to back.

Ports (all `lib.stream` signatures with `always_ready`: the array is a rigid pipeline and never stalls; a
cycle without `valid` is a bubble):
- `load`: `load_rows` rows of a tile per cycle: `data` [load_rows][C], the index of the first `row` (a
  multiple of load_rows) and the `bank`. Row r of bank b may be loaded from the cycle before the last
  streamed row that uses bank b's previous tile enters the array; it must have entered at least two cycles
  before the first streamed row that uses it. A tile takes ⌈R / load_rows⌉ load cycles.
- `stream_in`: one streamed row per cycle: `data` [R] and `bank`.
- `out`: `data` [C], the products of the row that entered `latency` = R + C + 2 cycles earlier, in order.

Timing inside: row r of the streamed operand is delayed r cycles (skew); PE (r, c) sees it r + c cycles
after it entered, registers the product one cycle later (`Multiplier`), lands it in a register beside the DSP
block the cycle after (a DSP output may sit far from its adder in the placement) and adds the partial sum from
above the cycle after that; column c is delayed C − 1 − c cycles at the bottom (deskew) so the C results of a
row leave together.
Load rows are skewed by column and travel down their column one row per cycle, so each PE's bank is written
r + c + 1 cycles after its row entered.
Reset reaches only the valid bits (of the stream and of the load rows): operands, weights, products and partial
sums are `reset_less`, so a reset neither costs their logic nor routes to their registers, and after one `out`
carries no `valid` until a row that entered after it.
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..common.multiplier import Multiplier
from ..common.pipeline import delay_line

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    class Signature(wiring.Signature):
        """The array's ports for `rows` × `cols` operands of `operand_width` bits and accumulators of
        `accumulator_width` bits."""

        def __init__(self, rows: int, cols: int, operand_width: int = 8, accumulator_width: int = 32,
                     load_rows: int = 1):
            for name, value, low in (("rows", rows, 1), ("cols", cols, 1), ("operand_width", operand_width, 2),
                                     ("load_rows", load_rows, 1)):
                if not isinstance(value, int) or value < low:
                    raise ValueError(f"SystolicArray {name} = {value!r}: must be an integer ≥ {low}")
            if load_rows > rows:
                raise ValueError(f"SystolicArray load_rows = {load_rows}: at most rows ({rows})")
            needed = 2 * operand_width + max(0, rows - 1).bit_length()
            if not isinstance(accumulator_width, int) or accumulator_width < needed:
                raise ValueError(f"SystolicArray accumulator_width = {accumulator_width!r}: {rows} products of "
                                 f"{operand_width}-bit operands need at least {needed} bits")
            self.rows, self.cols, self.load_rows = rows, cols, load_rows
            self.operand_width, self.accumulator_width = operand_width, accumulator_width
            operand = signed(operand_width)
            super().__init__({
                "load": In(stream.Signature(data.StructLayout({
                    "data": data.ArrayLayout(data.ArrayLayout(operand, cols), load_rows),
                    "row": unsigned(max(1, (rows - 1).bit_length())),
                    "bank": unsigned(1),
                }), always_ready=True)),
                "stream_in": In(stream.Signature(data.StructLayout({
                    "data": data.ArrayLayout(operand, rows),
                    "bank": unsigned(1),
                }), always_ready=True)),
                "out": Out(stream.Signature(data.ArrayLayout(signed(accumulator_width), cols),
                                            always_ready=True)),
            })

    def __init__(self, rows: int, cols: int, operand_width: int = 8, accumulator_width: int = 32,
                 load_rows: int = 1):
        super().__init__(self.Signature(rows, cols, operand_width, accumulator_width, load_rows))
        self.rows, self.cols, self.load_rows = rows, cols, load_rows
        self.operand_width, self.accumulator_width = operand_width, accumulator_width

    @staticmethod
    def latency_of(rows: int, cols: int) -> int:
        """Cycles from a streamed row entering an `rows` × `cols` array to its results leaving."""
        return rows + cols + 2

    @property
    def latency(self) -> int:
        return self.latency_of(self.rows, self.cols)

    @staticmethod
    def model(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The results of streamed rows x [M, R] against a tile W [R, C]: the exact products, int64 [M, C]."""
        return np.asarray(x, np.int64) @ np.asarray(weights, np.int64)

    def elaborate(self, platform):
        m = Module()
        rows, cols = self.rows, self.cols
        ow, aw = self.operand_width, self.accumulator_width

        # The operands, weights, products and partial sums are data whose validity travels beside them (the
        # stream's and the load's valid): they are not reset, so the domain's reset reaches only the valid bits.
        def delayed(value, cycles, name, data=True):
            return delay_line(m, value, cycles, name, data=data)[-1]

        # Streamed operand: row r delayed r cycles, then one register per PE moving right.
        x = [[Signal(signed(ow), name=f"x_{r}_{c}", reset_less=True) for c in range(cols)] for r in range(rows)]
        x_bank = [[Signal(name=f"xbank_{r}_{c}", reset_less=True) for c in range(cols)] for r in range(rows)]
        x_arriving, bank_arriving = [], []    # what PE (r, c) registers next
        for r in range(rows):
            x_arriving.append([delayed(self.stream_in.payload.data[r], r, f"skew_x{r}"), *x[r][:-1]])
            bank_arriving.append([delayed(self.stream_in.payload.bank, r, f"skew_xbank{r}"), *x_bank[r][:-1]])
            for c in range(cols):
                m.d.sync += [x[r][c].eq(x_arriving[r][c]), x_bank[r][c].eq(bank_arriving[r][c])]

        # Weight loading: column c delayed c cycles, then down the column one row stage per cycle, the
        # `load_rows` rows of a beat side by side; PE row r takes lane r mod load_rows of the beat whose first
        # row is r − r mod load_rows.
        load = self.load
        lanes = self.load_rows
        row_width = len(load.payload.row)
        products = {}
        for c in range(cols):
            data_in = [delayed(load.payload.data[lane][c], c, f"skew_w{c}_{lane}") for lane in range(lanes)]
            row_in = delayed(load.payload.row, c, f"skew_wrow{c}")
            bank_in = delayed(load.payload.bank, c, f"skew_wbank{c}")
            valid_in = delayed(load.valid, c, f"skew_wvalid{c}", data=False)
            for r in range(rows):
                w_data = [Signal(signed(ow), name=f"lw_{r}_{c}_{lane}", reset_less=True) for lane in range(lanes)]
                w_row = Signal(row_width, name=f"lwrow_{r}_{c}", reset_less=True)
                w_bank = Signal(name=f"lwbank_{r}_{c}", reset_less=True)
                w_valid = Signal(name=f"lwvalid_{r}_{c}")
                m.d.sync += [w_row.eq(row_in), w_bank.eq(bank_in), w_valid.eq(valid_in)]
                m.d.sync += [register.eq(value) for register, value in zip(w_data, data_in)]
                data_in, row_in, bank_in, valid_in = w_data, w_row, w_bank, w_valid
                banks = [Signal(signed(ow), name=f"w{b}_{r}_{c}", reset_less=True) for b in range(2)]
                with m.If(w_valid & (w_row == r - r % lanes)):
                    with m.If(w_bank):
                        m.d.sync += banks[1].eq(w_data[r % lanes])
                    with m.Else():
                        m.d.sync += banks[0].eq(w_data[r % lanes])
                # The bank is chosen a cycle ahead, with the bank of the row arriving next: the multiplier
                # registers both operands as x[r][c] takes the row (the DSP block's input registers).
                multiplier = m.submodules[f"multiplier_{r}_{c}"] = Multiplier(signed(ow), signed(ow))
                m.d.comb += [multiplier.a.eq(x_arriving[r][c]),
                             multiplier.b.eq(Mux(bank_arriving[r][c], banks[1], banks[0]))]
                landed = Signal.like(multiplier.p, name=f"product_{r}_{c}", reset_less=True)
                m.d.sync += landed.eq(multiplier.p)
                products[r, c] = landed

        # Partial sums down each column, then deskew.
        outputs = []
        for c in range(cols):
            above = 0
            for r in range(rows):
                total = Signal(signed(aw), name=f"psum_{r}_{c}", reset_less=True)
                m.d.sync += total.eq(above + products[r, c])
                above = total
            outputs.append(delayed(above, cols - 1 - c, f"deskew{c}"))
        m.d.comb += self.out.payload.eq(Cat(*outputs))
        m.d.comb += self.out.valid.eq(delayed(self.stream_in.valid, self.latency, "valid", data=False))
        return m
