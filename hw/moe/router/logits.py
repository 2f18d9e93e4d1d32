"""The router's first stage: tokens captured into a double buffer, their gate logits on `macs` multipliers."""

from __future__ import annotations

import numpy as np
from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from golden import ops

from ...common.arith import address_bits, times_constant
from .geometry import RouterGeometry

__all__ = ["LogitUnit"]

SETTLE = 4      # cycles from a group's last chunk read to its first logit written: operands, product, sum, accumulator


class LogitUnit(wiring.Component):
    """Logits l = x · W of the task's router for each token of a layer, E' = min(E, macs) experts × d' =
    macs / E' dims per cycle.

    `tokens` (stream, taken while `routing`): ⌈D / d'⌉ beats per token, into a two-token buffer, up to the
    command's token count. For each of ⌈E / E'⌉ expert groups the token's beats meet the group's weight words
    (`weights_read`, word ((layer·tasks + task)·G + group)·C + chunk, data a cycle later), are multiplied and
    summed per expert, then the E' logits are written one per cycle into half h of the logits memory
    (`logit_write`, address h·E + expert) while a register keeps their maximum (the first expert's logit, then
    any strictly greater), copied into `l_max[h]` the cycle after `done` (valid from the second cycle after it,
    and held until the half's next token is done). Cycles per token: ⌈E/E'⌉ · (⌈D/d'⌉ + E' + 4): a chunk's words
    are registered as they leave the memories (the weights' block RAMs and the multiplexer of their blocks), then
    multiplied (the multipliers' inputs from registers), summed and accumulated.

    Double buffer with the next stage: a token starts only into a half whose `full` bit is clear; `done`
    pulses the half's bit when its E logits are written. `command` (layer, task, tokens) is read in the cycle
    `start` is set.
    """

    @staticmethod
    def model(tokens, weights):
        """The logits [T, E] of tokens [T, D] (int16) and the task's weights [D, E] (int8), exactly."""
        return ops.exact_matmul(np.asarray(tokens, np.int16), np.asarray(weights, np.int8))

    def __init__(self, geometry: RouterGeometry):
        self.geometry = g = geometry
        super().__init__({
            "start": In(1),
            "command": In(g.command),
            "routing": In(1),
            "tokens": In(stream.Signature(g.token_beat)),
            "weights_read": In(ReadPort.Signature(addr_width=address_bits(g.weights_depth), shape=g.weight_word)),
            "logit_write": In(WritePort.Signature(addr_width=address_bits(2 * g.experts), shape=signed(g.logit_width))),
            "l_max": Out(data.ArrayLayout(signed(g.logit_width), 2)),
            "full": In(2),
            "done": Out(2),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        E, Eg, lanes, G, C = g.experts, g.group_experts, g.lanes, g.groups, g.chunks
        layer, task = Signal.like(self.command.layer), Signal.like(self.command.task)
        token_count = Signal.like(self.command.tokens)

        # Token capture into the double buffer
        m.submodules.token_buffer = token_buffer = Memory(shape=g.token_beat, depth=2 * C, init=[])
        capture_half, capture_chunk = Signal(), Signal(range(max(C, 2)))
        filled = Signal(2)                   # halves holding a whole token
        captured = Signal.like(token_count)  # tokens taken in this layer
        capture = token_buffer.write_port()
        m.d.comb += [self.tokens.ready.eq(self.routing & ~filled.bit_select(capture_half, 1)
                                          & (captured != token_count)),
                     capture.addr.eq(times_constant(capture_half, C) + capture_chunk),
                     capture.data.eq(self.tokens.payload),
                     capture.en.eq(self.tokens.valid & self.tokens.ready)]
        token_filled = Signal(2)
        with m.If(capture.en):
            last_chunk = capture_chunk == C - 1
            m.d.sync += capture_chunk.eq(Mux(last_chunk, 0, capture_chunk + 1))
            with m.If(last_chunk):
                m.d.sync += [capture_half.eq(~capture_half), captured.eq(captured + 1)]
                m.d.comb += token_filled.eq(1 << capture_half)

        # The multiply-accumulates (counters of at least one bit: a 0-bit signal becomes an empty range in the
        # Verilog)
        mac_half, mac_group, mac_chunk = Signal(), Signal(range(max(G, 2))), Signal(range(max(C, 2)))
        issuing, writing = Signal(), Signal()
        write_index = Signal(range(Eg + 1))
        settle = Signal(range(SETTLE + 1))
        logits_half = Signal()             # the half written next
        token_done = Signal(2)             # halves of the token buffer released this cycle
        token_read = token_buffer.read_port()
        weights_read = self.weights_read
        mac_busy = Signal()
        m.d.comb += [token_read.addr.eq(times_constant(mac_half, C) + mac_chunk),
                     weights_read.addr.eq(times_constant(times_constant(times_constant(layer, g.tasks) + task, G)
                                                         + mac_group, C) + mac_chunk),
                     weights_read.en.eq(1)]
        start_mac = ~mac_busy & filled.bit_select(mac_half, 1) & ~self.full.bit_select(logits_half, 1)
        with m.If(start_mac):
            m.d.sync += [mac_busy.eq(1), issuing.eq(1), mac_group.eq(0), mac_chunk.eq(0)]
        # chunk (g, c) is read in one cycle, its words registered in the next (`operands`), multiplied in the
        # next, summed per expert, then accumulated
        read_valid, read_first = Signal(), Signal()
        m.d.sync += [read_valid.eq(issuing), read_first.eq(mac_chunk == 0)]
        # (the operands, products, sums and accumulators are data, valid with `operand_valid`, `product_valid`,
        # `sum_valid` and `writing`: not reset)
        token_operands = Signal(g.token_beat, reset_less=True)
        weight_operands = Signal(g.weight_word, reset_less=True)
        m.d.sync += [token_operands.eq(token_read.data), weight_operands.eq(weights_read.data)]
        products = [[Signal(signed(g.input_width + 8), name=f"product{e}_{j}", reset_less=True) for j in range(lanes)]
                    for e in range(Eg)]
        sums = [Signal(signed(g.input_width + 8 + lanes.bit_length()), name=f"sum{e}", reset_less=True)
                for e in range(Eg)]
        accumulators = [Signal(signed(g.logit_width), name=f"acc{e}", reset_less=True) for e in range(Eg)]
        operand_valid, operand_first = Signal(), Signal()
        product_valid, product_first, sum_valid, sum_first = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [operand_valid.eq(read_valid), operand_first.eq(read_first),
                     product_valid.eq(operand_valid), product_first.eq(operand_first),
                     sum_valid.eq(product_valid), sum_first.eq(product_first)]
        for e in range(Eg):
            for j in range(lanes):
                m.d.sync += products[e][j].eq(token_operands[j] * weight_operands[e * lanes + j])
            m.d.sync += sums[e].eq(sum(products[e]))
            with m.If(sum_valid):
                m.d.sync += accumulators[e].eq(Mux(sum_first, 0, accumulators[e]) + sums[e])
            if e + 1 < Eg:
                with m.Elif(writing):        # the group's logits leave from accumulator 0, one a cycle
                    m.d.sync += accumulators[e].eq(accumulators[e + 1])
        with m.If(issuing):
            m.d.sync += mac_chunk.eq(Mux(mac_chunk == C - 1, 0, mac_chunk + 1))
            with m.If(mac_chunk == C - 1):
                m.d.sync += [issuing.eq(0), settle.eq(SETTLE)]
        with m.If(settle != 0):
            m.d.sync += settle.eq(settle - 1)
            with m.If(settle == 1):
                m.d.sync += [writing.eq(1), write_index.eq(0)]

        # The group's E' logits written out, one per cycle
        expert_written = times_constant(mac_group, Eg) + write_index
        current = accumulators[0]
        m.d.comb += [self.logit_write.addr.eq(times_constant(logits_half, E) + expert_written),
                     self.logit_write.data.eq(current),
                     self.logit_write.en.eq(writing & (write_index < Eg) & (expert_written < E))]
        # the token's running maximum (`first_logit` while none is written), into its half's l_max once done: no
        # choice of the half in the comparison's loop
        running, first_logit, copy = Signal(signed(g.logit_width), reset_less=True), Signal(), Signal(2)
        with m.If(start_mac):
            m.d.sync += first_logit.eq(1)
        with m.If(self.logit_write.en & (first_logit | (current > running))):
            m.d.sync += [running.eq(current), first_logit.eq(0)]
        m.d.sync += copy.eq(self.done)
        for half in range(2):
            with m.If(copy[half]):
                m.d.sync += self.l_max[half].eq(running)
        with m.If(writing):
            m.d.sync += write_index.eq(write_index + 1)
            with m.If(write_index == Eg - 1):
                m.d.sync += writing.eq(0)
                with m.If(mac_group == G - 1):
                    m.d.sync += [mac_busy.eq(0), mac_half.eq(~mac_half), logits_half.eq(~logits_half)]
                    m.d.comb += [token_done.eq(1 << mac_half), self.done.eq(1 << logits_half)]
                with m.Else():
                    m.d.sync += [mac_group.eq(mac_group + 1), issuing.eq(1)]
        m.d.sync += filled.eq((filled | token_filled) & ~token_done)

        with m.If(self.start):
            m.d.sync += [layer.eq(self.command.layer), task.eq(self.command.task),
                         token_count.eq(self.command.tokens), captured.eq(0)]
        return m
