"""The double-buffered weight loader (docs/architecture.md, sections 1, 7 and 10).

`WeightLoader` fills slab buffers from DRAM through an AXI4 read master, one descriptor per slab, and hands
full buffers to a consumer (the GEMM engine's controller) through a take/release handshake. `ExpertSchedule`
turns a layer's ascending list of active experts into the descriptors of their slabs (`hw.memory.layout`), so
inactive experts are never read and each active one is read once.

Buffer states, per slab buffer: EMPTY → (descriptor accepted) LOADING → (its last beat written) FULL →
(`take`) HELD → (`release`) EMPTY. The loader accepts a descriptor only for an EMPTY buffer, so it never
writes a buffer the consumer holds; the consumer reads only HELD buffers. The Python simulator checks both
(assertions), and that a release names a HELD buffer.
"""

from __future__ import annotations

import numpy as np
from amaranth import Array, Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.hdl import Assert
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out

from golden.config import AcceleratorConfig, ModelConfig

from ..common.arith import index_bits, times_constant
from ..common.pipeline import REGISTERED_READ_LATENCY, delay_line
from .axi import BOUNDARY_BYTES, AXI4Read, Burst, Response, planned_burst
from .layout import ExpertLayerLayout, expert_layer_layout, word_stride
from .transfer import LENGTH_BITS

__all__ = ["WeightLoader", "ExpertSchedule", "WeightPath", "BufferState", "descriptor_layout", "LENGTH_BITS"]


class BufferState(enum.Enum, shape=2):
    EMPTY = 0
    LOADING = 1
    FULL = 2
    HELD = 3


def descriptor_layout(addr_width: int, buffers: int) -> data.StructLayout:
    """`length` bytes (0 … 2^24 − 1) from DRAM byte `address` (a bus-word multiple) into slab `buffer`."""
    return data.StructLayout({"address": unsigned(addr_width), "length": unsigned(LENGTH_BITS),
                              "buffer": unsigned(index_bits(buffers))})


