"""The router (docs/architecture.md, section 8): a task's gate logits, top-k, gate weights and the per-expert
token queues of one MoE layer, bit for bit `golden.ops.route` and `golden.model.expert_queues`.

Three stages work on three tokens at once, then one pass builds the queues:
1. **Logits** (`LogitUnit`): `macs` multiply-accumulates per cycle as E' = min(E, macs) experts × d' = macs / E'
   dims. Cycles per token: ⌈E/E'⌉ · (⌈D/d'⌉ + E' + 4).
2. **Exponentials and top-k** (`ExponentTopK`): one logit per cycle, a k-deep insertion sorter, the sum S over
   all E (`vmoe`) or, in the next stage, over the k winners (`noisy`). E + 13 cycles.
3. **Gate weights** (`GateWeights`): 2^62 // S by restoring division, each quotient bit shifted and added into
   the k gate weights' products as it is found (no multiplier); the route out and its record kept. 37 cycles.
4. After the layer's last token, **queues** (`QueueBuilder`): prefix sums of the per-expert counts (the
   ascending non-empty experts leave on `experts` meanwhile: the loader's schedule), then each token's k
   entries placed so every queue lists tokens in ascending order. T · (k + 1) + E cycles.

Ports: `command` {layer, task, tokens} starts a layer (taken when not `busy`); a task outside the model's
tasks sets the sticky `error` (cleared by the next good command) and routes nothing. `tokens`: ⌈D / d'⌉ beats
of d' signed `input_width`-bit values per token, dims past D zero. `weights_write`, `params_write`: the router
weights (word (layer, task, group, chunk), lane e'·d' + j holds W[chunk·d' + j, group·E' + e']) and the
per-(layer, task) exponent multiplier and shift, written before use (from DRAM by the controller). `layers` are
the weight sets held at once: every MoE layer's, or two (`AcceleratorConfig.router_layers_held`), a command's
`layer` naming the set.
`routes`: per token its k experts (best first) and Q1.15 gate weights. `experts`: {expert, base, count} of
each non-empty expert. `queue_read`: {token, weight} at base + i (data a cycle after the address). `busy`
until the queues are complete.
"""

from __future__ import annotations

import numpy as np
from amaranth import Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out, flipped

from golden.config import AcceleratorConfig, ModelConfig

from ...common.arith import address_bits, times_constant
from .gates import GateWeights
from .geometry import RouterGeometry
from .logits import SETTLE, LogitUnit
from .queues import QueueBuilder
from .topk import ExponentTopK

__all__ = ["Router"]


