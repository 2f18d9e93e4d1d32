"""The controller's program fetch: instructions from DRAM into a buffer, a chunk at a time as room allows."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..common.gearbox import Gearbox
from ..common.pipeline import data_register
from ..memory.transfer import transfer_layout
from .isa import INSTRUCTION_BITS

__all__ = ["ProgramFetch"]


class ProgramFetch(wiring.Component):
    """While `running` (from its second cycle: the top level resets the units a cycle after the start), asks
    (`fetch`: {address, length}) for the next `chunk` instructions from `program_addr` whenever the
    `depth`-instruction buffer has room for them (room is reserved when asked), and takes the bus words that come
    back (`program`) into it. `head` / `head_valid`: the instruction at the buffer's head, popped
    with `pop`; it leaves a register (the buffer's output stage), so the issue decision on it starts at a
    flip-flop: an instruction out of the bus words is written into the buffer three cycles later (beside its
    predecode, below) and, into an empty buffer, at the head two cycles after that; then one a cycle.
    A reset starts again at `program_addr`. `drained`: nothing asked for is still to come (`reader_idle`, the
    reader's) and the buffer is empty.

    What the instruction alone decides is worked out on the way in, off the issue path, in three registered
    steps, each the owner's combinational answer to the registers of the step before: `incoming` is the
    instruction out of the bus words, and the owner's `prepared` (`prepared_bits`: its operands' products) is
    registered with it; a cycle later they are `staged` and `staged_prepared`, and the owner's `reached`
    (`reached_bits`: the sums on them) is registered with the instruction again; a cycle later they are
    `settled` and `settled_reached`, and the owner's `decoded` answer (`decoded_bits`: the comparisons) is
    registered with the instruction once more and stored beside it in the buffer, to come out with it on
    `head_decoded`."""

    def __init__(self, *, bus_bytes: int, addr_width: int, depth: int, chunk: int, prepared_bits: int = 0,
                 reached_bits: int = 0, decoded_bits: int = 0):
        if not 1 <= chunk <= depth or depth < 2:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"ProgramFetch chunk = {chunk}, depth = {depth}: depth at least 2 (a buffer of one "
                             f"register would take an instruction every other cycle), chunk from 1 to depth")
        self.bus_bytes, self.depth, self.chunk = bus_bytes, depth, chunk
        self.prepared_bits, self.reached_bits, self.decoded_bits = prepared_bits, reached_bits, decoded_bits
        super().__init__({
            "running": In(1), "program_addr": In(32),
            "fetch": Out(stream.Signature(transfer_layout(addr_width))),
            "program": In(stream.Signature(unsigned(8 * bus_bytes))), "reader_idle": In(1),
            "incoming": Out(INSTRUCTION_BITS), "prepared": In(prepared_bits),
            "staged": Out(INSTRUCTION_BITS), "staged_prepared": Out(prepared_bits), "reached": In(reached_bits),
            "settled": Out(INSTRUCTION_BITS), "settled_reached": Out(reached_bits), "decoded": In(decoded_bits),
            "head": Out(INSTRUCTION_BITS), "head_decoded": Out(decoded_bits), "head_valid": Out(1), "pop": In(1),
            "drained": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.gearbox = gearbox = Gearbox(8 * self.bus_bytes, INSTRUCTION_BITS)
        m.submodules.instructions = buffer = SyncFIFOBuffered(width=INSTRUCTION_BITS + self.decoded_bits,
                                                              depth=self.depth)
        wiring.connect(m, wiring.flipped(self.program), gearbox.input)
        # Three register stages before the buffer's LUT RAM: the owner's products of the operands end at
        # flip-flops, and so do its sums on them and its comparisons, not at the RAM's write port across the chip.
        staged_valid, settled_valid, entering_valid = Signal(), Signal(), Signal()
        # the data registers are not reset (their validity travels beside them)
        staged, staged_prepared, settled, settled_reached = (
            data_register(m, getattr(self, name), name) for name in ("staged", "staged_prepared", "settled",
                                                                      "settled_reached"))
        entering = Signal(INSTRUCTION_BITS + self.decoded_bits, reset_less=True)
        m.d.sync += [staged.eq(gearbox.output.payload), staged_prepared.eq(self.prepared),
                     staged_valid.eq(gearbox.output.valid),
                     settled.eq(staged), settled_reached.eq(self.reached), settled_valid.eq(staged_valid),
                     entering.eq(Cat(settled, self.decoded)), entering_valid.eq(settled_valid)]
        m.d.comb += [self.incoming.eq(gearbox.output.payload),
                     buffer.w_data.eq(entering), buffer.w_en.eq(entering_valid),
                     gearbox.output.ready.eq(1),       # room reserved when the chunk was asked for
                     Cat(self.head, self.head_decoded).eq(buffer.r_data), self.head_valid.eq(buffer.r_rdy),
                     buffer.r_en.eq(self.pop)]
        fetched = Signal(32)                          # instructions asked for
        reserved = Signal(range(self.depth + 1))
        chunk = self.chunk
        was_running = Signal()        # the first request waits a cycle: the units the start resets take it
        m.d.sync += was_running.eq(self.running)
        m.d.comb += [self.fetch.valid.eq(self.running & was_running & (reserved <= self.depth - chunk)),
                     self.fetch.payload.address.eq(self.program_addr + (fetched << 4)),
                     self.fetch.payload.length.eq(chunk * INSTRUCTION_BITS // 8)]
        asked = self.fetch.valid & self.fetch.ready
        m.d.sync += reserved.eq(reserved + Mux(asked, chunk, 0) - (buffer.r_en & buffer.r_rdy))
        with m.If(asked):
            m.d.sync += fetched.eq(fetched + chunk)
        m.d.comb += self.drained.eq(self.reader_idle & ~self.program.valid & ~gearbox.output.valid
                                    & ~staged_valid & ~settled_valid & ~entering_valid & (buffer.level == 0))
        return m