class WeightLoader(wiring.Component):
    """Slab buffers filled from DRAM by descriptors.

    Ports:
    - `descriptor` (stream): accepted once its buffer is EMPTY (`ready` depends on the payload's buffer alone, so
      the length's comparisons stay off the issuer's decision; `accepts` [buffers] is that `ready` for each
      buffer, for an issuer that registers its descriptor: a bit falls only when a descriptor is taken); then a
      misaligned address or a length over `buffer_bytes` sets the sticky `error` and is dropped; length 0 makes
      the buffer FULL at once.
    - `axi`: AXI4 read master, INCR bursts of at most `max_burst` beats that never cross 4 KiB, up to
      `outstanding` in flight, across descriptors, at most one every other cycle, the first two cycles after its
      descriptor is accepted; `rready` is always high while a burst is in flight.
    - `full` [buffers]: which buffers are FULL. `take` (stream of a buffer index): ready while that buffer is
      FULL, makes it HELD. `release` (always ready): makes a HELD buffer EMPTY.
    - `read`: the GEMM engine's stationary-operand read port. Feed word a of buffer b is at address
      b·`buffer_span` + a, where `buffer_span` is the next power of two of `buffer_words`; data two cycles
      after `en` (`READ_LATENCY`: each block RAM's output is registered before the buffers' multiplexer), not
      held after it: the block RAMs read every cycle (their enable is no net across the chip), `en` picks the
      buffer and the word the data comes from.
    - `idle`: no descriptor in progress and no burst in flight. `error`: sticky, set by a bad descriptor or
      a read response other than OKAY.
    """

    READ_LATENCY = REGISTERED_READ_LATENCY
    READ_LATENCIES = {"read": READ_LATENCY}

    def __init__(self, *, cols: int, load_rows: int = 1, operand_width: int = 8, buffers: int = 2,
                 buffer_bytes: int, bus_bytes: int = 16, max_burst: int = 16, outstanding: int = 2,
                 addr_width: int = 32):
        for name, value in (("cols", cols), ("load_rows", load_rows), ("buffers", buffers),
                            ("buffer_bytes", buffer_bytes), ("max_burst", max_burst), ("outstanding", outstanding)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WeightLoader {name} = {value!r}: must be a positive integer")
        if buffers < 2:
            raise ValueError(f"WeightLoader buffers = {buffers}: at least 2, so loading overlaps compute")
        if operand_width % 8:
            raise ValueError(f"WeightLoader operand_width = {operand_width}: must be whole bytes")
        if bus_bytes not in (8, 16, 32):
            raise ValueError(f"WeightLoader bus_bytes = {bus_bytes}: the AXI4 port is 64, 128 or 256 bits wide")
        if max_burst > 256 or max_burst * bus_bytes > BOUNDARY_BYTES:
            raise ValueError(f"WeightLoader max_burst = {max_burst}: at most 256 beats and 4 KiB per burst")
        if buffer_bytes >= 1 << LENGTH_BITS:
            raise ValueError(f"WeightLoader buffer_bytes = {buffer_bytes}: under 2^{LENGTH_BITS}")
        self.cols, self.load_rows, self.operand_width = cols, load_rows, operand_width
        self.buffers, self.buffer_bytes = buffers, buffer_bytes
        self.bus_bytes, self.max_burst, self.outstanding = bus_bytes, max_burst, outstanding
        self.addr_width = addr_width
        self.feed_bytes = load_rows * cols * operand_width // 8
        self.word_stride = word_stride(self.feed_bytes)
        self.memory_bytes = max(self.word_stride, bus_bytes)           # one memory word
        self.memory_depth = -(-buffer_bytes // self.memory_bytes)
        self.buffer_words = buffer_bytes // self.word_stride
        if self.buffer_words == 0:
            raise ValueError(f"WeightLoader buffer_bytes = {buffer_bytes}: smaller than one feed word")
        self.buffer_span = 1 << (self.buffer_words - 1).bit_length()
        operand = signed(operand_width)
        super().__init__({
            "descriptor": In(stream.Signature(descriptor_layout(addr_width, buffers))),
            "axi": Out(AXI4Read.Signature(addr_width, bus_bytes * 8)),
            "full": Out(buffers), "accepts": Out(buffers),
            "take": In(stream.Signature(unsigned(index_bits(buffers)))),
            "release": In(stream.Signature(unsigned(index_bits(buffers)), always_ready=True)),
            "read": Out(ReadPort.Signature(addr_width=(buffers * self.buffer_span - 1).bit_length(),
                                           shape=data.ArrayLayout(data.ArrayLayout(operand, cols), load_rows))),
            "idle": Out(1),
            "error": Out(1),
        })

    @classmethod
    def for_config(cls, accel: AcceleratorConfig, addr_width: int = 32) -> "WeightLoader":
        return cls(cols=accel.array_cols, load_rows=accel.weight_feed_bytes // accel.array_cols,
                   operand_width=accel.operand_width, buffers=accel.weight_buffers,
                   buffer_bytes=accel.weight_buffer_bytes, bus_bytes=accel.dram_bytes_per_beat,
                   max_burst=accel.dram_max_burst, outstanding=accel.dram_outstanding, addr_width=addr_width)

    def model(self, dram, address: int, length: int):
        """The feed words a load of `length` bytes from `address` of `dram` (uint8) leaves in its buffer, as the
        read port gives them: word a holds the bytes from address + a·`word_stride`, `feed_bytes` of them (a
        3-byte word in a 4-byte stride never shows its fourth); uint8 [⌈length / word_stride⌉, feed_bytes].
        Bytes at or past `length` are undefined in the buffer (0 here), and so are a padded stride's."""
        stride, words = self.word_stride, -(-length // self.word_stride)
        padded = np.zeros(words * stride, np.uint8)
        padded[:length] = np.asarray(dram, np.uint8)[address:address + length]
        return padded.reshape(words, stride)[:, :self.feed_bytes]

    def elaborate(self, platform):
        m = Module()
        bus = self.bus_bytes
        size = (bus - 1).bit_length()                    # log2 of the beat's bytes: ARSIZE
        lanes = self.memory_bytes // bus                 # bus beats per memory word
        state = Array(Signal(BufferState, name=f"state{b}") for b in range(self.buffers))
        m.d.comb += self.full.eq(Cat(state[b] == BufferState.FULL for b in range(self.buffers)))
        beat_index = range(self.memory_depth * lanes + 1)    # bus beats into a buffer

        # --- Descriptors → bursts (AR channel) --------------------------------------------------------------
        burst = data.StructLayout({"buffer": unsigned(index_bits(self.buffers)),
                                   "beat": unsigned(Shape.cast(beat_index).width),     # its first, in the buffer
                                   "length": unsigned(8),                              # ARLEN: beats − 1
                                   "last": unsigned(1),                                # ends its descriptor
                                   "tail": unsigned(size + 1)})                        # bytes of a last beat
        m.submodules.in_flight = in_flight = SyncFIFO(width=burst.size, depth=max(2, self.outstanding))
        active = Signal()
        target = Signal.like(self.descriptor.payload.buffer)
        address = Signal(self.addr_width)
        beats_left = Signal(beat_index)
        next_beat = Signal(beat_index)
        tail = Signal(size + 1)                          # bytes of the descriptor's last beat, 1 … bus
        axi = self.axi
        m.d.comb += [axi.arsize.eq(size), axi.arburst.eq(Burst.INCR), axi.arid.eq(0), axi.arcache.eq(0b0011),
                     axi.arprot.eq(0)]

        descriptor = self.descriptor.payload
        misaligned = descriptor.address[:size] != 0
        too_long = descriptor.length > self.buffer_bytes
        bad = misaligned | too_long
        m.d.comb += [self.accepts.eq(Cat(~active & (state[b] == BufferState.EMPTY) for b in range(self.buffers))),
                     self.descriptor.ready.eq(self.accepts.bit_select(descriptor.buffer, 1))]
        accepted = self.descriptor.valid & self.descriptor.ready
        starting, empty_load = Signal(), Signal()       # events on buffer `descriptor.buffer`
        m.d.comb += [starting.eq(accepted & ~bad & (descriptor.length != 0)),
                     empty_load.eq(accepted & ~bad & (descriptor.length == 0))]
        with m.If(accepted & bad):
            m.d.sync += self.error.eq(1)
        with m.If(starting):
            m.d.sync += [active.eq(1), target.eq(descriptor.buffer), address.eq(descriptor.address),
                         beats_left.eq((descriptor.length + bus - 1) >> size), next_beat.eq(0),
                         tail.eq(Mux(descriptor.length[:size] == 0, bus, descriptor.length[:size]))]

        issue = Signal()
        length, last_burst, known = planned_burst(m, address, beats_left, self.max_burst, size, prefix="burst",
                                                  changing=starting | issue)
        m.d.comb += issue.eq(active & known & (~axi.arvalid | axi.arready) & (in_flight.level < self.outstanding))
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += axi.arvalid.eq(0)
        with m.If(issue):
            record = Signal(burst)
            m.d.comb += [record.buffer.eq(target), record.beat.eq(next_beat), record.length.eq(length - 1),
                         record.last.eq(last_burst), record.tail.eq(tail),
                         in_flight.w_data.eq(record), in_flight.w_en.eq(1)]
            m.d.sync += [axi.arvalid.eq(1), axi.araddr.eq(address), axi.arlen.eq(length - 1),
                         address.eq(address + (length << size)), beats_left.eq(beats_left - length),
                         next_beat.eq(next_beat + length), active.eq(~last_burst)]

        # --- Read data → buffer words (R channel) ---------------------------------------------------------
        head = Signal(burst)
        m.d.comb += [head.eq(in_flight.r_data), axi.rready.eq(in_flight.r_rdy)]
        beat_in_burst = Signal(8)
        arriving = axi.rvalid & axi.rready
        final_beat = beat_in_burst == head.length
        with m.If(arriving):
            m.d.sync += beat_in_burst.eq(Mux(final_beat, 0, beat_in_burst + 1))
            m.d.sync += Assert(axi.rlast == final_beat, "AXI4 RLAST does not end the burst")
            with m.If(axi.rresp != Response.OKAY):
                m.d.sync += self.error.eq(1)
        m.d.comb += in_flight.r_en.eq(arriving & final_beat)
        finishing = Signal()                              # an event on buffer `head.buffer`
        m.d.comb += finishing.eq(arriving & final_beat & head.last)

        beat = head.beat + beat_in_burst
        byte_enable = Signal(bus)
        with m.If(head.last & final_beat):
            m.d.comb += byte_enable.eq((Const(1, bus + 1) << head.tail) - 1)
        with m.Else():
            m.d.comb += byte_enable.eq((1 << bus) - 1)
        read_address = self.read.addr[:(self.buffer_span - 1).bit_length()]
        read_buffer = self.read.addr[(self.buffer_span - 1).bit_length():] if self.buffers > 1 else Const(0)
        words_per_memory_word = self.memory_bytes // self.word_stride
        select_bits = (words_per_memory_word - 1).bit_length()
        # which buffer and which word of the memory word, kept from the read to its data
        read_buffer_then = Signal.like(read_buffer)
        read_select_then = Signal(max(1, select_bits))
        chosen = Signal(len(read_buffer_then) + len(read_select_then))
        with m.If(self.read.en):
            m.d.sync += chosen.eq(Cat(read_buffer, read_address[:select_bits] if select_bits else Const(0, 1)))
            m.d.sync += Assert(state[read_buffer] == BufferState.HELD,
                               "the consumer reads a slab buffer it does not hold")
        m.d.sync += Cat(read_buffer_then, read_select_then).eq(chosen)
        memory_words = []
        for b in range(self.buffers):
            memory = m.submodules[f"buffer{b}"] = Memory(shape=unsigned(8 * self.memory_bytes),
                                                         depth=self.memory_depth, init=[])
            write = memory.write_port(granularity=8)
            lane = beat[:(lanes - 1).bit_length()] if lanes > 1 else Const(0)
            m.d.comb += [write.addr.eq(beat >> (lanes - 1).bit_length()),
                         write.data.eq(Cat(axi.rdata for _ in range(lanes))),
                         write.en.eq(Mux(arriving & (head.buffer == b), byte_enable << (lane * bus), 0))]
            reader = memory.read_port()
            m.d.comb += reader.addr.eq(read_address >> select_bits)
            memory_words.append(delay_line(m, reader.data, self.READ_LATENCY - 1, f"buffer{b}_word", data=True)[-1])
        with m.If(arriving):
            m.d.sync += Assert(state[head.buffer] == BufferState.LOADING, "the loader writes a buffer not LOADING")
        word = Signal(8 * self.memory_bytes)
        m.d.comb += word.eq(Array(memory_words)[read_buffer_then])
        stride_bits = 8 * self.word_stride
        m.d.comb += self.read.data.eq(word.word_select(read_select_then, stride_bits)[:8 * self.feed_bytes]
                                      if select_bits else word[:8 * self.feed_bytes])

        # --- The consumer's handshake ----------------------------------------------------------------------
        m.d.comb += self.take.ready.eq(state[self.take.payload] == BufferState.FULL)
        with m.If(self.release.valid):
            m.d.sync += Assert(state[self.release.payload] == BufferState.HELD, "release of a buffer not held")
        # Each event needs its buffer in a different state, so at most one of them changes a buffer a cycle.
        for b in range(self.buffers):
            with m.If(starting & (descriptor.buffer == b)):
                m.d.sync += state[b].eq(BufferState.LOADING)
            with m.If((empty_load & (descriptor.buffer == b)) | (finishing & (head.buffer == b))):
                m.d.sync += state[b].eq(BufferState.FULL)
            with m.If(self.take.valid & self.take.ready & (self.take.payload == b)):
                m.d.sync += state[b].eq(BufferState.HELD)
            with m.If(self.release.valid & (self.release.payload == b)):
                m.d.sync += state[b].eq(BufferState.EMPTY)
        m.d.comb += self.idle.eq(~active & ~in_flight.r_rdy & ~axi.arvalid)
        return m


class ExpertSchedule(wiring.Component):
    """The loads of a layer, each into the next buffer in rotation (0, 1, …, buffers − 1, 0, …; the rotation
    runs on across layers, and the consumer takes buffers in the same order).

    - `experts` (stream of expert ids, ascending, from the router): one descriptor per slab of the expert's fc1
      then its fc2, at `layer_base` + e·`expert_bytes` + the slab's offset (`hw.memory.layout`); the id is consumed
      with its last slab. Experts the router did not name are never loaded.
    - `dense` (stream of {address, length}): a dense matrix's slab, through the same buffers; taken between
      experts, never inside one expert's slabs.
    """

    def __init__(self, layout: ExpertLayerLayout, *, buffers: int = 2, addr_width: int = 32):
        self.layout, self.buffers, self.addr_width = layout, buffers, addr_width
        self.slabs = [(offset + slab.offset, slab.length)
                      for matrix, offset in ((layout.fc1, 0), (layout.fc2, layout.fc2_offset))
                      for slab in matrix.slabs]
        super().__init__({
            "experts": In(stream.Signature(unsigned(index_bits(layout.experts)))),
            "layer_base": In(addr_width),
            "dense": In(stream.Signature(data.StructLayout({"address": unsigned(addr_width),
                                                            "length": unsigned(LENGTH_BITS)}))),
            "descriptor": Out(stream.Signature(descriptor_layout(addr_width, buffers))),
        })

    def model(self, active, layer_base: int) -> list[tuple[int, int]]:
        """The (address, length) of the descriptors for the layer's `active` experts (ascending), in order;
        buffers in rotation."""
        return [(load.address, load.length) for load in self.layout.loads(active, layer_base)]

    @classmethod
    def for_config(cls, model: ModelConfig, accel: AcceleratorConfig, addr_width: int = 32) -> "ExpertSchedule":
        return cls(expert_layer_layout(model, accel), buffers=accel.weight_buffers, addr_width=addr_width)

    def elaborate(self, platform):
        m = Module()
        slab = Signal(range(len(self.slabs)))
        buffer = Signal(range(self.buffers))
        offsets = Array(Const(offset, self.addr_width) for offset, _ in self.slabs)
        lengths = Array(Const(length, LENGTH_BITS) for _, length in self.slabs)
        expert_base = Signal(self.addr_width)
        m.d.comb += expert_base.eq(self.layer_base + times_constant(self.experts.payload, self.layout.expert_bytes))
        descriptor = self.descriptor
        take_dense = (slab == 0) & self.dense.valid
        with m.If(take_dense):
            m.d.comb += [descriptor.valid.eq(1), descriptor.payload.address.eq(self.dense.payload.address),
                         descriptor.payload.length.eq(self.dense.payload.length),
                         self.dense.ready.eq(descriptor.ready)]
        with m.Else():
            m.d.comb += [descriptor.valid.eq(self.experts.valid),
                         descriptor.payload.address.eq(expert_base + offsets[slab]),
                         descriptor.payload.length.eq(lengths[slab])]
            last_slab = slab == len(self.slabs) - 1
            m.d.comb += self.experts.ready.eq(descriptor.ready & last_slab)
            with m.If(descriptor.valid & descriptor.ready):
                m.d.sync += slab.eq(Mux(last_slab, 0, slab + 1))
        m.d.comb += descriptor.payload.buffer.eq(buffer)
        with m.If(descriptor.valid & descriptor.ready):
            m.d.sync += buffer.eq(Mux(buffer == self.buffers - 1, 0, buffer + 1))
        return m


class WeightPath(wiring.Component):
    """`ExpertSchedule` feeding a `WeightLoader`: expert ids and dense slabs in; the AXI4 port, the buffer
    handshake and the read port out (the loader's, see there). `for_config(model, accel)` sizes both."""

    def __init__(self, schedule: ExpertSchedule, loader: WeightLoader):
        self.schedule, self.loader = schedule, loader
        members = dict(loader.signature.members)
        del members["descriptor"]
        members.update({name: schedule.signature.members[name] for name in ("experts", "layer_base", "dense")})
        super().__init__(members)

    def model(self, dram, active, layer_base: int, dense=()) -> list:
        """The buffers' feed words (`WeightLoader.model`) of each load, in order: the `dense` (address, length)
        slabs given first, then the active experts' slabs (`ExpertSchedule.model`)."""
        loads = list(dense) + self.schedule.model(active, layer_base)
        return [self.loader.model(dram, address, length) for address, length in loads]

    @classmethod
    def for_config(cls, model: ModelConfig, accel: AcceleratorConfig, addr_width: int = 32) -> "WeightPath":
        return cls(ExpertSchedule.for_config(model, accel, addr_width), WeightLoader.for_config(accel, addr_width))

    @property
    def buffer_span(self) -> int:
        return self.loader.buffer_span

    @property
    def feed_bytes(self) -> int:
        return self.loader.feed_bytes

    def elaborate(self, platform):
        m = Module()
        m.submodules.schedule = schedule = self.schedule
        m.submodules.loader = loader = self.loader
        wiring.connect(m, schedule.descriptor, loader.descriptor)
        for name in ("experts", "dense"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(schedule, name))
        for name in ("axi", "take", "release", "read"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(loader, name))
        m.d.comb += [schedule.layer_base.eq(self.layer_base), self.full.eq(loader.full), self.idle.eq(loader.idle),
                     self.error.eq(loader.error)]
        return m
