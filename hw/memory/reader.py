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
from amaranth.lib import stream
from amaranth.lib.wiring import Out

from .axi import AXI4Read, Response
from .transfer import DramTransfer, transfer_layout

__all__ = ["StreamReader", "transfer_layout"]


class StreamReader(DramTransfer):
    def __init__(self, *, bus_bytes: int = 16, max_burst: int = 16, outstanding: int = 2, addr_width: int = 32):
        super().__init__({"data": Out(stream.Signature(unsigned(8 * bus_bytes))),
                          "axi": Out(AXI4Read.Signature(addr_width, 8 * bus_bytes))},
                         bus_bytes=bus_bytes, max_burst=max_burst, outstanding=outstanding, addr_width=addr_width)

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        in_flight = Signal(range(self.outstanding + 1))
        bursts = self._bursts(m, "ar", in_flight < self.outstanding)
        arriving = axi.rvalid & axi.rready
        m.d.sync += in_flight.eq(in_flight + bursts.issue - (arriving & axi.rlast))
        m.d.comb += [self.data.valid.eq(axi.rvalid & (in_flight != 0)), self.data.payload.eq(axi.rdata),
                     axi.rready.eq(self.data.ready & (in_flight != 0))]
        with m.If(arriving & (axi.rresp != Response.OKAY)):
            m.d.sync += self.error.eq(1)
        m.d.comb += self.idle.eq(~bursts.active & ~axi.arvalid & (in_flight == 0))
        return m
