"""The attention softmax over rows of raw int32 scores, bit for bit `golden.ops.softmax_rows` and
`golden.ops.row_multipliers` (docs/numerics.md, section 5).

Rows of `length` scores (the keys, T) go through a two-row buffer:
1. **Maximum** (`lanes` scores per cycle): each beat is written into the row buffer while the row maximum
   accumulates (a comparator tree, two stages).
2. **Exponentials** (`lanes` per cycle, the row read back): d = max − x, u = round_shift(d · m_exp, s_exp) in
   Q.6, P = round_shift(T[u mod 64], 15 + ⌊u / 64⌋) of a 64-entry table T (0 once ⌊u / 64⌋ ≥ 8: T < 2^22),
   so P ∈ [0, 127] with the row maximum exactly 127. The ROM holds P itself for each of u's 512 low values
   (a block RAM read by u's nine bits, no arithmetic after it). Nine stages: d · m_exp from d's register in
   registered DSP blocks (`WideMultiplier`, four stages), the last a skid buffer's
   (`hw.common.pipeline.skid_stage`): the output's `ready` and the row scale's readiness reach only its registers,
   and the eight stages before it stop as a whole once its skid entry is full and stage 8 holds a beat.
3. **Row scale** (one row at a time, beside the next row's exponentials): S = ΣP, recip = 2^32 // S by
   restoring division two quotient bits per cycle, m_v · recip accumulated from those bits a cycle behind them
   (the product times 4 plus 0, m_v, 2·m_v or 3·m_v: an adder, no multiplier block), then normalised to 15 bits
   with its carry: the row's requantization multiplier and shift for attention·V (the sum's bit length a cycle
   after the sum, the product's a cycle before its excess over 15 bits, its rounding sum a cycle before the
   shift). About 21 cycles a row (the cycle model's `SOFTMAX`).

So a row costs max(⌈T / lanes⌉, row scale) cycles once the pipeline is full.

Ports: `command` {rows, exp_multiplier, exp_shift, out_multiplier, out_shift} (the head's scalars as the
quantizer gives them). `input`: ⌈T / lanes⌉ beats per row of `lanes` signed 32-bit scores (lanes past T
ignored). `output`: per beat {p[lanes] (int8, lanes past T zero), last of row}. `scales`: per row
{multiplier, shift} for attention·V's output path; a row's last beat leaves only when its row scale can be
computed (the previous row's has been taken). `busy` until the command's last row and scale have left.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import ops

from ..common.arith import (bit_length, capped_power_of_two, half_minus_one, index_bits, radix4_step, rounding_sum,
                    shift_right, times_constant, tree_sum)
from ..common.multiplier import WideMultiplier
from ..common.pipeline import skid_stage
from .rows import BankState, RowBuffer, lane_mask, pick

__all__ = ["Softmax", "score_bits"]


def _p_table() -> list[int]:
    """P for each u up to the first whole part whose every entry rounds to 0: round_shift(T[u mod 64],
    15 + ⌊u / 64⌋), padded with zeros to a power of two."""
    rows = [ops.round_shift(ops.ATTENTION_TABLE, ops.ATTENTION_TABLE_SHIFT)]
    while rows[-1].any():
        rows.append(ops.round_shift(ops.ATTENTION_TABLE, ops.ATTENTION_TABLE_SHIFT + len(rows)))
    *nonzero, zero = rows
    padded = nonzero + [zero] * ((1 << (len(nonzero) - 1).bit_length()) - len(nonzero))
    return [int(v) for row in padded for v in row]


P_TABLE = _p_table()                                               # 8 × 64 entries: u's nine low bits
P_TABLE_BITS = (len(P_TABLE) - 1).bit_length()
P_WIDTH = max(P_TABLE).bit_length()                                # 7: P ≤ 127
RECIPROCAL_BITS = 33                # 2^32 // S, S ≥ 1


def score_bits(head_dim: int) -> int:
    """Signed bits of a Q·Kᵀ score: hd products of two int8 values, |q·k| ≤ hd · 2^14."""
    return (head_dim << 14).bit_length() + 1


class Softmax(wiring.Component):
    MAX_STAGES = 2
    EXP_STAGES = 2 + WideMultiplier.LATENCY + 3     # the read and d; d·m_exp; the rounding sum, P[u], the skid stage

    def __init__(self, length: int, lanes: int = 16, *, score_width: int = 32, max_rows: int = 4096):
        for name, value in (("length", length), ("lanes", lanes), ("max_rows", max_rows)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Softmax {name} = {value!r}: must be a positive integer")
        if not 2 <= score_width <= 32:
            raise ValueError(f"Softmax score_width = {score_width!r}: scores are at most int32")
        self.length, self.lanes, self.score_width, self.max_rows = length, lanes, score_width, max_rows
        self.beats = -(-length // lanes)
        self.sum_width = (ops.ATTENTION_P_MAX * length).bit_length()
        multiplier = unsigned(ops.MULTIPLIER_BITS + 1)
        super().__init__({
            "command": In(stream.Signature(data.StructLayout({
                "rows": unsigned(index_bits(max_rows + 1)),
                "exp_multiplier": multiplier, "exp_shift": unsigned(6),
                "out_multiplier": multiplier, "out_shift": unsigned(6)}))),
            "input": In(stream.Signature(data.ArrayLayout(signed(score_width), lanes))),
            "output": Out(stream.Signature(data.StructLayout({"p": data.ArrayLayout(signed(8), lanes), "last": 1}))),
            "scales": Out(stream.Signature(data.StructLayout({"multiplier": multiplier, "shift": unsigned(7)}))),
            "busy": Out(1),
        })

    @classmethod
    def for_model(cls, model, accel) -> "Softmax":
        """The unit `accel` builds for `model`: rows of all T keys (scores as wide as Q·Kᵀ can make them), up to
        a token block of them (one block of a head's query rows) a command."""
        return cls(model.num_tokens, accel.vector_lanes, score_width=score_bits(model.head_dim),
                   max_rows=accel.tokens_per_block(model))

    @staticmethod
    def model(scores, exp_multiplier, exp_shift, out_multiplier, out_shift):
        """(P [rows, T] int8, multipliers [rows], shifts [rows]) from the golden operations."""
        p, sums = ops.softmax_rows(scores, exp_multiplier, exp_shift)
        multipliers, shifts = ops.row_multipliers(sums, out_multiplier, out_shift)
        return p, multipliers, shifts

    def elaborate(self, platform):
        m = Module()
        lanes, width = self.lanes, self.score_width
        command = Signal.like(self.command.payload, reset_less=True)      # taken with `busy`
        busy = Signal()
        m.d.comb += [self.busy.eq(busy), self.command.ready.eq(~busy)]
        with m.If(self.command.valid & self.command.ready):
            m.d.sync += [command.eq(self.command.payload), busy.eq(self.command.payload.rows != 0)]

        # --- 1. Maximum --------------------------------------------------------------------------------------
        lowest = -(1 << (width - 1))
        rows = RowBuffer(m, "rows", self.input, length=self.length, lanes=lanes, shape=signed(width),
                         fill=lowest, rows=command.rows, enable=busy)
        maxima = [Signal(signed(width), name=f"bank{b}_max", reset_less=True) for b in range(2)]   # with the banks
        sides = rows.intake_sides(m, "max_side", self.MAX_STAGES)
        values = Signal.like(rows.masked, reset_less=True)       # data, valid with `sides`
        beat_max = Signal(signed(width), reset_less=True)
        m.d.sync += [values.eq(rows.masked), beat_max.eq(_maximum(list(values)))]
        final = sides[-1]
        for b in range(2):
            with m.If(final.valid & (final.bank == b)):
                running = Mux(final.first, lowest, maxima[b])
                m.d.sync += maxima[b].eq(Mux(beat_max > running, beat_max, running))
        rows.set_state(m, final.bank, BankState.READY, final.valid & final.last)

        # --- 2. Exponentials -----------------------------------------------------------------------------------
        valid = [Signal(name=f"exp{stage}_valid") for stage in range(self.EXP_STAGES - 1)]
        side = data.StructLayout({"bank": 1, "last": 1})
        sides = [Signal(side, name=f"exp_side{stage}", reset_less=True)           # data, valid with `valid`
                 for stage in range(self.EXP_STAGES - 1)]
        # stage 6 (`held`), a skid buffer's: a row's last beat leaves it only while the row scale is free
        scale_free = Signal()              # the row scale can take a row's sum
        held = SimpleNamespace(valid=Signal(), ready=Signal(), payload=Signal.like(self.output.payload))
        advance, staged = skid_stage(m, valid[-1], held)
        leaving = ~held.payload.last | scale_free
        m.d.comb += [self.output.valid.eq(held.valid & leaving), held.ready.eq(self.output.ready & leaving),
                     self.output.payload.eq(held.payload)]
        m.d.comb += [rows.issue.eq(busy & advance & rows.readable), rows.read_enable.eq(advance)]
        with m.If(advance):
            m.d.sync += [valid[0].eq(rows.issue), sides[0].bank.eq(rows.read_bank), sides[0].last.eq(rows.read_last)]
            m.d.sync += [valid[i].eq(valid[i - 1]) for i in range(1, self.EXP_STAGES - 1)]
            m.d.sync += [sides[i].eq(sides[i - 1]) for i in range(1, self.EXP_STAGES - 1)]
        # the bank's maximum is read at stage 1; the bank is free after that
        rows.set_state(m, sides[0].bank, BankState.FREE, advance & valid[0] & sides[0].last)
        row_max = pick(sides[0].bank, maxima)
        edge_lanes = lane_mask(m, "edge_lanes", lanes, rows.edge, sides[-1].last)
        # Per command: 2^(s−1) − 1 and the sum from which u is past the table (P = 0), 2^(s + 9), capped past
        # the product's range; so each lane rounds with one adder and keeps only u's low nine bits.
        multiplier_shape = command.exp_multiplier.shape()
        product_width = width + 1 + multiplier_shape.width
        exp_half = Signal(product_width, name="exp_half", reset_less=True)
        zero_from = Signal(product_width + 2, name="zero_from", reset_less=True)
        with m.If(self.command.valid & self.command.ready):
            top = self.command.payload.exp_shift + P_TABLE_BITS
            m.d.sync += [exp_half.eq(half_minus_one(self.command.payload.exp_shift)),
                         zero_from.eq(capped_power_of_two(top, product_width + 1))]
        reads = []
        for pair in range(-(-lanes // 2)):     # a block RAM (two read ports) for two lanes
            memory = m.submodules[f"table{pair}"] = Memory(shape=unsigned(P_WIDTH), depth=len(P_TABLE), init=P_TABLE,
                                                           attrs={"rom_style": "block"})
            reads += [memory.read_port(), memory.read_port()]
        beat_p = []
        for lane in range(lanes):        # the lanes' stages are data, valid with `valid`: not reset
            distance = Signal(unsigned(width + 1), name=f"distance{lane}", reset_less=True)           # d = max − x
            multiplier = m.submodules[f"exp_product{lane}"] = WideMultiplier(distance.shape(), multiplier_shape)
            product = multiplier.p                                                  # d · m_exp, exactly
            rounding = Signal(unsigned(product_width + 1), name=f"rounding{lane}", reset_less=True)   # before the shift
            exponent = Signal(P_TABLE_BITS, name=f"exponent{lane}")                        # u's low nine bits
            zero = Signal(name=f"zero{lane}", reset_less=True)
            p = staged.p[lane]
            m.d.comb += [exponent.eq(shift_right(rounding, command.exp_shift, len(exponent))),
                         reads[lane].addr.eq(exponent), reads[lane].en.eq(advance)]
            m.d.comb += [multiplier.a.eq(distance), multiplier.b.eq(command.exp_multiplier),    # stages 3-6
                         multiplier.en.eq(advance)]
            with m.If(advance):
                m.d.sync += [
                    distance.eq(row_max - rows.read_data[lane]),                                    # stage 2
                    rounding.eq(rounding_sum(product, command.exp_shift, exp_half)),               # stage 7
                    zero.eq(rounding >= zero_from),                                                # stage 8 (+ P[u])
                ]
            m.d.comb += p.eq(Mux(edge_lanes[lane] & ~zero, reads[lane].data, 0))                # into stage 6
            beat_p.append(held.payload.p[lane])
        m.d.comb += staged.last.eq(sides[-1].last)

        # --- 3. Row scale ----------------------------------------------------------------------------------------
        beat_sum = tree_sum(p.as_unsigned() for p in beat_p)
        row_sum = Signal(unsigned(self.sum_width))
        taken = self.output.valid & self.output.ready
        with m.If(taken):
            m.d.sync += row_sum.eq(Mux(held.payload.last, 0, row_sum + beat_sum))
        rows_out = self._row_scale(m, command, row_sum + beat_sum, taken & held.payload.last, scale_free, busy)
        with m.If(self.command.valid & self.command.ready):
            m.d.sync += rows_out.eq(0)
            rows.reset(m)
        return m

    def _row_scale(self, m, command, row_total, row_done, scale_free, busy):
        """Part 3, one row at a time: the row's sum `row_total` taken when `row_done` (while `scale_free`), then
        2^32 // S, m_v · recip normalised to 15 bits and its shift, out on `scales`; `busy` cleared after the
        command's last row. Returns the count of rows out (the caller clears it with each command)."""
        # (data, each set in the state before the one that reads it: not reset)
        total = Signal(unsigned(self.sum_width), reset_less=True)
        remainder = Signal(unsigned(self.sum_width + 1), reset_less=True)
        triple = Signal(unsigned(self.sum_width + 2), reset_less=True)          # 3 · S, for the radix-4 step
        quotient = Signal(unsigned(RECIPROCAL_BITS), reset_less=True)
        step = Signal(range(RECIPROCAL_BITS + 1), reset_less=True)
        product = Signal(unsigned(RECIPROCAL_BITS + len(command.out_multiplier)), reset_less=True)
        # m_v · the quotient's bits so far, a cycle behind them: `digits` when the last bits (one when
        # `digit_half`) are not in it yet; 3 · m_v from the row's start
        digits, digit_half = Signal(), Signal(reset_less=True)
        triple_multiplier = Signal(unsigned(len(command.out_multiplier) + 2), reset_less=True)
        excess = Signal(range(len(product) + 1), reset_less=True)            # k = max(0, bitlen(product) − 15)
        product_length = Signal.like(excess, reset_less=True)
        half = Signal(unsigned(len(product)), name="product_half", reset_less=True)   # 2^(k−1) − 1: bit i is k ≥ i + 2
        rounded = Signal(unsigned(ops.MULTIPLIER_BITS + 1), reset_less=True)     # ≤ 2^15: the carry sets the top bit
        scale_rounding = Signal(unsigned(len(product) + 1), reset_less=True)
        rows_out = Signal.like(command.rows)
        m.d.comb += self.scales.payload.multiplier.eq(Mux(rounded[ops.MULTIPLIER_BITS], rounded >> 1, rounded))
        m.d.comb += self.scales.payload.shift.eq(
            command.out_shift + 32 - excess - rounded[ops.MULTIPLIER_BITS])
        multiplier = command.out_multiplier
        addend = Mux(quotient[1] & ~digit_half, Mux(quotient[0], triple_multiplier, multiplier << 1),
                     Mux(quotient[0], multiplier, 0))
        with m.If(digits):
            m.d.sync += product.eq(Mux(digit_half, product << 1, product << 2) + addend)
        with m.FSM(name="row_scale"):
            with m.State("IDLE"):
                m.d.comb += scale_free.eq(1)
                with m.If(row_done):
                    m.d.sync += total.eq(row_total)
                    m.next = "LENGTH"
            with m.State("LENGTH"):
                top = Signal(range(self.sum_width + 1), name="sum_top")
                m.d.comb += top.eq(bit_length(m, total, "sum_length") - 1)
                # 2^32 // S: the first quotient bit that can be 1 is 32 − top
                m.d.sync += [remainder.eq(Const(1, self.sum_width + 1) << top), quotient.eq(0), step.eq(32 - top),
                             triple.eq(times_constant(total, 3)), product.eq(0),
                             triple_multiplier.eq(times_constant(multiplier, 3))]
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                high, low, rest, _ = radix4_step(m, remainder, total, triple, "division")
                # an odd count of steps ends after the first half of a cycle
                ends_half = step == 0
                m.d.sync += [quotient.eq(Mux(ends_half, Cat(high, quotient), Cat(low, high, quotient))),
                             remainder.eq((rest << 1)[:len(remainder)]), step.eq(Mux(ends_half, 0, step - 2)),
                             digits.eq(1), digit_half.eq(ends_half)]
                with m.If(ends_half | (step == 1)):
                    m.next = "MULTIPLY"
            with m.State("MULTIPLY"):        # the last quotient bits into the product
                m.d.sync += digits.eq(0)
                m.next = "NORMALISE"
            with m.State("NORMALISE"):       # bitlen(product), and the rounding's half from the product itself
                length = bit_length(m, product, "product_length")      # (k ≥ i + 2 when a bit at i + 16 or above
                m.d.sync += [product_length.eq(length),                # is set)
                             half.eq(Cat(*(product[i + ops.MULTIPLIER_BITS + 1:].any() for i in range(len(half)))))]
                m.next = "EXCESS"
            with m.State("EXCESS"):          # k, from the registered length
                beyond = product_length - ops.MULTIPLIER_BITS
                m.d.sync += excess.eq(Mux(product_length > ops.MULTIPLIER_BITS, beyond, 0))
                m.next = "ROUND"
            with m.State("ROUND"):           # the rounding sum, then its shift
                m.d.sync += scale_rounding.eq(rounding_sum(product, excess, half))
                m.next = "SHIFT"
            with m.State("SHIFT"):
                m.d.sync += rounded.eq(shift_right(scale_rounding, excess, len(rounded)))
                m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += self.scales.valid.eq(1)
                with m.If(self.scales.ready):
                    m.d.sync += rows_out.eq(rows_out + 1)
                    with m.If(rows_out + 1 == command.rows):
                        m.d.sync += busy.eq(0)
                    m.next = "IDLE"
        return rows_out


def _maximum(values):
    """The largest of signed values, as a comparator tree (combinational)."""
    while len(values) > 1:
        pairs = [Mux(a > b, a, b) for a, b in zip(values[::2], values[1::2])]
        values = pairs + ([values[-1]] if len(values) % 2 else [])
    return values[0]
