"""The accelerator's top level: the controller, the host registers, the GEMM engine, the weight loader, the data
paths and the on-chip memories, behind one AXI4 master port to DRAM and one AXI4-Lite slave port for the host.

`Accelerator.for_model(model, accel)` builds it for `model` on `accel` (`check_top_level` says what else it
needs). Ports, with the AMBA names (`axi__araddr`, `host__awvalid`, … in Verilog):
- `axi` (`AXI4.Signature`, master): reads shared a burst at a time by program fetch (first), the load path and
  the weight loader (`ReadArbiter`); writes by the store path (`StoreWriter`).
- `host` (`AXI4Lite.Signature`, slave): the registers of `hw.control.registers` (`HostRegisters`).
- `irq`: STATUS.done while CONTROL.irq_enable.
- `issued`: high in each cycle the controller issues an instruction (an EXPERTS body's once per expert): a trace
  for a logic analyser, and what `firmware.cycles` checks its cycle model against, instruction by instruction.
A run: the host writes the region registers and TASK, then CONTROL.start (the controller reads the region registers
as it fetches the instructions, so they hold for the whole run); STATUS.done rises when the program
has halted or faulted (ERROR, ERROR_PC). The performance counters count from start to done. CONTROL.soft_reset
returns everything to idle (the controller and the units a cycle later, the units as after start: the controller from
a register of its own, the units from another, each net through `global_buffer`). The AXI4 bursts in flight then
end by the rules (`hw.memory.quiesce.AXI4Quiesce` at the port: reads to their last beat, dropped; a write's missing
beats with no byte strobe, so a write cut short leaves some of its bytes written), and a run started meanwhile
waits for them.
Every instruction of `hw.control.isa` runs: a whole backbone inference, any task, from one program
(docs/architecture.md, section 11). The experts: the router's list of active experts drives the controller's
EXPERTS loop, its token queues serve the engine's gather (fc1) and token and gate reads
(COMBINE-mode fc2), whose gate-weighted rows the output path adds into their tokens' residual rows.

`unit_domain` (default `sync`): the clock domain the controller and the units run in, `sync` renamed. Their
reset registers are in `sync` and set while it resets; a board top passes a reset-less domain on `sync`'s clock
(`hw.board.top`), so that the domain's reset net reaches the reset registers and not every unit's flip-flops.
`global_buffer` (default none): `(m, signal, name) -> Value`, `signal` on one of the device's global nets, which
reach thousands of loads with one short delay where a fabric net spans the chip; the two reset registers' nets go
through it (`hw.board.top` passes the ECP5's DCCA), else each register drives its loads itself.
"""

from __future__ import annotations

from collections.abc import Callable

from amaranth import Cat, DomainRenamer, Module, Mux, ResetInserter, Shape, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import AcceleratorConfig, ConfigError, ModelConfig, check_compatible, config_hash

from ..common.pipeline import KEPT_COPY
from ..compute.gemm import GemmEngine
from ..memory.arbiter import ReadArbiter
from ..memory.axi import AXI4, AXI4Lite, AXI4Read, AXI4Write, join
from ..memory.interleaved import InterleavedMemory
from ..memory.layout import HEADER_COLUMN_BYTES, PARAMETER_WORD
from ..memory.loader import WeightLoader
from ..memory.quiesce import AXI4Quiesce
from ..memory.reader import StreamReader
from ..memory.writer import StoreWriter
from ..vector.layernorm import LayerNorm
from ..vector.softmax import Softmax
from ..moe.router import Router
from .controller import Controller
from .datapath import LoadPath, NormPath, OutputPath
from .store_path import StorePath
from .softmax_path import ROW_SCALE, SoftmaxPath
from .host import HostRegisters
from .isa import InstructionSet, Opcode, Space
from .memories import TWO_PORTED, check_top_level, feed_rows, onchip_spaces
from .registers import COUNTERS

__all__ = ["Accelerator", "GlobalBuffer", "RESET_COPY"]

RESET_COPY = f"{KEPT_COPY}reset_"     # the prefix of the two reset registers (kept apart in synthesis)
GlobalBuffer = Callable[[Module, Value, str], Value]     # (m, signal, name): `signal` on a global net


