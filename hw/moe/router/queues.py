"""The router's last stage: per-expert token queues built from the layer's routes."""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from golden.model import expert_queues

from ...common.arith import address_bits
from .geometry import RouterGeometry, select

__all__ = ["QueueBuilder"]


class QueueBuilder(wiring.Component):
    """Counts the routes as they are taken (`taken`, with their `route_experts`); after the layer's last route
    (`routed` = `token_count`, the gate stage `gates_idle`): prefix sums of the per-expert counts, each
    non-empty expert leaving on `experts` ({expert, base, count}, ascending; the loader's schedule) as its
    base is known, then each token's k entries placed at their expert's next slot (its base, then one on for each
    entry placed; a register an expert, so no add runs into the queue's write address) from the route records
    (`record_read`, data a cycle after the address) into the queue (`queue_write`: {token, weight}), so every
    queue lists its tokens in ascending order. T · (k + 1) + E cycles after the last route, plus any wait on
    `experts`; then `done` pulses. Counts clear at `start`.
    """

    @staticmethod
    def model(ids, gates, experts: int):
        """(the non-empty experts [(expert, base, count)] ascending, the queue [(token, gate weight)]) of a
        layer's routes: ids and Q1.15 gates [T, k], `golden.model.expert_queues` laid end to end."""
        queues = expert_queues(ids, experts)
        bases = np.concatenate([[0], np.cumsum(queues.counts)[:-1]])
        entries = [(int(e), int(bases[e]), int(queues.counts[e])) for e in queues.active]
        return entries, [(int(t), int(gates[t, s])) for t, s in zip(queues.tokens, queues.slots)]

    def __init__(self, geometry: RouterGeometry):
        self.geometry = g = geometry
        super().__init__({
            "start": In(1),
            "routing": In(1),
            "token_count": In(range(g.max_tokens + 1)),
            "routed": In(range(g.max_tokens + 1)),
            "gates_idle": In(1),
            "taken": In(1),
            "route_experts": In(data.ArrayLayout(g.expert, g.top_k)),
            "record_read": In(ReadPort.Signature(addr_width=address_bits(g.max_tokens), shape=g.record)),
            "queue_write": In(WritePort.Signature(addr_width=address_bits(g.queue_depth),
                                                   shape=g.queue_entry)),
            "experts": Out(stream.Signature(g.expert_entry)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        E, k = g.experts, g.top_k
        counts = [Signal(range(g.max_tokens + 1), name=f"count{e}") for e in range(E)]
        for e in range(E):
            chosen = Cat(*(winner == e for winner in self.route_experts)).any()
            with m.If(self.taken & chosen):
                m.d.sync += counts[e].eq(counts[e] + 1)
        with m.If(self.start):
            m.d.sync += [count.eq(0) for count in counts]

        # Prefix sums; the non-empty experts leave meanwhile
        summing, placing = Signal(), Signal()
        sum_index = Signal(range(E + 1))
        next_slots = [Signal(range(g.queue_depth + 1), name=f"next_slot{e}") for e in range(E)]
        running = Signal(range(g.queue_depth + 1))
        with m.If(self.routing & ~summing & ~placing & (self.routed == self.token_count) & self.gates_idle
                  & (self.token_count != 0)):
            m.d.sync += [summing.eq(1), sum_index.eq(0), running.eq(0)]
        count_now = select(counts, sum_index)
        experts = self.experts
        m.d.comb += [experts.valid.eq(summing & (count_now != 0)), experts.payload.expert.eq(sum_index),
                     experts.payload.base.eq(running), experts.payload.count.eq(count_now)]
        with m.If(summing & ((count_now == 0) | experts.ready)):
            m.d.sync += [running.eq(running + count_now), sum_index.eq(sum_index + 1)]
            for e in range(E):
                with m.If(sum_index == e):
                    m.d.sync += next_slots[e].eq(running)
            with m.If(sum_index == E - 1):
                m.d.sync += [summing.eq(0), placing.eq(1)]

        # Placement: slot 0's cycle reads the record; slots 1 … k write its entries (record data holds meanwhile)
        place_token, place_slot = Signal.like(self.routed), Signal(range(k + 1))
        record, queue = self.record_read, self.queue_write
        m.d.comb += record.addr.eq(place_token)
        with m.If(summing):
            m.d.sync += [place_token.eq(0), place_slot.eq(0)]
        with m.If(placing):
            entry = (place_slot - 1).as_unsigned()
            expert_id = record.data.experts[entry]
            writing_entry = place_slot != 0
            m.d.comb += [queue.addr.eq(select(next_slots, expert_id)),
                         queue.data.token.eq(place_token), queue.data.weight.eq(record.data.weights[entry]),
                         queue.en.eq(writing_entry), record.en.eq(place_slot == 0)]
            for e in range(E):
                with m.If(writing_entry & (expert_id == e)):
                    m.d.sync += next_slots[e].eq(next_slots[e] + 1)
            m.d.sync += place_slot.eq(Mux(place_slot == k, 0, place_slot + 1))
            with m.If(place_slot == k):
                m.d.sync += place_token.eq(place_token + 1)
                with m.If(place_token == self.token_count - 1):
                    m.d.sync += placing.eq(0)
                    m.d.comb += self.done.eq(1)
        return m