class Router(wiring.Component):
    def __init__(self, *, embed_dim: int, experts: int, top_k: int, gate: str, tasks: int, layers: int,
                 max_tokens: int, macs: int = 128, input_width: int = 16):
        self.geometry = g = RouterGeometry(embed_dim, experts, top_k, gate, tasks, layers, max_tokens, macs,
                                           input_width)
        self.embed_dim, self.num_experts, self.top_k, self.gate = embed_dim, experts, top_k, gate
        self.tasks, self.layers, self.max_tokens = tasks, layers, max_tokens
        self.macs, self.input_width = macs, input_width
        self.group_experts, self.lanes, self.groups, self.chunks = g.group_experts, g.lanes, g.groups, g.chunks
        self.logit_width, self.weights_depth = g.logit_width, g.weights_depth
        super().__init__({
            "command": In(stream.Signature(g.command)),
            "tokens": In(stream.Signature(g.token_beat)),
            "weights_write": Out(WritePort.Signature(addr_width=address_bits(g.weights_depth), shape=g.weight_word)),
            "params_write": Out(WritePort.Signature(addr_width=address_bits(layers * tasks), shape=g.exponent_params)),
            "routes": Out(stream.Signature(g.route)),
            "experts": Out(stream.Signature(g.expert_entry)),
            "queue_read": Out(ReadPort.Signature(addr_width=address_bits(g.queue_depth), shape=g.queue_entry)),
            "busy": Out(1),
            "error": Out(1),
        })

    @classmethod
    def for_model(cls, model: ModelConfig, accel: AcceleratorConfig) -> "Router":
        return cls(embed_dim=model.embed_dim, experts=model.num_experts, top_k=model.top_k, gate=model.gate,
                   tasks=model.num_tasks, layers=accel.router_layers_held(model), max_tokens=model.num_tokens,
                   macs=accel.router_macs_per_cycle, input_width=accel.residual_width)

    @property
    def cycles_per_token(self) -> int:
        """The slowest stage's cycles per token (the stages overlap across tokens)."""
        return max(self.groups * (self.chunks + self.group_experts + SETTLE),
                   self.num_experts + ExponentTopK.LATENCY - 1, GateWeights.CYCLES_PER_TOKEN)

    @staticmethod
    def model(tokens, weights, multiplier: int, shift: int, top_k: int, gate: str):
        """A layer, stage by stage (each stage's `model`): tokens [T, D] (int16) and the task's weights [D, E]
        (int8) → (expert ids [T, k] best first, Q1.15 gate weights [T, k], the non-empty experts [(expert, base,
        count)], the queue [(token, gate weight)]); `golden.ops.route` and `golden.model.expert_queues`."""
        ids, winners, total = ExponentTopK.model(LogitUnit.model(tokens, weights), top_k, multiplier, shift)
        gates = GateWeights.model(winners, total, gate)
        return (ids, gates, *QueueBuilder.model(ids, gates, np.shape(weights)[1]))

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        m.submodules.logit_unit = logit_unit = LogitUnit(g)
        m.submodules.top_k = top_k = ExponentTopK(g)
        m.submodules.gate_weights = gate_weights = GateWeights(g)
        m.submodules.queues = queues = QueueBuilder(g)

        # Commands
        routing, start = Signal(), Signal()          # a layer's tokens are being routed
        layer, task = Signal.like(self.command.payload.layer), Signal.like(self.command.payload.task)
        token_count = Signal.like(self.command.payload.tokens)
        payload = self.command.payload
        m.d.comb += [self.busy.eq(routing), self.command.ready.eq(~routing), start.eq(self.command.valid & ~routing)]
        with m.If(start):
            valid_task = payload.task < g.tasks
            m.d.sync += [self.error.eq(~valid_task), layer.eq(payload.layer), task.eq(payload.task),
                         token_count.eq(payload.tokens), routing.eq(valid_task & (payload.tokens != 0))]
        with m.If(queues.done):
            m.d.sync += routing.eq(0)

        # Resident memories: the router weights and each (layer, task)'s exponent parameters
        m.submodules.weights = weights = Memory(shape=g.weight_word, depth=g.weights_depth, init=[])
        wiring.connect(m, flipped(self.weights_write), weights.write_port())
        wiring.connect(m, weights.read_port(), logit_unit.weights_read)
        m.submodules.params = params = Memory(shape=g.exponent_params, depth=g.layers * g.tasks, init=[])
        wiring.connect(m, flipped(self.params_write), params.write_port())
        params_read = params.read_port()
        m.d.comb += [params_read.addr.eq(times_constant(layer, g.tasks) + task), top_k.params.eq(params_read.data)]

        # Logits, double-buffered between stages 1 and 2
        m.submodules.logits = logits = Memory(shape=signed(g.logit_width), depth=2 * g.experts, init=[])
        wiring.connect(m, logit_unit.logit_write, logits.write_port())
        wiring.connect(m, logits.read_port(), top_k.logit_read)
        logits_full = Signal(2)            # halves holding a token's E logits (and its l_max)
        m.d.sync += logits_full.eq((logits_full | logit_unit.done) & ~top_k.released)
        m.d.comb += [logit_unit.start.eq(start), logit_unit.command.eq(payload), logit_unit.routing.eq(routing),
                     logit_unit.full.eq(logits_full), top_k.full.eq(logits_full), top_k.l_max.eq(logit_unit.l_max)]
        wiring.connect(m, flipped(self.tokens), logit_unit.tokens)

        # Winners to the gate weights, routes out, records to the queues
        wiring.connect(m, top_k.winners, gate_weights.winners)
        wiring.connect(m, gate_weights.routes, flipped(self.routes))
        m.submodules.records = records = Memory(shape=g.record, depth=g.max_tokens, init=[])
        wiring.connect(m, gate_weights.record_write, records.write_port())
        wiring.connect(m, records.read_port(), queues.record_read)
        m.submodules.queue = queue = Memory(shape=g.queue_entry, depth=g.queue_depth, init=[])
        wiring.connect(m, queues.queue_write, queue.write_port())
        wiring.connect(m, flipped(self.queue_read), queue.read_port())
        m.d.comb += [gate_weights.start.eq(start), queues.start.eq(start), queues.routing.eq(routing),
                     queues.token_count.eq(token_count), queues.routed.eq(gate_weights.routed),
                     queues.gates_idle.eq(gate_weights.idle), queues.taken.eq(gate_weights.taken),
                     queues.route_experts.eq(gate_weights.routes.payload.experts)]
        wiring.connect(m, queues.experts, flipped(self.experts))
        return m
