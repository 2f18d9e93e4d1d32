"""The EXPERTS loop of the controller: a body of instructions repeated once per active expert of the last ROUTE."""

from __future__ import annotations

from amaranth import Module, Mux, ResetInserter, Signal, unsigned
from amaranth.hdl import Assert
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..common.arith import narrow_product
from .isa import INSTRUCTION_BITS

__all__ = ["ExpertsLoop"]


class ExpertsLoop(wiring.Component):
    """The active experts of the last ROUTE ({expert, base, count} from the router's `experts` stream, in its
    ascending order; up to `experts` of them, forgotten at `restart`) and the body of the EXPERTS loop.

    `enter` (with `body` ≥ 1, `stride` and the body's `first_pc`): if an expert is known (`expert_ready`), the
    loop starts its first pass on it (`active`), else it `skipping`s the body: the controller pops `body`
    instructions unissued, each with `dropped`. In the first pass the controller issues the body from its fetch
    buffer and each issued one (`issued`, its word on `fetched`: `width` bits, the instruction and what the
    controller decoded from it) is copied into the body buffer (`depth` instructions); after the body's last,
    the loop is `waiting` until the next expert is known (a cycle later a new pass: `jump` to `first_pc`, then
    `replay`, `instruction` the body's current word) or the router is done with none left (`no_more`: the loop
    ends). `expert`, `base`, `count`: the current pass's expert and its token queue; `offset`: `expert` ·
    `stride` (registered with the expert), what a per-expert LOAD adds to its address. While the loop is idle
    (neither `active` nor `skipping`) these four follow the queue's head, and `body`, `stride`, `first_pc` are
    taken every cycle: they only have to be the EXPERTS' own in the cycle of `enter`.
    """

    def __init__(self, entry: data.StructLayout, *, experts: int, depth: int, width: int = INSTRUCTION_BITS):
        self.entry, self.max_experts, self.depth, self.width = entry, experts, depth, width
        super().__init__({
            "experts": In(stream.Signature(entry)), "router_busy": In(1), "restart": In(1),
            "enter": In(1), "body": In(range(depth + 1)), "stride": In(32), "first_pc": In(32),
            "issued": In(1), "dropped": In(1), "fetched": In(width),
            "active": Out(1), "replay": Out(1), "waiting": Out(1), "skipping": Out(1),
            "expert_ready": Out(1), "no_more": Out(1), "instruction": Out(width),
            "jump": Out(1), "jump_pc": Out(32),
            "expert": Out(entry["expert"].shape), "base": Out(entry["base"].shape), "count": Out(entry["count"].shape),
            "offset": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        queue = SyncFIFO(width=data.Layout.cast(self.entry).size, depth=self.max_experts)
        m.submodules.active_experts = ResetInserter(self.restart)(queue)
        m.d.comb += [queue.w_data.eq(self.experts.payload), queue.w_en.eq(self.experts.valid),
                     self.experts.ready.eq(queue.w_rdy)]
        head = data.View(self.entry, queue.r_data)
        advance = Signal()
        m.d.comb += [self.expert_ready.eq(queue.r_rdy), self.no_more.eq(~queue.r_rdy & ~self.router_busy),
                     queue.r_en.eq(advance)]
        length, index = Signal.like(self.body), Signal.like(self.body)
        stride, first_pc = Signal(32), Signal(32)
        # While the loop is idle its registers follow the queue's head and the EXPERTS operands at the controller's
        # head, so that `enter` itself sets only the state: the issue decision drives two flip-flops and the
        # queue's pop, not the clock enables of every register here. A new pass (`jump`; `enter` comes only while
        # the loop is idle) loads the next expert, its offset from the EXPERTS' own stride, kept since it entered.
        idle = ~self.active & ~self.skipping
        # `last`: index = length − 1, a register beside the index (so no comparison feeds the enables it decides)
        last = Signal()
        with m.If(idle):
            m.d.sync += [length.eq(self.body), stride.eq(self.stride), first_pc.eq(self.first_pc), index.eq(0),
                         last.eq(self.body == 1), self.offset.eq(narrow_product(head.expert, self.stride))]
        with m.Elif(self.jump):
            m.d.sync += self.offset.eq(narrow_product(head.expert, stride))
        with m.If(idle | self.jump):
            m.d.sync += [self.expert.eq(head.expert), self.base.eq(head.base), self.count.eq(head.count)]
        m.d.comb += self.jump_pc.eq(first_pc)
        m.submodules.body = body = Memory(shape=unsigned(self.width), depth=self.depth, init=[])
        write, read = body.write_port(), body.read_port(domain="comb")
        # A replay's instruction leaves a register (`current`), loaded as the one before it issues, with the
        # body's next word read at index + 1 from registers alone, or the body's first (`first`, kept as it is
        # written) at a jump: no memory read between the issue decision and the word it decides on.
        current, first = Signal(self.width, reset_less=True), Signal(self.width, reset_less=True)
        m.d.comb += [read.addr.eq(index + 1), self.instruction.eq(current),
                     write.addr.eq(index), write.data.eq(self.fetched),
                     write.en.eq(self.issued & self.active & ~self.replay)]
        with m.If(write.en & (index == 0)):
            m.d.sync += first.eq(self.fetched)
        with m.If(self.jump):
            m.d.sync += current.eq(first)
        with m.Elif(self.issued & self.replay & ~last):
            m.d.sync += current.eq(read.data)
        # While the loop waits nothing enters, drops or issues (the controller's decision waits for it): the jump
        # comes from the queue's level alone, not from the decision.
        with m.If(self.waiting):
            m.d.sync += Assert(~self.enter & ~self.dropped & ~self.issued, "the loop waits, yet the controller moved")
        with m.If(self.enter):
            m.d.sync += Assert(idle, "EXPERTS entered a loop that is not idle")
        # The next pass starts a cycle after the waiting loop sees its expert: `jump` is a flip-flop, so the queue's
        # level reaches no enable of `current`, the pass's registers or the controller's pc.
        m.d.sync += self.jump.eq(self.waiting & queue.r_rdy & ~self.jump)
        m.d.comb += advance.eq((self.enter & queue.r_rdy) | self.jump)
        next_is_last = index + 2 == length
        with m.If(self.enter):
            m.d.sync += [self.active.eq(queue.r_rdy), self.skipping.eq(~queue.r_rdy)]
        with m.Elif(self.dropped):
            m.d.sync += [index.eq(index + 1), last.eq(next_is_last)]
            with m.If(last):
                m.d.sync += self.skipping.eq(0)
        with m.Elif(self.issued & self.active):
            m.d.sync += [index.eq(Mux(last, 0, index + 1)), last.eq(Mux(last, length == 1, next_is_last))]
            with m.If(last):
                m.d.sync += self.waiting.eq(1)
        with m.Elif(self.jump):
            m.d.sync += [self.waiting.eq(0), self.replay.eq(1)]
        with m.Elif(self.waiting & self.no_more):
            m.d.sync += [self.waiting.eq(0), self.replay.eq(0), self.active.eq(0)]
        return m
