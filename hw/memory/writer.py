"""The AXI4 write master of `STORE`: commands of (DRAM address, bytes) and a stream of bus words become INCR
bursts to DRAM, with byte strobes on the last beat.

Ports:
- `command` (stream of {address, length}): taken when no earlier command still has bursts to issue. `address`
  must be a bus-word multiple (else the sticky `error`, and the command is dropped, its data never read); a
  `length` of 0 writes nothing.
- `data` (stream of bus words): the command's bytes in order, ⌈length / bus⌉ beats, least significant byte
  first; taken as the W channel moves them (a beat may leave before its burst's AW handshake, as AXI4 allows).
- `axi`: AXI4 write master. INCR bursts of at most `max_burst` beats that never cross 4 KiB, ARSIZE the bus,
  up to `outstanding` bursts waiting for their response; WSTRB all ones but on the command's last beat (its
  `length mod bus` low bytes, or all); BREADY always high.
- `idle`: no command in progress and no response awaited. `error`: sticky, set by a misaligned command or a
  write response other than OKAY.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .axi import BOUNDARY_BYTES, AXI4Write, Burst, Response, next_burst
from .loader import LENGTH_BITS
from .reader import transfer_layout

__all__ = ["StoreWriter"]


class StoreWriter(wiring.Component):
    def __init__(self, *, bus_bytes: int = 16, max_burst: int = 16, outstanding: int = 2, addr_width: int = 32):
        for name, value in (("max_burst", max_burst), ("outstanding", outstanding)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StoreWriter {name} = {value!r}: must be a positive integer")
        if bus_bytes not in (8, 16, 32):
            raise ValueError(f"StoreWriter bus_bytes = {bus_bytes}: the AXI4 port is 64, 128 or 256 bits wide")
        if max_burst > 256 or max_burst * bus_bytes > BOUNDARY_BYTES:
            raise ValueError(f"StoreWriter max_burst = {max_burst}: at most 256 beats and 4 KiB per burst")
        self.bus_bytes, self.max_burst, self.outstanding = bus_bytes, max_burst, outstanding
        self.addr_width = addr_width
        super().__init__({
            "command": In(stream.Signature(transfer_layout(addr_width))),
            "data": In(stream.Signature(unsigned(8 * bus_bytes))),
            "axi": Out(AXI4Write.Signature(addr_width, 8 * bus_bytes)),
            "idle": Out(1),
            "error": Out(1),
        })

    @classmethod
    def for_config(cls, accel, addr_width: int = 32) -> "StoreWriter":
        return cls(bus_bytes=accel.dram_bytes_per_beat, max_burst=accel.dram_max_burst,
                   outstanding=accel.dram_outstanding, addr_width=addr_width)

    def elaborate(self, platform):
        m = Module()
        bus, axi = self.bus_bytes, self.axi
        size = (bus - 1).bit_length()
        m.d.comb += [axi.awsize.eq(size), axi.awburst.eq(Burst.INCR), axi.awid.eq(0), axi.awcache.eq(0b0011),
                     axi.awprot.eq(0), axi.bready.eq(1)]

        # --- Commands → bursts (AW channel) ----------------------------------------------------------------
        burst = data.StructLayout({"length": unsigned(8), "last": 1, "tail": unsigned(size + 1)})
        m.submodules.in_flight = in_flight = SyncFIFO(width=burst.size, depth=max(2, self.outstanding))
        active = Signal()
        address = Signal(self.addr_width)
        beats_left = Signal(LENGTH_BITS - size + 1)
        tail = Signal(size + 1)                          # bytes of the command's last beat, 1 … bus
        command = self.command.payload
        misaligned = command.address[:size] != 0
        m.d.comb += self.command.ready.eq(~active)
        with m.If(self.command.valid & ~active):
            with m.If(misaligned):
                m.d.sync += self.error.eq(1)
            with m.Elif(command.length != 0):
                m.d.sync += [active.eq(1), address.eq(command.address),
                             beats_left.eq((command.length + bus - 1) >> size),
                             tail.eq(Mux(command.length[:size] == 0, bus, command.length[:size]))]

        awaiting = Signal(range(self.outstanding + 1))  # bursts issued whose response has not come
        beats, last_burst = next_burst(m, address, beats_left, self.max_burst, size)
        issue = active & (~axi.awvalid | axi.awready) & (awaiting < self.outstanding)
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += axi.awvalid.eq(0)
        with m.If(issue):
            record = Signal(burst)
            m.d.comb += [record.length.eq(beats - 1), record.last.eq(last_burst), record.tail.eq(tail),
                         in_flight.w_data.eq(record), in_flight.w_en.eq(1)]
            m.d.sync += [axi.awvalid.eq(1), axi.awaddr.eq(address), axi.awlen.eq(beats - 1),
                         address.eq(address + (beats << size)), beats_left.eq(beats_left - beats),
                         active.eq(~last_burst)]
        response = axi.bvalid & axi.bready
        m.d.sync += awaiting.eq(awaiting + issue - response)
        with m.If(response & (axi.bresp != Response.OKAY)):
            m.d.sync += self.error.eq(1)

        # --- Data → beats (W channel) ----------------------------------------------------------------------
        head = Signal(burst)
        beat = Signal(8)
        m.d.comb += head.eq(in_flight.r_data)
        final_beat = beat == head.length
        m.d.comb += [axi.wvalid.eq(in_flight.r_rdy & self.data.valid), axi.wdata.eq(self.data.payload),
                     axi.wlast.eq(final_beat),
                     self.data.ready.eq(in_flight.r_rdy & axi.wready)]
        with m.If(head.last & final_beat):
            m.d.comb += axi.wstrb.eq((Const(1, bus + 1) << head.tail) - 1)
        with m.Else():
            m.d.comb += axi.wstrb.eq((1 << bus) - 1)
        with m.If(axi.wvalid & axi.wready):
            m.d.sync += beat.eq(Mux(final_beat, 0, beat + 1))
            m.d.comb += in_flight.r_en.eq(final_beat)
        m.d.comb += self.idle.eq(~active & ~axi.awvalid & (awaiting == 0))
        return m
