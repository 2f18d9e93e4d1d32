"""The router's third stage: 2^62 // S and the k gate weights, the route out and its record kept."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out

from golden import ops

from ...common.arith import address_bits, index_bits, round_shift
from .geometry import EXP_BITS, QUOTIENT_BITS, RouterGeometry

__all__ = ["GateWeights"]


class GateWeights(wiring.Component):
    """Gate weights g_j = round_shift(e_j · (2^62 // S), 47) of a token's k winners, S the sum of all E
    exponentials (`vmoe`) or of the k winners' (`noisy`).

    A token's `winners` are taken when the stage is idle; 2^62 // S by restoring division (33 quotient bits:
    S ≥ 2^30, the winner's own term). No multiplier: each quotient bit, a cycle after it is found, is added into
    the k products e_j · quotient (shift and add, most significant bit first), so the products are complete a
    cycle after the division and rounded the cycle after that. The route then leaves on `routes` (a stream:
    {token, experts best first, weights}, held until taken) and, as it is taken, its record is written at the
    token's index (`record_write`) and `taken` pulses. Tokens are numbered from 0 at `start`; `routed`
    counts the routes taken. 37 cycles per token (`CYCLES_PER_TOKEN`, taken back to back); `idle` when no
    token is inside.
    """

    model = staticmethod(ops.gate_weights)      # (winners' e, S over all E, gate) → Q1.15 gate weights
    CYCLES_PER_TOKEN = 1 + QUOTIENT_BITS + 3    # taken, divided, last bit added, rounded, emitted

    def __init__(self, geometry: RouterGeometry):
        self.geometry = g = geometry
        super().__init__({
            "start": In(1),
            "winners": In(stream.Signature(g.winners)),
            "routes": Out(stream.Signature(g.route)),
            "record_write": In(WritePort.Signature(addr_width=address_bits(g.max_tokens), shape=g.record)),
            "taken": Out(1),
            "routed": Out(range(g.max_tokens + 1)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        k = g.top_k
        winners = self.winners.payload
        # (the division's and the products' registers are data, valid with the flags below: not reset)
        divisor = Signal.like(winners.total, reset_less=True)
        remainder = Signal(unsigned(EXP_BITS + index_bits(g.experts) + 2), reset_less=True)
        quotient = Signal(unsigned(QUOTIENT_BITS), reset_less=True)
        step = Signal(range(QUOTIENT_BITS + 1), reset_less=True)
        winners_expert = [Signal(g.expert, name=f"winner_expert{j}", reset_less=True) for j in range(k)]
        winners_e = [Signal(unsigned(EXP_BITS), name=f"winner_e{j}", reset_less=True) for j in range(k)]
        # e_j · (2^62 // S) ≤ 2^62, as e_j ≤ S; every prefix of the quotient gives a smaller product
        products = [Signal(unsigned(63), name=f"product{j}", reset_less=True) for j in range(k)]
        gate_weights = [Signal(g.weight, name=f"gate_weight{j}", reset_less=True) for j in range(k)]
        dividing, adding_last, rounding, emitting = Signal(), Signal(), Signal(), Signal()
        routed = self.routed
        m.d.comb += [self.idle.eq(~dividing & ~adding_last & ~rounding & ~emitting),
                     self.winners.ready.eq(self.idle)]
        # while idle the division's registers follow the winners offered, taken or not (nothing reads them then), so
        # the winners' valid reaches `dividing` alone
        with m.If(self.idle):
            s_noisy = sum(winners.e[j] for j in range(k))
            m.d.sync += [step.eq(0), quotient.eq(0), divisor.eq(s_noisy if g.gate == "noisy" else winners.total),
                         # the dividend's bits above the quotient's: 2^62 >> 33 = 2^29 < S
                         remainder.eq(1 << (62 - QUOTIENT_BITS))]
            m.d.sync += [winners_expert[j].eq(winners.experts[j]) for j in range(k)]
            m.d.sync += [winners_e[j].eq(winners.e[j]) for j in range(k)]
            with m.If(self.winners.valid):
                m.d.sync += dividing.eq(1)
        with m.If(dividing):
            trial = Signal.like(remainder)
            m.d.comb += trial.eq(remainder << 1)            # the dividend's remaining bits are 0
            fits = trial >= divisor
            m.d.sync += [remainder.eq(Mux(fits, trial - divisor, trial)), quotient.eq(Cat(fits, quotient)),
                         step.eq(step + 1)]
            with m.If(step == QUOTIENT_BITS - 1):
                m.d.sync += [dividing.eq(0), adding_last.eq(1)]
        # the bit found the cycle before (0 at the first step) added while dividing and adding the last, 0 after
        # (rounding reads them in its cycle): no enable, and the choice by two registers alone
        m.d.sync += [products[j].eq(Mux(dividing | adding_last, (products[j] << 1) + Mux(quotient[0], winners_e[j], 0),
                                        0)) for j in range(k)]
        with m.If(adding_last):
            m.d.sync += [adding_last.eq(0), rounding.eq(1)]
        with m.If(rounding):
            m.d.sync += [gate_weights[j].eq(round_shift(products[j], 62 - ops.GATE_BITS)) for j in range(k)]
            m.d.sync += [rounding.eq(0), emitting.eq(1)]

        routes, record = self.routes, self.record_write
        m.d.comb += [routes.valid.eq(emitting), routes.payload.token.eq(routed), self.taken.eq(emitting & routes.ready),
                     record.addr.eq(routed), record.en.eq(self.taken)]
        for j in range(k):
            m.d.comb += [routes.payload.experts[j].eq(winners_expert[j]), routes.payload.weights[j].eq(gate_weights[j]),
                         record.data.experts[j].eq(winners_expert[j]), record.data.weights[j].eq(gate_weights[j])]
        with m.If(self.taken):
            m.d.sync += [emitting.eq(0), routed.eq(routed + 1)]
        with m.If(self.start):
            m.d.sync += routed.eq(0)
        return m
