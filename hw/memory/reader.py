"""`StreamReader`: an AXI4 read master that turns commands of (DRAM address, bytes) into a `lib.stream` of bus
words, for the controller's program fetch and for `LOAD`s into the on-chip memories.

Ports:
- `command` (stream of {address, length}): taken when no earlier command still has bursts to issue. `address`
  must be a bus-word multiple (else the sticky `error`, and the command is dropped); a `length` of 0 reads
  nothing.
- `data` (stream of bus words): ⌈length / bus⌉ beats per command, in order, as the R channel brings them
  (RREADY is `data.ready`); the last beat's bytes past `length` are whatever DRAM holds there.
- `axi`: AXI4 read master, INCR bursts of at most `max_burst` beats that never cross 4 KiB, up to `outstanding`
  in flight, also across commands.
- `idle`: no command in progress and no burst in flight. `error`: sticky (until reset), set by a misaligned
  command or a read response other than OKAY (its beat is still delivered).
"""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import BOUNDARY_BYTES, AXI4Read, Burst, Response, next_burst
from .loader import LENGTH_BITS

__all__ = ["StreamReader", "transfer_layout"]


def transfer_layout(addr_width: int) -> data.StructLayout:
    """A DRAM transfer: `length` bytes (0 … 2^24 − 1) from or to byte `address`."""
    return data.StructLayout({"address": unsigned(addr_width), "length": unsigned(LENGTH_BITS)})


class StreamReader(wiring.Component):
    def __init__(self, *, bus_bytes: int = 16, max_burst: int = 16, outstanding: int = 2, addr_width: int = 32):
        for name, value in (("max_burst", max_burst), ("outstanding", outstanding)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StreamReader {name} = {value!r}: must be a positive integer")
        if bus_bytes not in (8, 16, 32):
            raise ValueError(f"StreamReader bus_bytes = {bus_bytes}: the AXI4 port is 64, 128 or 256 bits wide")
        if max_burst > 256 or max_burst * bus_bytes > BOUNDARY_BYTES:
            raise ValueError(f"StreamReader max_burst = {max_burst}: at most 256 beats and 4 KiB per burst")
        self.bus_bytes, self.max_burst, self.outstanding, self.addr_width = bus_bytes, max_burst, outstanding, \
            addr_width
        super().__init__({
            "command": In(stream.Signature(transfer_layout(addr_width))),
            "data": Out(stream.Signature(unsigned(8 * bus_bytes))),
            "axi": Out(AXI4Read.Signature(addr_width, 8 * bus_bytes)),
            "idle": Out(1),
            "error": Out(1),
        })

    @classmethod
    def for_config(cls, accel, addr_width: int = 32) -> "StreamReader":
        return cls(bus_bytes=accel.dram_bytes_per_beat, max_burst=accel.dram_max_burst,
                   outstanding=accel.dram_outstanding, addr_width=addr_width)

    def elaborate(self, platform):
        m = Module()
        bus, axi = self.bus_bytes, self.axi
        size = (bus - 1).bit_length()
        m.d.comb += [axi.arsize.eq(size), axi.arburst.eq(Burst.INCR), axi.arid.eq(0), axi.arcache.eq(0b0011),
                     axi.arprot.eq(0)]
        active = Signal()
        address = Signal(self.addr_width)
        beats_left = Signal(LENGTH_BITS - size + 1)
        command = self.command.payload
        m.d.comb += self.command.ready.eq(~active)
        with m.If(self.command.valid & ~active):
            with m.If(command.address[:size] != 0):
                m.d.sync += self.error.eq(1)
            with m.Elif(command.length != 0):
                m.d.sync += [active.eq(1), address.eq(command.address),
                             beats_left.eq((command.length + bus - 1) >> size)]

        in_flight = Signal(range(self.outstanding + 1))
        beats, last_burst = next_burst(m, address, beats_left, self.max_burst, size)
        issue = active & (~axi.arvalid | axi.arready) & (in_flight < self.outstanding)
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += axi.arvalid.eq(0)
        with m.If(issue):
            m.d.sync += [axi.arvalid.eq(1), axi.araddr.eq(address), axi.arlen.eq(beats - 1),
                         address.eq(address + (beats << size)), beats_left.eq(beats_left - beats),
                         active.eq(~last_burst)]
        arriving = axi.rvalid & axi.rready
        m.d.sync += in_flight.eq(in_flight + issue - (arriving & axi.rlast))
        m.d.comb += [self.data.valid.eq(axi.rvalid & (in_flight != 0)), self.data.payload.eq(axi.rdata),
                     axi.rready.eq(self.data.ready & (in_flight != 0))]
        with m.If(arriving & (axi.rresp != Response.OKAY)):
            m.d.sync += self.error.eq(1)
        m.d.comb += self.idle.eq(~active & ~axi.arvalid & (in_flight == 0))
        return m
