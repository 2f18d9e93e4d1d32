"""The controller: fetches the program from DRAM and issues its instructions in order, one every three cycles at
most (the issue stage, below), each once the unit it needs is free and the memories it names are safe (a
scoreboard).

Run: `start` (when not `busy`) pulses `clear` (the top level resets the units a cycle later), then instructions are
fetched from `program_addr` in chunks of `fetch_chunk` into a `fetch_depth`-instruction buffer (`ProgramFetch`).
A `program_addr` that is not bus-aligned ends the run at once with BAD_OPERAND (the fetch reads whole bus
words). The run ends with `done` (and `busy` low) after `HALT` once every unit is idle, or after the first
fault: its `cause` (`ErrorCause`) and `error_pc` (the index of the instruction at fault, or being issued when a
unit reported it) are kept until the next start. A fault stops issue; transfers in flight finish, so the
AXI4 ports are quiet when `done` rises, and nothing waits forever.

Issue rules (docs/architecture.md, section 11):
- `LOAD` to WEIGHTS: a descriptor to the loader (taken once the slab buffer `base / span` is empty); to
  ACTIVATION, SCRATCH, RESIDUAL or PARAMS: a command to the load path, once no unit in flight reads or writes
  that memory (PARAMS: that half; a LOAD into PARAMS lies in one half), and, from the OUTPUT region, until the
  store path is idle (what a STORE or UPSAMPLE wrote there has landed: the heads read their feature maps back).
  Addresses are offsets from the region registers; bus-aligned, whole words, inside the memory.
- `GEMM`: when the engine and its output path are idle, no unit in flight writes its source, its half of
  PARAMS (its N tiles' parameters lie in one half) or its destination or reads its destination (SCORES: its
  half; d_base + n_tiles·d_stride stays in it), and its slab buffer (`w_base / span`) is full; the buffer is taken
  with the command and released when the product is written, unless the GEMM `keep`s it for the next GEMM,
  which then uses it without a take (a next GEMM on another buffer releases it first). GELU's hidden
  requantization is HIDDEN's (the last `CONFIG_GELU`, or a LOAD into HIDDEN, which a GELU GEMM waits for).
  With `im2col` X is the band of the last `CONFIG_CONV` (a head's convolution); one that gathers, or a 3×3 one
  whose `k_tiles` is not 9 × the band's channel tiles, is BAD_OPERAND. One whose stationary operand is in SCRATCH
  also waits while a STORE or UPSAMPLE reads SCRATCH (they share a port, `TWO_PORTED`), and one that would also
  write SCRATCH is BAD_OPERAND.
- `LAYERNORM`: when the norm path is free, no unit in flight writes RESIDUAL or NORMS, and none reads or writes
  ACTIVATION; with ε and the shifts of the last `CONFIG_NORM`; rows inside the token count.
- `SOFTMAX`: when the softmax path is free, no unit in flight writes its half of SCORES, and none reads or
  writes ACTIVATION or ROW_SCALES; with the scales of the last `CONFIG_SOFTMAX`. A `row_scaled` GEMM waits while
  ROW_SCALES is written. A GEMM into SCORES waits only for units on its own half (`d_base`'s), so the next
  head's Q·Kᵀ runs beside a head's softmax.
- `ROUTE`: the router on the next LAYERNORM with `route`, with the task in TASK (outside the model: BAD_TASK) and
  MoE layer `layer`'s weights (past the model's MoE layers: BAD_OPERAND; the router's set `layer` mod 2 when it
  holds two layers, `router_layers_held`); when the router is idle, nothing reads or writes ROUTES and no LOAD
  into ROUTER or ROUTER_PARAMS is in flight. A LAYERNORM with `route` needs a ROUTE waiting for its rows (else
  BAD_OPERAND).
- `STORE`: once no unit in flight writes the memory and the store path is free (from SCRATCH: and no GEMM reads
  its stationary operand there); bus-aligned, a whole number of words and of bus words.
- `CONFIG_*`: the registers the instructions after it read (a GEMM takes CONFIG_GELU's and CONFIG_CONV's
  with its command, so a CONFIG after it changes only the GEMMs after that).
- `UPSAMPLE`: as STORE, on the store path (one output row of tiles × 2·width words); refused when it reads past
  its memory, is empty or is not a whole number of bus words, and from a memory other than ACTIVATION,
  SCRATCH (int8) or RESIDUAL (int16).
- `EXPERTS`: its body once per active expert of the last ROUTE (`ExpertsLoop`); a `per_expert` LOAD adds the
  expert's offset; a `gather` or COMBINE-mode GEMM runs on the expert's token list once the router is idle (a
  COMBINE GEMM's rows are added into RESIDUAL at their tokens' rows: it needs `residual`). Outside a body those
  are BAD_OPERAND, as a body longer than the body buffer is.
- `SYNC` waits until every unit is idle; `HALT` too, then ends the run.
The issue stage (`hw/control/stage.py`): the decision looks at the head of the cycle before, from a register, once
nothing moved it then; it loads registers only: the units' commands leave them a cycle later, when the controller
moves on (`issued`: the pop, the pc, the loop, a CONFIG, the scoreboard's records) and nothing issues. An
instruction takes three cycles at least; a refusal ends the run a cycle after it.

What an instruction's operands decide alone (a refusal, the halves of PARAMS and SCORES, a LOAD's, STORE's or
UPSAMPLE's DRAM address: its region register + its offset) is worked out as it enters the fetch buffer (`predecode`)
and kept beside it, in the EXPERTS body buffer too: the issue decision compares no operand, it combines those flags
with the units' state, and only a LOAD inside EXPERTS adds to an address there (the loop's offset). Cycles are the
same either way.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, Module, Mux, ResetInserter, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out

from ..common.arith import index_bits
from ..common.pipeline import kept_copies
from ..memory.loader import descriptor_layout
from ..memory.transfer import transfer_layout
from .datapath import LOADABLE, STORABLE
from .isa import INSTRUCTION_BITS, ErrorCause, InstructionSet, Opcode, Region, Space
from .fetch import ProgramFetch
from .gemm_issue import issue_gemm
from .predecode import PREDECODED, predecode, prepare, prepared_layout, reach, reached_layout
from .upsample_issue import issue_upsample
from .loop import ExpertsLoop
from .scoreboard import GEMM_TOUCHES, UNITS, Scoreboard
from .stage import issue_stage
from .memories import OnChip

__all__ = ["Controller"]


class Controller(wiring.Component):
    def __init__(self, isa: InstructionSet, spaces: dict[Space, OnChip], *, engine_command: data.StructLayout,
                 load_command: data.StructLayout, store_command: data.StructLayout, job: data.StructLayout,
                 norm_command: data.StructLayout, softmax_command: data.StructLayout, route_command: data.StructLayout,
                 expert_entry: data.StructLayout, tokens: int, tasks: int,
                 experts: int, buffers: int, buffer_span: int, bus_bytes: int, addr_width: int = 32,
                 fetch_depth: int = 8, fetch_chunk: int = 4):
        self.isa, self.spaces, self.engine_command, self.job = isa, spaces, engine_command, job
        self.norm_command, self.softmax_command, self.tokens = norm_command, softmax_command, tokens
        self.tasks, self.num_experts, self.expert_entry, self.body_depth = tasks, experts, expert_entry, isa.body_depth
        self.buffers, self.buffer_span, self.bus_bytes = buffers, buffer_span, bus_bytes
        self.addr_width = addr_width
        self.fetcher = ProgramFetch(bus_bytes=bus_bytes, addr_width=addr_width, depth=fetch_depth, chunk=fetch_chunk,
                                    prepared_bits=prepared_layout(isa).size, reached_bits=reached_layout(self).size,
                                    decoded_bits=PREDECODED.size)
        super().__init__({
            "start": In(1), "task": In(32), "program_addr": In(32), "model_addr": In(32), "image_addr": In(32),
            "output_addr": In(32),
            "busy": Out(1), "done": Out(1), "error": Out(1), "cause": Out(ErrorCause), "error_pc": Out(32),
            "clear": Out(1), "issued": Out(1),
            "fetch": Out(stream.Signature(transfer_layout(addr_width))),
            "program": In(stream.Signature(unsigned(8 * bus_bytes))),
            "fetch_idle": In(1), "fetch_error": In(1),
            "load": Out(stream.Signature(load_command)), "load_busy": In(1), "load_error": In(1),
            "descriptor": Out(stream.Signature(descriptor_layout(addr_width, buffers))),
            "loader_idle": In(1), "loader_error": In(1), "slab_full": In(buffers), "slab_accepts": In(buffers),
            "take": Out(stream.Signature(unsigned(index_bits(buffers)))),
            "release": Out(stream.Signature(unsigned(index_bits(buffers)))),
            "gemm": Out(stream.Signature(engine_command)), "gemm_active": In(1), "gemm_error": In(1),
            "gemm_touches": Out(GEMM_TOUCHES), "output_start": Out(1), "output_job": Out(job),
            "store": Out(stream.Signature(store_command)), "store_busy": In(1), "store_error": In(1),
            "norm": Out(stream.Signature(norm_command)), "norm_busy": In(1),
            "softmax": Out(stream.Signature(softmax_command)), "softmax_busy": In(1),
            "route": Out(stream.Signature(route_command)), "router_busy": In(1),
            "experts": In(stream.Signature(expert_entry)),
            "hidden_write": Out(WritePort.Signature(addr_width=1,
                                                    shape=unsigned(8 * spaces[Space.HIDDEN].word_bytes))),
        })

    def dram_address(self, m, decoded, name, extra=0):
        """The DRAM address of a LOAD, STORE or UPSAMPLE (`decoded.dram`, its region register + offset, + `extra`),
        and whether it is bus-aligned (from the terms' low bits alone: the wide sum goes to a command register, not
        into the decision)."""
        address = Signal(32, name=f"{name}_address")
        good = Signal(name=f"{name}_address_good")
        low = (self.bus_bytes - 1).bit_length()
        m.d.comb += [address.eq(decoded.dram + extra),
                     good.eq((decoded.dram[:low] + Value.cast(extra)[:low])[:low] == 0)]
        return address, good

    def half_of(self, space: Space, base, reach):
        """(the half of `space` (PARAMS, SCORES: kept per half by the scoreboard) word `base` is in, whether
        the words from it up to `reach` (the word after its last) reach into the other half)."""
        half_words = self.spaces[space].depth // 2
        return base >= half_words, (base < half_words) & (reach > half_words)

    def reach(self, operands, space: Space):
        """The word after the last of a LOAD's or STORE's `operands` in `space`: base + bytes in words."""
        return operands.base + (operands.bytes >> (self.spaces[space].word_bytes - 1).bit_length())

    def fits(self, operands, space: Space, multiple: int, reach):
        """`bytes` is a whole number of the memory's words and of `multiple`, and `reach` (`Controller.reach`) ≤
        depth."""
        memory = self.spaces[space]
        whole = max(memory.word_bytes, multiple)
        return (operands.bytes[:(whole - 1).bit_length()] == 0) & (reach <= memory.depth)

    def _issue(self, m, word, decoded, issue, retire, halt, fault, fault_cause, reading, writing, touched, hidden, slab,
               idle, present, norm_config, softmax_config, conv_config, loop, front):
        """Issue the instruction at the head (`present`: the fetch buffer's, or the EXPERTS body's; `decoded`
        what `predecode` made of it) when it may go, or report a `fault`. Sets the unit commands and the
        scoreboard's registers."""
        def refuse(cause):
            m.d.comb += [fault.eq(present), fault_cause.eq(cause)]

        def go(ready=1):
            """Issue when `ready`; returns the decision of this case alone, for its unit's command (so that no
            other case's rule is in its logic)."""
            here = Signal(name="issue_here")
            m.d.comb += [here.eq(present & ready), issue.eq(here)]
            return here

        refused = decoded.cause != ErrorCause.NONE
        span_bits = (self.buffer_span - 1).bit_length()
        # the host's TASK and whether the model has it, a cycle late from registers (no comparison in the decision)
        task, bad_task = Signal.like(front.route.payload.task, name="task_held"), Signal(name="bad_task")
        m.d.sync += [task.eq(self.task), bad_task.eq(self.task >= self.tasks)]
        with m.Switch(word.opcode):
            with m.Case(Opcode.LOAD):
                ops = word.operands.load
                address, good = self.dram_address(m, decoded, "load", Mux(ops.per_expert, loop.offset, 0))
                params_half = decoded.params_half
                with m.If((ops.per_expert & ~loop.active) | ~good):
                    refuse(ErrorCause.BAD_OPERAND)
                with m.Elif(refused):
                    refuse(decoded.cause)
                with m.Elif(ops.memory == Space.WEIGHTS):
                    m.d.comb += [front.descriptor.payload.address.eq(address),
                                 front.descriptor.payload.length.eq(ops.bytes),
                                 front.descriptor.payload.buffer.eq(ops.base >> span_bits)]
                    m.d.comb += front.descriptor.valid.eq(go(front.descriptor.ready))
                for space in LOADABLE:
                    with m.Elif(ops.memory == space):
                        m.d.comb += [front.load.payload.address.eq(address), front.load.payload.length.eq(ops.bytes),
                                     front.load.payload.memory.eq(space), front.load.payload.base.eq(ops.base)]
                        if space == Space.PARAMS:      # a half at a time: the other may be read meanwhile
                            here = go(front.load.ready & ~touched.params_reading.bit_select(params_half, 1)
                                      & ~touched.params_writing.bit_select(params_half, 1))
                        else:
                            here = go(front.load.ready & ~reading[space.value] & ~writing[space.value]
                                      & ~((ops.region == Region.OUTPUT) & touched.seen.store_busy))
                        m.d.comb += [front.load.valid.eq(here), touched.load_issued.eq(here),
                                     touched.load_space.eq(space), touched.load_half.eq(params_half)]
            with m.Case(Opcode.GEMM):
                issue_gemm(self, m, front, word.operands.gemm, decoded, refuse, go, reading, writing, touched,
                           hidden, slab, span_bits, loop, conv_config)
            with m.Case(Opcode.STORE):
                ops = word.operands.store
                address, good = self.dram_address(m, decoded, "store")
                with m.If(~good):
                    refuse(ErrorCause.BAD_OPERAND)
                with m.Elif(refused):
                    refuse(decoded.cause)
                for space in STORABLE:
                    with m.Elif(ops.memory == space):
                        m.d.comb += [front.store.payload.memory.eq(space), front.store.payload.base.eq(ops.base),
                                     front.store.payload.address.eq(address), front.store.payload.length.eq(ops.bytes)]
                        here = go(front.store.ready & ~touched.store_waits[space.value])
                        m.d.comb += [front.store.valid.eq(here), touched.store_issued.eq(here),
                                     touched.store_space.eq(space)]
            with m.Case(Opcode.UPSAMPLE):
                issue_upsample(self, m, front, word.operands.upsample, decoded, refuse, go, touched)
            with m.Case(Opcode.SYNC):
                go(idle)
            with m.Case(Opcode.HALT):
                go(idle)
                m.d.comb += halt.eq(retire)
            for opcode, register in ((Opcode.CONFIG_GELU, hidden), (Opcode.CONFIG_NORM, norm_config),
                                     (Opcode.CONFIG_SOFTMAX, softmax_config), (Opcode.CONFIG_CONV, conv_config)):
                with m.Case(opcode):
                    go(~writing[Space.HIDDEN.value] if opcode == Opcode.CONFIG_GELU else 1)
                    with m.If(retire):
                        m.d.sync += register.eq(getattr(word.operands, opcode.name.lower()))
            with m.Case(Opcode.LAYERNORM):
                ops = word.operands.layernorm
                command = front.norm.payload
                m.d.comb += [command.rows.eq(ops.rows), command.set.eq(ops.set), command.eps.eq(norm_config.eps),
                             command.shifts.eq(norm_config.shifts), command.source.eq(ops.source),
                             command.destination.eq(ops.destination), command.route.eq(ops.route)]
                with m.If((ops.route & ~touched.seen.router_busy) | refused):   # the router's copy needs a ROUTE
                    refuse(ErrorCause.BAD_OPERAND)
                with m.Else():
                    m.d.comb += front.norm.valid.eq(go(
                        front.norm.ready & ~writing[Space.RESIDUAL.value] & ~writing[Space.NORMS.value]
                        & ~writing[Space.ACTIVATION.value] & ~reading[Space.ACTIVATION.value]))
            with m.Case(Opcode.SOFTMAX):
                ops = word.operands.softmax
                command = front.softmax.payload
                m.d.comb += [command.rows.eq(ops.rows), command.source.eq(ops.source), command.half.eq(ops.half),
                             command.destination.eq(ops.destination)]
                m.d.comb += [getattr(command, name).eq(getattr(softmax_config, name))
                             for name, _ in softmax_config.shape()]
                with m.If(refused):
                    refuse(decoded.cause)
                with m.Else():
                    here = go(front.softmax.ready & ~touched.scores_writing.bit_select(ops.half, 1)
                              & ~writing[Space.ACTIVATION.value] & ~reading[Space.ACTIVATION.value]
                              & ~writing[Space.ROW_SCALES.value] & ~reading[Space.ROW_SCALES.value])
                    m.d.comb += [front.softmax.valid.eq(here), touched.softmax_issued.eq(here),
                                 touched.softmax_half.eq(ops.half)]
            with m.Case(Opcode.ROUTE):
                ops = word.operands.route
                # the router's weight set: the layer itself, or layer mod 2 when it holds two (`router_layers_held`)
                m.d.comb += [front.route.payload.layer.eq(ops.layer[:len(front.route.payload.layer)]),
                             front.route.payload.task.eq(task),
                             front.route.payload.tokens.eq(ops.tokens)]
                with m.If(bad_task):
                    refuse(ErrorCause.BAD_TASK)
                with m.Elif(refused):
                    refuse(decoded.cause)
                with m.Else():
                    m.d.comb += front.route.valid.eq(go(
                        front.route.ready & ~writing[Space.ROUTES.value] & ~reading[Space.ROUTES.value]
                        & ~writing[Space.ROUTER.value] & ~writing[Space.ROUTER_PARAMS.value]))
            with m.Case(Opcode.EXPERTS):
                ops = word.operands.experts
                with m.If(loop.active | refused):
                    refuse(ErrorCause.BAD_OPERAND)
                with m.Elif(ops.body == 0):
                    go()
                with m.Else():
                    go(loop.expert_ready | loop.no_more)
                    m.d.comb += loop.enter.eq(retire)
            with m.Default():
                refuse(ErrorCause.BAD_OPCODE)

    def elaborate(self, platform):
        m = Module()
        isa = self.isa
        running = Signal()
        fetch = self.fetcher
        m.submodules.fetch = ResetInserter(self.start & ~self.busy)(fetch)
        wiring.connect(m, fetch.fetch, wiring.flipped(self.fetch))
        wiring.connect(m, wiring.flipped(self.program), fetch.program)
        m.d.comb += [fetch.running.eq(running), fetch.program_addr.eq(self.program_addr),
                     fetch.reader_idle.eq(self.fetch_idle)]
        m.submodules.scoreboard = touched = Scoreboard()
        m.d.comb += [getattr(touched, unit).eq(getattr(self, unit)) for unit in UNITS]
        m.d.comb += touched.starting.eq(Cat(self.load.valid, self.gemm.valid | self.output_start, self.store.valid,
                                            self.norm.valid, self.softmax.valid, self.route.valid))   # UNITS' order
        m.d.comb += self.gemm_touches.eq(touched.gemm_touches)
        reading, writing, seen = touched.reading, touched.writing, touched.seen     # `seen`: the units a cycle late
        pc = Signal(32)
        loop = ExpertsLoop(self.expert_entry, experts=self.num_experts, depth=self.body_depth,
                           width=INSTRUCTION_BITS + PREDECODED.size)
        m.submodules.loop = ResetInserter(self.start & ~self.busy)(loop)
        wiring.connect(m, wiring.flipped(self.experts), loop.experts)
        products, reaches = prepared_layout(isa), reached_layout(self)
        prepare(m, data.View(isa.layout, fetch.incoming), data.View(products, fetch.prepared))
        reach(self, m, data.View(isa.layout, fetch.staged), data.View(products, fetch.staged_prepared),
              data.View(reaches, fetch.reached))
        predecode(self, m, data.View(isa.layout, fetch.settled), data.View(reaches, fetch.settled_reached),
                  data.View(PREDECODED, fetch.decoded))
        head = Cat(fetch.head, fetch.head_decoded)
        m.d.comb += [loop.router_busy.eq(self.router_busy), loop.restart.eq(self.route.valid & self.route.ready),
                     loop.fetched.eq(head), loop.first_pc.eq(pc + 1)]
        # the head of the cycle before, taken once it is `settled` (the issue stage); not reset: `present` says
        # whether it holds one
        current = Signal(len(head), reset_less=True)
        m.d.sync += current.eq(Mux(loop.replay, loop.instruction, head))
        word = data.View(isa.layout, current[:INSTRUCTION_BITS])
        # what an EXPERTS at the head would enter with, whatever the head is (the loop takes it only at `enter`)
        m.d.comb += [loop.body.eq(word.operands.experts.body), loop.stride.eq(word.operands.experts.stride)]
        decoded = data.View(PREDECODED, current[INSTRUCTION_BITS:])
        hidden = Signal(data.StructLayout({"multiplier": isa.operands[Opcode.CONFIG_GELU]["multiplier"].shape,
                                           "shift": unsigned(6)}))
        slab = SimpleNamespace(holding=Signal(name="slab_holding"),
                               held=Signal(index_bits(self.buffers), name="slab_held"),
                               releasing=Signal(name="slab_releasing"), other_wanted=Signal(name="slab_other_wanted"))
        norm_config = Signal(data.StructLayout({name: field.shape for name, field in self.norm_command
                                                if name in ("eps", "shifts")}))
        softmax_config = Signal(data.StructLayout({name: field.shape for name, field in self.softmax_command
                                                   if name not in ("rows", "source", "half", "destination")}))
        idle = ~seen.load_busy & self.loader_idle & ~seen.gemm_active & ~(slab.holding & slab.releasing) \
            & ~seen.store_busy & ~seen.norm_busy & ~seen.softmax_busy & ~seen.router_busy
        refusal, refusal_cause, fault, fault_cause = Signal(), Signal(ErrorCause), Signal(), Signal(ErrorCause)
        m.d.sync += [fault.eq(refusal), fault_cause.eq(refusal_cause)]
        issue, halt = Signal(), Signal()

        # Release the slab buffer a GEMM held once its product is written (unless it keeps it for the next).
        m.d.comb += self.release.payload.eq(slab.held)
        with m.If(slab.holding & ~seen.gemm_active & ~self.output_start & (slab.releasing | slab.other_wanted)):
            m.d.comb += self.release.valid.eq(1)
            m.d.sync += slab.holding.eq(0)

        retire, front, record = issue_stage(self, m, issue, touched)
        skipped = running & loop.skipping & fetch.head_valid
        settled = Signal()
        m.d.sync += settled.eq(~loop.waiting & ~loop.skipping & Mux(loop.replay, 1, fetch.head_valid)
                               & ~retire & ~skipped & ~loop.jump)
        present = running & settled & ~retire & ~fault
        conv_config = Signal(isa.operands[Opcode.CONFIG_CONV])
        self._issue(m, word, decoded, issue, retire, halt, refusal, refusal_cause, reading, writing, record, hidden,
                    slab, idle, present, norm_config, softmax_config, conv_config, loop, front)
        m.d.comb += [self.issued.eq(retire),      # after a fault or a HALT, the rest is popped unissued
                     fetch.pop.eq(Mux(running, (retire & ~loop.replay) | skipped, fetch.head_valid))]
        # the loop's registers load on `retire` from a copy of their own (no one net to them and the controller's)
        m.d.comb += [loop.issued.eq(kept_copies(m, issue, 1, "retire_loop")[0]), loop.dropped.eq(skipped)]
        with m.If(retire | skipped):
            m.d.sync += pc.eq(pc + 1)
        with m.If(loop.jump):
            m.d.sync += pc.eq(loop.jump_pc)
        with m.If(self.hidden_write.en):
            m.d.sync += hidden.eq(self.hidden_write.data)

        # Faults reported by the units, in the order their transfers go.
        unit_fault = Signal(ErrorCause)
        with m.If(self.fetch_error | self.load_error | self.loader_error):
            m.d.comb += unit_fault.eq(ErrorCause.DRAM_READ)
        with m.Elif(self.store_error):
            m.d.comb += unit_fault.eq(ErrorCause.DRAM_WRITE)
        with m.Elif(self.gemm_error):
            m.d.comb += unit_fault.eq(ErrorCause.GELU_RANGE)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += self.clear.eq(1)
                    m.d.sync += [self.busy.eq(1), self.done.eq(0), self.error.eq(0), self.cause.eq(ErrorCause.NONE),
                                 self.error_pc.eq(0), pc.eq(0), hidden.eq(0), slab.holding.eq(0)]
                    with m.If(self.program_addr[:(self.bus_bytes - 1).bit_length()] != 0):   # fetch: bus words
                        m.d.sync += [self.error.eq(1), self.cause.eq(ErrorCause.BAD_OPERAND)]
                        m.next = "STOP"
                    with m.Else():
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += running.eq(1)
                with m.If(unit_fault != ErrorCause.NONE):
                    m.d.sync += [self.error.eq(1), self.cause.eq(unit_fault), self.error_pc.eq(pc)]
                    m.next = "STOP"
                with m.Elif(fault):
                    m.d.sync += [self.error.eq(1), self.cause.eq(fault_cause), self.error_pc.eq(pc)]
                    m.next = "STOP"
                with m.Elif(halt):
                    m.next = "STOP"
            with m.State("STOP"):
                with m.If(idle & ~retire & fetch.drained):
                    m.d.sync += [self.busy.eq(0), self.done.eq(1)]
                    m.next = "IDLE"
        return m