class Accelerator(wiring.Component):
    class Signature(wiring.Signature):
        """The top level's ports for `accel`: `axi` (AXI4 master, `addr_width`-bit addresses, the DRAM bus of
        `accel`), `host` (AXI4-Lite slave, 8-bit byte addresses, 32-bit data), `irq` and `issued`."""

        def __init__(self, accel: AcceleratorConfig, addr_width: int = 32):
            self.bus = AXI4.Signature(addr_width, 8 * accel.dram_bytes_per_beat)
            super().__init__({"axi": Out(self.bus), "host": In(AXI4Lite.Signature(8, 32)), "irq": Out(1),
                              "issued": Out(1)})

    def __init__(self, model: ModelConfig, accel: AcceleratorConfig, *, addr_width: int = 32, fetch_depth: int = 8,
                 unit_domain: str = "sync", global_buffer: GlobalBuffer | None = None):
        try:
            check_compatible(model, accel)
            check_top_level(model, accel)
        except ConfigError:
            self._MustUse__silence = True             # never built, so never elaborated
            raise
        self.model, self.accel, self.addr_width, self.unit_domain = model, accel, addr_width, unit_domain
        self.global_buffer = global_buffer
        self.isa = InstructionSet(model, accel)
        self.spaces = onchip_spaces(model, accel)
        self.config_hash = config_hash(model, accel)
        self.loader = WeightLoader.for_config(accel, addr_width)
        self.router = Router.for_model(model, accel)
        self.feed_rows = feed_rows(accel)
        stationary_depth = max(self.loader.buffers * self.loader.buffer_span,     # slabs, or Kᵀ and V by feed word
                               self.spaces[Space.SCRATCH].depth // self.feed_rows)
        self.engine = GemmEngine.for_model(model, accel, w_depth=stationary_depth,
                                           x_depth=max(self.spaces[space].depth
                                                       for space in (Space.ACTIVATION, Space.SCRATCH)),
                                           p_depth=self.spaces[Space.PARAMS].depth,
                                           index_depth=self.router.geometry.queue_depth)
        self.load_path = LoadPath(self.spaces, StreamReader.for_config(accel, addr_width))
        upsample = {name: (1 << Shape.cast(self.isa.operands[Opcode.UPSAMPLE][name].shape).width) - 1
                    for name in ("width", "tiles")}
        self.store_path = StorePath(self.spaces, StoreWriter.for_config(accel, addr_width),
                                    max_width=upsample["width"], max_tiles=upsample["tiles"])
        self.fetch_reader = StreamReader.for_config(accel, addr_width)
        self.norm_path = NormPath(self.spaces, LayerNorm.for_model(model, accel), model.num_tokens,
                                  self.router.signature.members["tokens"].signature.members["payload"].shape)
        self.softmax_path = SoftmaxPath(self.spaces, Softmax.for_model(model, accel), model.num_tokens,
                                        accel.tokens_per_block(model))
        gemm = self.isa.operands[Opcode.GEMM]
        self.output = OutputPath(self.spaces, self.engine.signature.result, accel.array_cols,
                                 Shape.cast(gemm["d_stride"].shape).width, Shape.cast(gemm["m"].shape).width)
        self.controller = Controller(
            self.isa, self.spaces, engine_command=self.engine.signature.command,
            load_command=self.load_path.command.payload.shape(), store_command=self.store_path.command.payload.shape(),
            job=self.output.job.shape(), norm_command=self.norm_path.command.payload.shape(),
            softmax_command=self.softmax_path.command.payload.shape(),
            route_command=self.router.command.payload.shape(), tasks=model.num_tasks,
            expert_entry=self.router.experts.payload.shape(), experts=model.num_experts,
            tokens=model.num_tokens, buffers=self.loader.buffers, buffer_span=self.loader.buffer_span,
            bus_bytes=accel.dram_bytes_per_beat, addr_width=addr_width, fetch_depth=fetch_depth)
        self.host_registers = HostRegisters(self.config_hash)
        signature = self.Signature(accel, addr_width)
        self.bus = signature.bus
        super().__init__(signature)

    @classmethod
    def for_model(cls, model: ModelConfig, accel: AcceleratorConfig) -> "Accelerator":
        return cls(model, accel)

    def _reset_by(self, m, name: str, reset, units: dict) -> Signal:
        """The submodules `units` (by name) in `unit_domain` (`sync` renamed), reset by `reset` a cycle later from a
        register named after `name` (set while the domain resets) through `global_buffer`; returns the register."""
        copy = Signal(init=1, name=f"{RESET_COPY}{name}")
        m.d.sync += copy.eq(reset)
        net = self.global_buffer(m, copy, f"{RESET_COPY}{name}") if self.global_buffer else copy
        for unit_name, unit in units.items():
            m.submodules[unit_name] = DomainRenamer(self.unit_domain)(ResetInserter(net)(unit))
        return copy

    def _memories(self, m):
        """The on-chip memories and their ports, wired to the paths and the engine (NORMS lives in LayerNorm)."""
        engine, output, load, store, norm = self.engine, self.output, self.load_path, self.store_path, self.norm_path
        x_data = {}
        from_slab = self.controller.gemm_touches.stationary == Space.WEIGHTS
        for space in (Space.ACTIVATION, Space.SCRATCH, Space.RESIDUAL, Space.SCORES, Space.ROW_SCALES, Space.ROUTES):
            memory, name = self.spaces[space], space.name.lower()
            if space in TWO_PORTED:      # the store path on port A with the writers (never at once), the rest on B
                # (the array's operands, X and SCRATCH's stationary W, from registered outputs)
                storage = m.submodules[name] = InterleavedMemory(
                    8 * memory.word_bytes, memory.depth, self.feed_rows if space == Space.SCRATCH else 1,
                    wide=space == Space.SCRATCH, registered=space in (Space.ACTIVATION, Space.SCRATCH))
                write, reader = storage.write, storage.read
                wiring.connect(m, storage.shared, getattr(store, name))
            else:
                storage = m.submodules[name] = Memory(shape=8 * memory.word_bytes, depth=memory.depth, init=[])
                write, reader = storage.write_port(), storage.read_port()
            # a unit's write port into a memory is named after its Space
            writers = [getattr(unit, name) for unit in (load, output, norm, self.softmax_path)
                       if name in unit.signature.members]
            if writers:
                m.d.comb += [write.en.eq(Cat(*(w.en for w in writers)).any()), write.addr.eq(writers[0].addr),
                             write.data.eq(writers[0].data)]
            for other in writers[1:]:        # the scoreboard keeps writers of one memory apart in time
                with m.If(other.en):
                    m.d.comb += [write.addr.eq(other.addr), write.data.eq(other.data)]
            if space in (Space.ACTIVATION, Space.SCRATCH):
                m.d.comb += [reader.addr.eq(engine.x_read.addr), reader.en.eq(engine.x_read.en)]
                x_data[space] = reader.data
            if space == Space.SCRATCH:       # the stationary operand of attention: Kᵀ and V (port A)
                stationary = storage.wide
                m.d.comb += [stationary.addr.eq(engine.w_read.addr), stationary.en.eq(engine.w_read.en & ~from_slab)]
            if space == Space.RESIDUAL:      # the residual addition and LayerNorm, never at once
                m.d.comb += [reader.addr.eq(Mux(norm.busy, norm.residual_read.addr, output.residual_read.addr)),
                             reader.en.eq(norm.residual_read.en | output.residual_read.en),
                             norm.residual_read.data.eq(reader.data), output.residual_read.data.eq(reader.data)]
            if space == Space.SCORES:
                wiring.connect(m, reader, self.softmax_path.scores_read)
            if space == Space.ROUTES:        # the routing record, as the routes leave the router
                routes = self.router.routes
                m.d.comb += [routes.ready.eq(1), write.en.eq(routes.valid), write.addr.eq(routes.payload.token),
                             write.data.eq(Cat(routes.payload.experts, routes.payload.weights))]
                wiring.connect(m, reader, store.routes)
            if space == Space.ROW_SCALES:
                m.d.comb += [reader.addr.eq(engine.row_read.addr), reader.en.eq(engine.row_read.en),
                             engine.row_read.data.eq(reader.data[:ROW_SCALE.size])]
        self._params(m)
        wiring.connect(m, load.norms, norm.norms)
        m.d.comb += [self.controller.hidden_write.data.eq(load.hidden.data),
                     self.controller.hidden_write.en.eq(load.hidden.en)]
        self._experts(m)
        for space, port in ((Space.ROUTER, self.router.weights_write), (Space.ROUTER_PARAMS, self.router.params_write)):
            source = getattr(load, space.name.lower())
            m.d.comb += [port.addr.eq(source.addr), port.en.eq(source.en), port.data.eq(source.data)]
        m.d.comb += [self.loader.read.addr.eq(engine.w_read.addr), self.loader.read.en.eq(engine.w_read.en & from_slab),
                     engine.w_read.data.eq(Mux(from_slab, self.loader.read.data, stationary.data))]
        m.d.comb += engine.x_read.data.eq(Mux(self.controller.gemm_touches.source == Space.SCRATCH,
                                              x_data[Space.SCRATCH], x_data[Space.ACTIVATION]))

    def _params(self, m):
        """PARAMS, written by LOADs alone: of each column's `HEADER_COLUMN_BYTES` DRAM word it keeps the bias and
        the fields the engine reads (`PARAMETER_WORD`), a write enable a column: the load path's enable of the
        lane (bus word) that carries the column, or its one enable where the bus carries whole words."""
        load, read = self.load_path.params, self.engine.p_read
        columns, column_bits = self.accel.array_cols, 8 * HEADER_COLUMN_BYTES
        kept = 32 + sum(bits for _, bits, _, _ in PARAMETER_WORD)
        lane_bits = len(load.data) // len(load.en)
        storage = m.submodules.params = Memory(shape=columns * kept, depth=self.spaces[Space.PARAMS].depth, init=[])
        write, reader = storage.write_port(granularity=kept), storage.read_port()
        m.d.comb += [write.addr.eq(load.addr),
                     write.en.eq(Cat(*(load.en[column_bits * c // lane_bits] for c in range(columns)))),
                     write.data.eq(Cat(*(load.data[column_bits * c:column_bits * c + kept] for c in range(columns)))),
                     reader.addr.eq(read.addr), reader.en.eq(read.en), read.data.eq(reader.data)]

    def _experts(self, m):
        """The router's token queues behind the engine's gather (fc1) or token and gate (COMBINE fc2) reads."""
        engine, queue = self.engine, self.router.queue_read
        gathering = self.controller.gemm_touches.gathers
        m.d.comb += [queue.addr.eq(Mux(gathering, engine.index_read.addr, engine.scatter_read.addr)),
                     queue.en.eq(Mux(gathering, engine.index_read.en, engine.scatter_read.en)),
                     engine.index_read.data.eq(queue.data.token), engine.scatter_read.data.eq(queue.data.token),
                     engine.gate_read.data.eq(queue.data.weight)]

    def elaborate(self, platform):
        m = Module()
        host, controller, engine, loader = self.host_registers, self.controller, self.engine, self.loader
        clear = controller.clear | host.soft_reset
        m.submodules.host = host

        # The controller is reset by the host's soft reset a cycle later, and the units by `clear` a cycle later, each
        # from a register of its own (set while the domain resets), so that the reset nets start at flip-flops
        # (`RESET_COPY` names them, the board flow keeps them apart) and not at the host's register; a unit's error
        # flag is not reported while its reset is pending.
        self._reset_by(m, "controller", host.soft_reset, {"controller": controller})
        arbiter = ReadArbiter(AXI4Read.Signature(self.addr_width, self.bus.data_width), 3,
                              depth=3 * self.accel.dram_outstanding)
        units = {name: getattr(self, name) for name in ("engine", "loader", "load_path", "store_path",
                                                        "fetch_reader", "output", "norm_path", "softmax_path",
                                                        "router")}
        resetting = self._reset_by(m, "units", clear, {**units, "arbiter": arbiter})
        wiring.connect(m, wiring.flipped(self.host), host.bus)
        m.d.comb += [self.irq.eq(host.irq), self.issued.eq(controller.issued)]

        # DRAM: fetch first, then the load path and the loader, on one read port; the store path writes.
        for index, master in enumerate((self.fetch_reader.axi, self.load_path.axi, loader.axi)):
            wiring.connect(m, master, arbiter.inputs[index])
        # through the guard that ends the units' bursts by the rules when `clear` resets them mid-transfer
        guard = m.submodules.quiesce = AXI4Quiesce(self.bus, 3 * self.accel.dram_outstanding)
        m.d.comb += guard.abandon.eq(clear)
        join(m, arbiter.bus, guard.inner, AXI4Read.Signature(self.addr_width, self.bus.data_width))
        join(m, self.store_path.axi, guard.inner, AXI4Write.Signature(self.addr_width, self.bus.data_width))
        wiring.connect(m, guard.outer, wiring.flipped(self.axi))

        # The controller, the host and the units.
        for name in ("program_addr", "model_addr", "image_addr", "output_addr"):
            m.d.comb += getattr(controller, name).eq(getattr(host, name))
        m.d.comb += [controller.start.eq(host.start), host.busy.eq(controller.busy), host.done.eq(controller.done),
                     host.error.eq(controller.error), host.cause.eq(controller.cause),
                     host.error_pc.eq(controller.error_pc)]
        wiring.connect(m, controller.fetch, self.fetch_reader.command)
        wiring.connect(m, self.fetch_reader.data, controller.program)
        wiring.connect(m, controller.load, self.load_path.command)
        wiring.connect(m, controller.descriptor, loader.descriptor)
        wiring.connect(m, controller.take, loader.take)
        wiring.connect(m, controller.release, loader.release)
        wiring.connect(m, controller.gemm, engine.command)
        wiring.connect(m, controller.store, self.store_path.command)
        wiring.connect(m, controller.norm, self.norm_path.command)
        wiring.connect(m, controller.softmax, self.softmax_path.command)
        wiring.connect(m, controller.route, self.router.command)
        wiring.connect(m, self.router.experts, controller.experts)
        # the router's rows from LayerNorm (the controller refuses a task outside the model before ROUTE)
        router_tokens = self.norm_path.router_tokens
        m.d.comb += [self.router.tokens.valid.eq(router_tokens.valid),
                     self.router.tokens.payload.eq(router_tokens.payload),
                     router_tokens.ready.eq(self.router.tokens.ready)]
        gemm_active = engine.busy | engine.out.valid | self.output.active
        m.d.comb += [getattr(controller, f"{kind}_error").eq(unit.error & ~resetting) for kind, unit in (
            ("fetch", self.fetch_reader), ("load", self.load_path), ("loader", loader), ("gemm", engine),
            ("store", self.store_path))]
        m.d.comb += [controller.fetch_idle.eq(self.fetch_reader.idle), controller.load_busy.eq(self.load_path.busy),
                     controller.loader_idle.eq(loader.idle),
                     controller.slab_full.eq(loader.full), controller.slab_accepts.eq(loader.accepts),
                     controller.gemm_active.eq(gemm_active), controller.store_busy.eq(self.store_path.busy),
                     controller.norm_busy.eq(self.norm_path.busy),
                     controller.softmax_busy.eq(self.softmax_path.busy), controller.router_busy.eq(self.router.busy),
                     controller.task.eq(host.task)]
        wiring.connect(m, engine.out, self.output.result)
        m.d.comb += [self.output.start.eq(controller.output_start), self.output.job.eq(controller.output_job)]
        self._memories(m)
        self._counters(m, gemm_active, arbiter.pending)
        return m

    def _counters(self, m, gemm_active, reading):
        """CYCLES and the performance counters of `registers.COUNTERS`, counted from start to done (each counter
        a cycle later: done's cycle's events are in it the cycle after)."""
        host, controller, axi = self.host_registers, self.controller, self.axi
        counting = controller.busy
        cycles = Signal(64)
        counters = {name: Signal(32, name=name.lower()) for name, _ in COUNTERS}
        written = Signal(range(self.bus.beat_bytes + 1))
        m.d.comb += written.eq(sum(axi.wstrb[i] for i in range(self.bus.beat_bytes)))
        vector, router, loader = self.norm_path.busy | self.softmax_path.busy, self.router.busy, ~self.loader.idle
        events = {
            "BUSY_GEMM": gemm_active, "BUSY_LOADER": loader, "BUSY_ROUTER": router, "BUSY_VECTOR": vector,
            "EXPOSED_VECTOR": ~gemm_active & vector, "EXPOSED_ROUTER": ~gemm_active & ~vector & router,
            "EXPOSED_LOADER": ~gemm_active & ~vector & ~router & loader,
            "EXPOSED_OTHER": ~gemm_active & ~vector & ~router & ~loader,
            "DRAM_READ_BYTES": Mux(axi.rvalid & axi.rready, self.bus.beat_bytes, 0),
            "DRAM_WRITE_BYTES": Mux(axi.wvalid & axi.wready, written, 0),
            "DRAM_STALL_CYCLES": (axi.arvalid & ~axi.arready) | (reading & ~axi.rvalid)
            | (axi.awvalid & ~axi.awready) | (axi.wvalid & ~axi.wready),
            "INSTRUCTIONS": controller.issued,
        }
        # each event is counted a cycle after it happens, from registers (the bus handshakes and the units' states
        # reach no counter's adder)
        held = {name: Signal(Value.cast(event).shape(), name=f"{name.lower()}_event") for name, event in events.items()}
        counted = Signal()
        m.d.sync += [counted.eq(counting)] + [held[name].eq(event) for name, event in events.items()]
        with m.If(controller.clear):
            m.d.sync += [cycles.eq(0)] + [counter.eq(0) for counter in counters.values()]
        with m.Else():
            with m.If(counting):
                m.d.sync += cycles.eq(cycles + 1)
            with m.If(counted):
                m.d.sync += [counters[name].eq(counters[name] + held[name]) for name in counters]
        m.d.comb += [host.cycles.eq(cycles)] + [getattr(host, name.lower()).eq(counter)
                                                 for name, counter in counters.items()]
