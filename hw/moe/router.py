"""The router (docs/architecture.md, section 8): a task's gate logits, top-k, gate weights and the per-expert
token queues of one MoE layer, bit for bit `golden.ops.route` and `golden.model.expert_queues`.

Three stages work on three tokens at once, then one pass builds the queues:
1. **Logits**: `macs` multiply-accumulates per cycle as E' = min(E, macs) experts × d' = macs / E' dims;
   for each of ⌈E / E'⌉ expert groups the token's ⌈D / d'⌉ chunks stream past the group's weights, then the
   E' logits are written out one per cycle (the group's accumulators are then free). Cycles per token:
   ⌈E/E'⌉ · (⌈D/d'⌉ + E' + 3).
2. **Exponentials and top-k**: one logit per cycle, ascending expert index: a k-deep insertion sorter with
   strictly-greater comparisons (equal logits keep the lower index), e = 2^30·exp(−(l_max − l)·s) from a
   256-entry table, the sum S over all E (`vmoe`) or, at the end, over the k winners (`noisy`). E + 7 cycles.
3. **Gate weights**: 2^62 // S by restoring division (33 quotient bits: S ≥ 2^30, the winner's own term),
   then g_j = round_shift(e_j · (2^62 // S), 47) for the k winners, the route out and its record kept.
   About k + 36 cycles.
4. After the layer's last token, **queues**: prefix sums of the per-expert counts (the ascending non-empty
   experts leave on `experts` meanwhile: the loader's schedule), then each token's k entries are placed at
   their expert's base + fill, so every queue lists tokens in ascending order. T · (k + 1) + E cycles.

Ports: `command` {layer, task, tokens} starts a layer; a task outside the model's tasks sets the sticky
`error` (cleared by the next good command) and routes nothing. `tokens`: ⌈D / d'⌉ beats of d' signed
`input_width`-bit values per token, dims past D zero. `weights_write`, `params_write`: the router weights
(word (layer, task, group, chunk), lane e'·d' + j holds W[chunk·d' + j, group·E' + e']) and the per-(layer,
task) exponent multiplier and shift, written before use (resident, from DRAM by the controller). `routes`: per
token its k experts (best first) and Q1.15 gate weights. `experts`: {expert, base, count} of each non-empty
expert. `queue_read`: {token, weight} at base + i. `busy` until the queues are complete.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from golden import ops
from golden.config import AcceleratorConfig, ModelConfig

from ..common.arith import index_bits, round_shift
__all__ = ["Router", "QUOTIENT_BITS"]

QUOTIENT_BITS = 33        # 2^62 // S with 2^30 ≤ S: at most 2^32
EXP_BITS = 31             # e ≤ 2^30


def _select(values, index):
    """values[index] of same-shaped signals, as a shift (an out-of-range index reads anything)."""
    shape = values[0].shape()
    selected = Cat(*values).word_select(index, shape.width)
    return selected.as_signed() if shape.signed else selected


class Router(wiring.Component):
    def __init__(self, *, embed_dim: int, experts: int, top_k: int, gate: str, tasks: int, layers: int,
                 max_tokens: int, macs: int = 128, input_width: int = 16):
        for name, value in (("embed_dim", embed_dim), ("experts", experts), ("top_k", top_k), ("tasks", tasks),
                            ("layers", layers), ("max_tokens", max_tokens), ("macs", macs)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Router {name} = {value!r}: must be a positive integer")
        if top_k > experts:
            raise ValueError(f"Router top_k = {top_k}: at most experts ({experts})")
        if gate not in ("vmoe", "noisy"):
            raise ValueError(f"Router gate = {gate!r}: must be 'vmoe' or 'noisy'")
        self.embed_dim, self.num_experts, self.top_k, self.gate = embed_dim, experts, top_k, gate
        self.tasks, self.layers, self.max_tokens = tasks, layers, max_tokens
        self.macs, self.input_width = macs, input_width
        self.group_experts = min(experts, macs)                     # E'
        self.lanes = macs // self.group_experts                     # d'
        self.groups = -(-experts // self.group_experts)
        self.chunks = -(-embed_dim // self.lanes)
        self.logit_width = input_width + 8 + max(0, embed_dim - 1).bit_length() + 1
        token, expert = unsigned(index_bits(max_tokens)), unsigned(index_bits(experts))
        weight = unsigned(ops.GATE_BITS + 1)
        self.weights_depth = layers * tasks * self.groups * self.chunks
        super().__init__({
            "command": In(stream.Signature(data.StructLayout({
                "layer": unsigned(index_bits(layers)), "task": unsigned(8),
                "tokens": unsigned(index_bits(max_tokens + 1))}))),
            "tokens": In(stream.Signature(data.ArrayLayout(signed(input_width), self.lanes))),
            "weights_write": Out(WritePort.Signature(addr_width=index_bits(self.weights_depth),
                                                    shape=data.ArrayLayout(signed(8), macs))),
            "params_write": Out(WritePort.Signature(addr_width=index_bits(layers * tasks), shape=data.StructLayout({
                "multiplier": unsigned(ops.MULTIPLIER_BITS + 1), "shift": unsigned(6)}))),
            "routes": Out(stream.Signature(data.StructLayout({
                "token": token, "experts": data.ArrayLayout(expert, top_k),
                "weights": data.ArrayLayout(weight, top_k)}))),
            "experts": Out(stream.Signature(data.StructLayout({
                "expert": expert, "base": unsigned(index_bits(max_tokens * top_k)),
                "count": unsigned(index_bits(max_tokens + 1))}))),
            "queue_read": Out(ReadPort.Signature(addr_width=index_bits(max_tokens * top_k),
                                                 shape=data.StructLayout({"token": token, "weight": weight}))),
            "busy": Out(1),
            "error": Out(1),
        })

    @classmethod
    def for_model(cls, model: ModelConfig, accel: AcceleratorConfig) -> "Router":
        return cls(embed_dim=model.embed_dim, experts=model.num_experts, top_k=model.top_k, gate=model.gate,
                   tasks=model.num_tasks, layers=len(model.moe_blocks), max_tokens=model.num_tokens,
                   macs=accel.router_macs_per_cycle, input_width=accel.residual_width)

    @property
    def cycles_per_token(self) -> int:
        """The slowest stage's cycles per token (the stages overlap across tokens)."""
        return max(self.groups * (self.chunks + self.group_experts + 3), self.num_experts + 7,
                   QUOTIENT_BITS + self.top_k + 3)

    def elaborate(self, platform):
        m = Module()
        E, k, Eg, lanes = self.num_experts, self.top_k, self.group_experts, self.lanes
        G, C = self.groups, self.chunks
        lw = self.logit_width
        layer = Signal.like(self.command.payload.layer)
        task = Signal.like(self.command.payload.task)
        token_count = Signal.like(self.command.payload.tokens)
        routing = Signal()          # a layer's tokens are being routed
        m.d.comb += self.busy.eq(routing)

        # --- Memories ----------------------------------------------------------------------------------------
        m.submodules.weights = weights = Memory(shape=data.ArrayLayout(signed(8), self.macs),
                                                depth=self.weights_depth, init=[])
        wiring.connect(m, wiring.flipped(self.weights_write), weights.write_port())
        weights_read = weights.read_port()
        m.submodules.params = params = Memory(shape=self.params_write.data.shape(),
                                              depth=self.layers * self.tasks, init=[])
        wiring.connect(m, wiring.flipped(self.params_write), params.write_port())
        params_read = params.read_port()
        m.d.comb += params_read.addr.eq(layer * self.tasks + task)
        m.submodules.token_buffer = token_buffer = Memory(shape=self.tokens.payload.shape(), depth=2 * C, init=[])
        m.submodules.logits = logits = Memory(shape=signed(lw), depth=2 * E, init=[])
        route_record = data.StructLayout({"experts": self.routes.payload.experts.shape(),
                                          "weights": self.routes.payload.weights.shape()})
        m.submodules.records = records = Memory(shape=route_record, depth=self.max_tokens, init=[])
        m.submodules.queue = queue = Memory(shape=self.queue_read.data.shape(), depth=self.max_tokens * k,
                                            init=[])
        wiring.connect(m, wiring.flipped(self.queue_read), queue.read_port())

        # --- Commands ----------------------------------------------------------------------------------------
        m.d.comb += self.command.ready.eq(~routing)
        with m.If(self.command.valid & self.command.ready):
            payload = self.command.payload
            valid_task = payload.task < self.tasks
            m.d.sync += [self.error.eq(~valid_task), layer.eq(payload.layer), task.eq(payload.task),
                         token_count.eq(payload.tokens), routing.eq(valid_task & (payload.tokens != 0))]

        # --- Token capture into the double buffer ------------------------------------------------------------
        capture_half, capture_chunk = Signal(), Signal(range(max(C, 2)))
        filled = Signal(2)                   # halves holding a whole token
        captured = Signal.like(token_count)  # tokens taken in this layer
        capture = token_buffer.write_port()
        m.d.comb += [self.tokens.ready.eq(routing & ~filled.bit_select(capture_half, 1)
                                          & (captured != token_count)),
                     capture.addr.eq(capture_half * C + capture_chunk), capture.data.eq(self.tokens.payload),
                     capture.en.eq(self.tokens.valid & self.tokens.ready)]
        token_filled = Signal(2)
        with m.If(capture.en):
            last_chunk = capture_chunk == C - 1
            m.d.sync += capture_chunk.eq(Mux(last_chunk, 0, capture_chunk + 1))
            with m.If(last_chunk):
                m.d.sync += [capture_half.eq(~capture_half), captured.eq(captured + 1)]
                m.d.comb += token_filled.eq(1 << capture_half)

        # --- Stage 1: logits ---------------------------------------------------------------------------------
        # (counters of at least one bit: a 0-bit signal becomes an empty range in the Verilog)
        mac_half, mac_group, mac_chunk = Signal(), Signal(range(max(G, 2))), Signal(range(max(C, 2)))
        issuing, writing = Signal(), Signal()
        write_index = Signal(range(Eg + 1))
        settle = Signal(range(4))
        logits_full = Signal(2)            # logits halves holding a token's E logits (and its l_max)
        logits_half = Signal()             # the half stage 1 writes next
        l_max = Array(Signal(signed(lw), name=f"l_max{h}") for h in range(2))
        token_done = Signal(2)             # halves of the token buffer released this cycle
        logits_done = Signal(2)            # logits halves completed this cycle
        token_buffer_read = token_buffer.read_port()
        mac_busy = Signal()
        m.d.comb += [token_buffer_read.addr.eq(mac_half * C + mac_chunk),
                     weights_read.addr.eq(((layer * self.tasks + task) * G + mac_group) * C + mac_chunk)]
        start_mac = ~mac_busy & filled.bit_select(mac_half, 1) & ~logits_full.bit_select(logits_half, 1)
        with m.If(start_mac):
            m.d.sync += [mac_busy.eq(1), issuing.eq(1), mac_group.eq(0), mac_chunk.eq(0)]
        # chunk (g, c) is read in one cycle, multiplied in the next, summed per expert, then accumulated
        read_valid, read_first, read_last = Signal(), Signal(), Signal()
        m.d.sync += [read_valid.eq(issuing), read_first.eq(mac_chunk == 0), read_last.eq(mac_chunk == C - 1)]
        products = [[Signal(signed(self.input_width + 8), name=f"product{e}_{j}") for j in range(lanes)]
                    for e in range(Eg)]
        sums = [Signal(signed(self.input_width + 8 + lanes.bit_length()), name=f"sum{e}") for e in range(Eg)]
        accumulators = [Signal(signed(lw), name=f"acc{e}") for e in range(Eg)]
        product_valid, product_first, sum_valid, sum_first = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [product_valid.eq(read_valid), product_first.eq(read_first),
                     sum_valid.eq(product_valid), sum_first.eq(product_first)]
        for e in range(Eg):
            for j in range(lanes):
                m.d.sync += products[e][j].eq(token_buffer_read.data[j] * weights_read.data[e * lanes + j])
            m.d.sync += sums[e].eq(sum(products[e]))
            with m.If(sum_valid):
                m.d.sync += accumulators[e].eq(Mux(sum_first, 0, accumulators[e]) + sums[e])
        with m.If(issuing):
            m.d.sync += mac_chunk.eq(Mux(mac_chunk == C - 1, 0, mac_chunk + 1))
            with m.If(mac_chunk == C - 1):
                m.d.sync += [issuing.eq(0), settle.eq(3)]
        with m.If(settle != 0):
            m.d.sync += settle.eq(settle - 1)
            with m.If(settle == 1):
                m.d.sync += [writing.eq(1), write_index.eq(0)]
        expert_written = mac_group * Eg + write_index
        logit_write = logits.write_port()
        current = _select(accumulators, write_index)
        m.d.comb += [logit_write.addr.eq(logits_half * E + expert_written), logit_write.data.eq(current),
                     logit_write.en.eq(writing & (write_index < Eg) & (expert_written < E))]
        with m.If(logit_write.en & ((expert_written == 0) | (current > l_max[logits_half]))):
            for half in range(2):
                with m.If(logits_half == half):
                    m.d.sync += l_max[half].eq(current)
        with m.If(writing):
            m.d.sync += write_index.eq(write_index + 1)
            with m.If(write_index == Eg - 1):
                m.d.sync += writing.eq(0)
                with m.If(mac_group == G - 1):
                    m.d.sync += [mac_busy.eq(0), mac_half.eq(~mac_half), logits_half.eq(~logits_half)]
                    m.d.comb += [token_done.eq(1 << mac_half), logits_done.eq(1 << logits_half)]
                with m.Else():
                    m.d.sync += [mac_group.eq(mac_group + 1), issuing.eq(1)]
        m.d.sync += filled.eq((filled | token_filled) & ~token_done)

        # --- Stage 2: exponentials, the sum and the top k ----------------------------------------------------
        exp_half = Signal()
        exp_busy, exp_issue = Signal(), Signal()
        exp_index = Signal(range(max(E, 2)))
        exp_released = Signal(2)
        winners_ready = Signal()             # stage 2's result waits for stage 3
        logit_read = logits.read_port()
        m.d.comb += logit_read.addr.eq(exp_half * E + exp_index)
        start_exp = ~exp_busy & logits_full.bit_select(exp_half, 1) & ~winners_ready
        multiplier, shift = params_read.data.multiplier, params_read.data.shift
        with m.If(start_exp):
            m.d.sync += [exp_busy.eq(1), exp_issue.eq(1), exp_index.eq(0)]
        with m.If(exp_issue):
            m.d.sync += exp_index.eq(exp_index + 1)
            with m.If(exp_index == E - 1):
                m.d.sync += exp_issue.eq(0)
        # pipeline: read → d·multiplier → u → table, whole → e → sort and sum
        stage = data.StructLayout({"valid": 1, "last": 1, "expert": unsigned(index_bits(E)), "logit": signed(lw)})
        p = [Signal(stage, name=f"exp_stage{i}") for i in range(6)]
        m.d.sync += [p[0].valid.eq(exp_issue), p[0].last.eq(exp_index == E - 1), p[0].expert.eq(exp_index)]
        m.d.sync += [p[1].valid.eq(p[0].valid), p[1].last.eq(p[0].last), p[1].expert.eq(p[0].expert),
                     p[1].logit.eq(logit_read.data)]
        for i in range(2, 6):
            m.d.sync += p[i].eq(p[i - 1])
        distance = Signal(unsigned(lw))
        scaled = Signal(unsigned(lw + ops.MULTIPLIER_BITS + 1))
        exponent = Signal(unsigned(lw + ops.MULTIPLIER_BITS + 1))
        table_value = Signal(unsigned(EXP_BITS))
        whole = Signal(unsigned(lw + ops.MULTIPLIER_BITS + 1))
        e_value = Signal(unsigned(EXP_BITS))
        table = Array(Const(int(v), EXP_BITS) for v in ops.ROUTER_TABLE)
        m.d.comb += distance.eq(l_max[exp_half] - p[1].logit)
        m.d.sync += [scaled.eq(distance * multiplier),                                    # into p[2]
                     exponent.eq(round_shift(scaled, shift)),                            # into p[3]
                     table_value.eq(table[exponent[:ops.ROUTER_EXP_BITS]]),               # into p[4]
                     whole.eq(exponent >> ops.ROUTER_EXP_BITS),
                     e_value.eq(Mux(whole > 62, 0, round_shift(table_value, whole[:6])))]  # into p[5]
        total = Signal(unsigned(EXP_BITS + index_bits(E) + 1))
        top_logit = [Signal(signed(lw), name=f"top_logit{j}") for j in range(k)]
        top_expert = [Signal(unsigned(index_bits(E)), name=f"top_expert{j}") for j in range(k)]
        top_e = [Signal(unsigned(EXP_BITS), name=f"top_e{j}") for j in range(k)]
        filled_slots = Signal(range(k + 1))
        arriving = p[5]
        with m.If(arriving.valid):
            first = arriving.expert == 0
            m.d.sync += total.eq(Mux(first, 0, total) + e_value)
            # slot j takes the new entry if it beats slot j (or j is empty) and not slot j − 1; else the entry
            # of slot j − 1 if the new one beat that; else it keeps its own.
            beats = [first | (filled_slots <= j) | (arriving.logit > top_logit[j]) for j in range(k)]
            for j in range(k):
                previous_beaten = beats[j - 1] & ~(first & (j > 0)) if j else Const(0)
                with m.If(beats[j] & ~previous_beaten):
                    m.d.sync += [top_logit[j].eq(arriving.logit), top_expert[j].eq(arriving.expert),
                                 top_e[j].eq(e_value)]
                with m.Elif(previous_beaten & ~first):
                    m.d.sync += [top_logit[j].eq(top_logit[j - 1]), top_expert[j].eq(top_expert[j - 1]),
                                 top_e[j].eq(top_e[j - 1])]
            m.d.sync += filled_slots.eq(Mux(first, 1, Mux(filled_slots == k, k, filled_slots + 1)))
            with m.If(arriving.last):
                m.d.sync += [exp_busy.eq(0), exp_half.eq(~exp_half), winners_ready.eq(1)]
                m.d.comb += exp_released.eq(1 << exp_half)
        m.d.sync += logits_full.eq((logits_full | logits_done) & ~exp_released)

        # --- Stage 3: 2^62 // S and the gate weights ---------------------------------------------------------
        divisor = Signal.like(total)
        remainder = Signal(unsigned(EXP_BITS + index_bits(E) + 2))
        quotient = Signal(unsigned(QUOTIENT_BITS))
        step = Signal(range(QUOTIENT_BITS + 1))
        winners_expert = [Signal.like(top_expert[j], name=f"winner_expert{j}") for j in range(k)]
        winners_e = [Signal.like(top_e[j], name=f"winner_e{j}") for j in range(k)]
        gate_weights = [Signal(unsigned(ops.GATE_BITS + 1), name=f"gate_weight{j}") for j in range(k)]
        dividing, weighting, emitting = Signal(), Signal(), Signal()
        weight_index = Signal(range(k + 1))
        routed = Signal.like(token_count)
        with m.If(winners_ready & ~dividing & ~weighting & ~emitting):
            s_noisy = sum(top_e)
            m.d.sync += [winners_ready.eq(0), dividing.eq(1), step.eq(0), quotient.eq(0),
                         divisor.eq(s_noisy if self.gate == "noisy" else total),
                         # the dividend's bits above the quotient's: 2^62 >> 33 = 2^29 < S
                         remainder.eq(1 << (62 - QUOTIENT_BITS))]
            m.d.sync += [a.eq(b) for a, b in zip(winners_expert, top_expert)]
            m.d.sync += [a.eq(b) for a, b in zip(winners_e, top_e)]
        with m.If(dividing):
            trial = Signal.like(remainder)
            m.d.comb += trial.eq(remainder << 1)            # the dividend's remaining bits are 0
            fits = trial >= divisor
            m.d.sync += [remainder.eq(Mux(fits, trial - divisor, trial)), quotient.eq(Cat(fits, quotient)),
                         step.eq(step + 1)]
            with m.If(step == QUOTIENT_BITS - 1):
                m.d.sync += [dividing.eq(0), weighting.eq(1), weight_index.eq(0)]
        product = Signal(unsigned(EXP_BITS + QUOTIENT_BITS))
        with m.If(weighting):
            winner_e = _select(winners_e, weight_index)
            m.d.sync += weight_index.eq(weight_index + 1)
            m.d.sync += product.eq(winner_e * quotient)
            for j in range(k):
                with m.If(weight_index == j + 1):
                    m.d.sync += gate_weights[j].eq(round_shift(product, 62 - ops.GATE_BITS))
            with m.If(weight_index == k):
                m.d.sync += [weighting.eq(0), emitting.eq(1)]
        # the route out; its record kept for the queues; the chosen experts counted
        counts = [Signal(range(self.max_tokens + 1), name=f"count{e}") for e in range(E)]
        record_write = records.write_port()
        m.d.comb += [self.routes.valid.eq(emitting), self.routes.payload.token.eq(routed),
                     record_write.addr.eq(routed), record_write.en.eq(emitting & self.routes.ready)]
        for j in range(k):
            m.d.comb += [self.routes.payload.experts[j].eq(winners_expert[j]),
                         self.routes.payload.weights[j].eq(gate_weights[j]),
                         record_write.data.experts[j].eq(winners_expert[j]),
                         record_write.data.weights[j].eq(gate_weights[j])]
        counting = Signal()
        m.d.comb += counting.eq(emitting & self.routes.ready)
        with m.If(self.command.valid & self.command.ready):
            m.d.sync += [count.eq(0) for count in counts]
            m.d.sync += [routed.eq(0), captured.eq(0)]
        with m.If(counting):
            m.d.sync += [emitting.eq(0), routed.eq(routed + 1)]
        for e in range(E):
            chosen = Cat(winner == e for winner in winners_expert).any()
            with m.If(counting & chosen):
                m.d.sync += counts[e].eq(counts[e] + 1)

        # --- Queues: prefix sums (the non-empty experts leave meanwhile), then placement ---------------------
        summing, placing = Signal(), Signal()
        sum_index = Signal(range(E + 1))
        bases = [Signal(range(self.max_tokens * k + 1), name=f"base{e}") for e in range(E)]
        running = Signal(range(self.max_tokens * k + 1))
        with m.If(routing & ~summing & ~placing & (routed == token_count) & ~emitting & (token_count != 0)
                  & ~dividing & ~weighting):
            m.d.sync += [summing.eq(1), sum_index.eq(0), running.eq(0)]
        count_now = _select(counts, sum_index)
        m.d.comb += [self.experts.valid.eq(summing & (count_now != 0)), self.experts.payload.expert.eq(sum_index),
                     self.experts.payload.base.eq(running), self.experts.payload.count.eq(count_now)]
        with m.If(summing & ((count_now == 0) | self.experts.ready)):
            m.d.sync += [running.eq(running + count_now), sum_index.eq(sum_index + 1)]
            for e in range(E):
                with m.If(sum_index == e):
                    m.d.sync += bases[e].eq(running)
            with m.If(sum_index == E - 1):
                m.d.sync += [summing.eq(0), placing.eq(1)]
        place_token, place_slot = Signal.like(routed), Signal(range(k + 1))
        record_read = records.read_port()
        queue_write = queue.write_port()
        fill = [Signal(range(self.max_tokens + 1), name=f"fill{e}") for e in range(E)]
        m.d.comb += record_read.addr.eq(place_token)
        with m.If(summing):
            m.d.sync += [place_token.eq(0), place_slot.eq(0)]
            m.d.sync += [f.eq(0) for f in fill]
        # slot 0's cycle reads the record; slots 1 … k write its entries (record data holds meanwhile)
        with m.If(placing):
            entry = (place_slot - 1).as_unsigned()
            expert_id = record_read.data.experts[entry]
            writing_entry = place_slot != 0
            m.d.comb += [queue_write.addr.eq(_select(bases, expert_id) + _select(fill, expert_id)),
                         queue_write.data.token.eq(place_token), queue_write.data.weight.eq(
                             record_read.data.weights[entry]),
                         queue_write.en.eq(writing_entry)]
            m.d.comb += record_read.en.eq(place_slot == 0)
            for e in range(E):
                with m.If(writing_entry & (expert_id == e)):
                    m.d.sync += fill[e].eq(fill[e] + 1)
            m.d.sync += place_slot.eq(Mux(place_slot == k, 0, place_slot + 1))
            with m.If(place_slot == k):
                m.d.sync += place_token.eq(place_token + 1)
                with m.If(place_token == token_count - 1):
                    m.d.sync += [placing.eq(0), routing.eq(0)]
        return m
