"""The router's second stage: each logit's exponential, their sum, and the top k."""

from __future__ import annotations

from amaranth import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from golden import ops

from ...common.arith import (address_bits, half_minus_one, index_bits, kept_bit, rounding_sum, shift_right,
                             times_constant)
from ...common.multiplier import WideMultiplier
from ...common.pipeline import data_register, delay_line
from .geometry import EXP_BITS, RouterGeometry

__all__ = ["ExponentTopK"]


class ExponentTopK(wiring.Component):
    """For a token's E logits (half h of the logits memory, once `full[h]`): e = 2^30·exp(−(l_max − l)·s) from a
    256-entry table (`golden.ops.route_winners`, its `model`), their sum over all E, and the k largest logits by a
    k-deep insertion sorter with strictly-greater comparisons (equal logits keep the lower index).

    One logit per cycle in ascending expert order through `logit_read` (data a cycle after the address); the
    pipeline is read, d = l_max − l, d·multiplier (a `WideMultiplier`), the rounding sum, the shift, the table
    and the whole part, a register after the table's block RAM read, e, then the sorter: the token's `winners`
    (a stream: valid until taken; no new token starts meanwhile) are out E + `LATENCY` = E + 13 cycles after it
    starts. `released` pulses bit h when the half's last logit has been read. `params` (the layer's and task's
    exponent multiplier and shift) and `l_max` hold while a token passes.
    """

    model = staticmethod(ops.route_winners)     # (logits, k, multiplier, shift) → (ids, winners' e, S over all E)
    LATENCY = 9 + WideMultiplier.LATENCY

    def __init__(self, geometry: RouterGeometry):
        self.geometry = g = geometry
        super().__init__({
            "full": In(2),
            "released": Out(2),
            "l_max": In(data.ArrayLayout(signed(g.logit_width), 2)),
            "params": In(g.exponent_params),
            "logit_read": In(ReadPort.Signature(addr_width=address_bits(2 * g.experts),
                                                shape=signed(g.logit_width))),
            "winners": Out(stream.Signature(g.winners)),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        E, k, lw = g.experts, g.top_k, g.logit_width
        exp_half = Signal()
        exp_busy, exp_issue = Signal(), Signal()
        exp_index = Signal(range(max(E, 2)))
        winners_ready = self.winners.valid
        m.d.comb += [self.logit_read.addr.eq(times_constant(exp_half, E) + exp_index), self.logit_read.en.eq(1)]
        start_exp = ~exp_busy & self.full.bit_select(exp_half, 1) & ~winners_ready
        with m.If(start_exp):
            m.d.sync += [exp_busy.eq(1), exp_issue.eq(1), exp_index.eq(0)]
        with m.If(exp_issue):
            m.d.sync += exp_index.eq(exp_index + 1)
            with m.If(exp_index == E - 1):
                m.d.sync += exp_issue.eq(0)
        stage = data.StructLayout({"valid": 1, "last": 1, "expert": unsigned(index_bits(E)), "logit": signed(lw)})
        issued, read = Signal(stage, name="exp_issued"), Signal(stage, name="exp_read")
        m.d.sync += [issued.valid.eq(exp_issue), issued.last.eq(exp_index == E - 1), issued.expert.eq(exp_index)]
        m.d.sync += [read.valid.eq(issued.valid), read.last.eq(issued.last), read.expert.eq(issued.expert),
                     read.logit.eq(self.logit_read.data)]
        # read → distance → d·multiplier (`WideMultiplier`) → its rounding sum → u → table, whole → the table's
        # output register → e → sort and sum; the entry's fields and every value on the way are data, valid with
        # the entry's `valid` (its own delay line): not reset
        stages = delay_line(m, read, self.LATENCY - 3, "exp_stage", data=True)
        coming, arriving = stages[-2:]
        arriving_valid = delay_line(m, read.valid, self.LATENCY - 3, "exp_valid")[-1]
        distance = Signal(unsigned(lw), reset_less=True)
        m.submodules.exp_multiplier = exp_multiplier = WideMultiplier(unsigned(lw), self.params.multiplier.shape())
        scaled = exp_multiplier.p
        rounded = Signal(unsigned(len(scaled) + 1), reset_less=True)
        exponent = Signal(unsigned(lw + ops.MULTIPLIER_BITS + 1), reset_less=True)
        table_value, table_out = (Signal(unsigned(EXP_BITS), name=name, reset_less=True)
                                  for name in ("table_value", "table_out"))
        whole_shape = unsigned(lw + ops.MULTIPLIER_BITS + 1)
        whole, whole_out = Signal(whole_shape, reset_less=True), Signal(unsigned(6), reset_less=True)
        whole_half = Signal(unsigned(EXP_BITS + 1), reset_less=True)
        beyond, kept = Signal(reset_less=True), Signal(reset_less=True)
        e_value = Signal(unsigned(EXP_BITS), reset_less=True)
        table = Array(Const(int(v), EXP_BITS) for v in ops.ROUTER_TABLE)
        # 2^(shift − 1) − 1 of the held shift, from a register: the rounding shift is one adder, then a shifter
        half = Signal.like(scaled, name="exponent_half", reset_less=True)
        m.d.comb += [exp_multiplier.a.eq(distance), exp_multiplier.b.eq(self.params.multiplier)]
        m.d.sync += [distance.eq(self.l_max[exp_half] - read.logit),
                     half.eq(half_minus_one(self.params.shift, len(half))),
                     rounded.eq(rounding_sum(scaled, self.params.shift, half)),
                     exponent.eq(shift_right(rounded, self.params.shift, len(exponent))),
                     table_value.eq(table[exponent[:ops.ROUTER_EXP_BITS]]),
                     whole.eq(exponent >> ops.ROUTER_EXP_BITS),
                     # e rounds the table's value (≤ 2^30) by the whole part: its half, the bit it keeps and its
                     # range (0 past 31 bits) registered beside the table's output, so that e is one adder and a
                     # shifter after the block RAM's register
                     table_out.eq(table_value), whole_out.eq(whole[:6]), beyond.eq(whole > 31),
                     whole_half.eq(half_minus_one(whole[:6], len(whole_half))),
                     kept.eq(kept_bit(table_value, whole[:6])),
                     e_value.eq(Mux(beyond, 0, shift_right(table_out + whole_half + kept, whole_out, EXP_BITS)))]

        # the winners' registers are not reset: `filled_slots` says which hold one, `winners.valid` when all do
        winners = data_register(m, self.winners.payload, "winners")
        top_logit = [Signal(signed(lw), name=f"top_logit{j}", reset_less=True) for j in range(k)]
        top_expert, top_e, total = winners.experts, winners.e, winners.total
        filled_slots = Signal(range(k + 1))
        # The comparisons of an entry with the slots are made a cycle ahead, while it is `coming`: with each slot
        # as it stands (`above_slot`) and with the entry before it (`above_entering`), which enters the slots in
        # that cycle; `took_entry` / `took_above` say what each slot took then, so that whether the entry beats
        # slot j is a choice among registers, not a comparison after the slots' registers.
        above_slot = [Signal(name=f"above_slot{j}") for j in range(k)]
        above_entering = Signal()
        took_entry = [Signal(name=f"took_entry{j}") for j in range(k)]
        took_above = [Signal(name=f"took_above{j}") for j in range(k)]
        m.d.sync += [above_entering.eq(coming.logit > arriving.logit)]
        m.d.sync += [above_slot[j].eq(coming.logit > top_logit[j]) for j in range(k)]
        m.d.sync += [flag.eq(0) for flag in took_entry + took_above]
        with m.If(arriving_valid):
            first = arriving.expert == 0
            m.d.sync += total.eq(Mux(first, 0, total) + e_value)
            # slot j takes the new entry if it beats slot j (or j is empty) and not slot j − 1; else the entry
            # of slot j − 1 if the new one beat that; else it keeps its own.
            above = [Mux(took_entry[j], above_entering, Mux(took_above[j], above_slot[j - 1] if j else 0,
                                                            above_slot[j])) for j in range(k)]
            beats = [first | (filled_slots <= j) | above[j] for j in range(k)]
            for j in range(k):
                previous_beaten = beats[j - 1] & ~(first & (j > 0)) if j else Const(0)
                with m.If(beats[j] & ~previous_beaten):
                    m.d.sync += [top_logit[j].eq(arriving.logit), top_expert[j].eq(arriving.expert),
                                 top_e[j].eq(e_value), took_entry[j].eq(1)]
                with m.Elif(previous_beaten & ~first):
                    m.d.sync += [top_logit[j].eq(top_logit[j - 1]), top_expert[j].eq(top_expert[j - 1]),
                                 top_e[j].eq(top_e[j - 1]), took_above[j].eq(1)]
            m.d.sync += filled_slots.eq(Mux(first, 1, Mux(filled_slots == k, k, filled_slots + 1)))
            with m.If(arriving.last):
                m.d.sync += [exp_busy.eq(0), exp_half.eq(~exp_half), winners_ready.eq(1)]
                m.d.comb += self.released.eq(1 << exp_half)
        with m.If(self.winners.valid & self.winners.ready):
            m.d.sync += winners_ready.eq(0)
        return m
