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
from amaranth.lib import data, stream
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .axi import AXI4Write, Response
from .transfer import DramTransfer

__all__ = ["StoreWriter"]


class StoreWriter(DramTransfer):
    def __init__(self, *, bus_bytes: int = 16, max_burst: int = 16, outstanding: int = 2, addr_width: int = 32):
        super().__init__({"data": In(stream.Signature(unsigned(8 * bus_bytes))),
                          "axi": Out(AXI4Write.Signature(addr_width, 8 * bus_bytes))},
                         bus_bytes=bus_bytes, max_burst=max_burst, outstanding=outstanding, addr_width=addr_width)

    def elaborate(self, platform):
        m = Module()
        bus, axi = self.bus_bytes, self.axi
        size = (bus - 1).bit_length()
        m.d.comb += axi.bready.eq(1)

        # --- Commands → bursts (AW channel), each remembered for the W channel ----------------------------
        burst = data.StructLayout({"length": unsigned(8), "last": 1, "tail": unsigned(size + 1)})
        m.submodules.in_flight = in_flight = SyncFIFO(width=burst.size, depth=max(2, self.outstanding))
        awaiting = Signal(range(self.outstanding + 1))  # bursts issued whose response has not come
        bursts = self._bursts(m, "aw", awaiting < self.outstanding)
        with m.If(bursts.issue):
            record = Signal(burst)
            m.d.comb += [record.length.eq(bursts.beats - 1), record.last.eq(bursts.last),
                         record.tail.eq(bursts.tail), in_flight.w_data.eq(record), in_flight.w_en.eq(1)]
        response = axi.bvalid & axi.bready
        m.d.sync += awaiting.eq(awaiting + bursts.issue - response)
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
        m.d.comb += self.idle.eq(~bursts.active & ~axi.awvalid & (awaiting == 0))
        return m
