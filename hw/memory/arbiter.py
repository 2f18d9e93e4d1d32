"""`ReadArbiter`: several AXI4 read masters share one AXI4 read port, a burst at a time.

Master 0 (the controller's program fetch) wins whenever it requests; the others take turns (round robin from
the one after the last served). A granted master's AR passes through until ARREADY; its index goes into a FIFO,
and R beats return to the master at the FIFO's head until RLAST (the port's bursts answer in order: one ID).
The FIFO holds `depth` bursts: at most that many are in flight on the shared port (the masters' own limits
apply below it); `pending` is high while a burst is in flight. Every master sees the AXI4 rules kept: its ARREADY only while it is granted, its RVALID only
for its own beats.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .axi import AXI4Read

__all__ = ["ReadArbiter"]

_REQUEST = ("araddr", "arlen", "arsize", "arburst", "arid", "arcache", "arprot")


class ReadArbiter(wiring.Component):
    def __init__(self, signature: AXI4Read.Signature, masters: int, depth: int = 4):
        if not isinstance(masters, int) or masters < 1:
            raise ValueError(f"ReadArbiter masters = {masters!r}: at least one")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"ReadArbiter depth = {depth!r}: at least one burst in flight")
        self.masters, self.depth = masters, depth
        super().__init__({"inputs": In(signature).array(masters), "bus": Out(signature), "pending": Out(1)})

    def elaborate(self, platform):
        m = Module()
        bus, inputs = self.bus, self.inputs
        count = self.masters
        m.submodules.order = order = SyncFIFO(width=max(1, (count - 1).bit_length()), depth=self.depth)

        granted = Signal()
        grant = Signal(range(count))
        last = Signal(range(count))               # the last of the others served, for the round robin
        with m.If(~granted & order.w_rdy):
            with m.If(inputs[0].arvalid):
                m.d.sync += [granted.eq(1), grant.eq(0)]
            with m.Else():
                others = list(range(1, count))
                with m.Switch(last):                  # the others in turn, from the one after `last`
                    for served in range(count):
                        start = others.index(served) + 1 if served in others else 0
                        with m.Case(served):
                            for turn, candidate in enumerate(others[start:] + others[:start]):
                                with (m.If if turn == 0 else m.Elif)(inputs[candidate].arvalid):
                                    m.d.sync += [granted.eq(1), grant.eq(candidate)]
        for index, port in enumerate(inputs):
            chosen = granted & (grant == index)
            m.d.comb += port.arready.eq(chosen & bus.arready)
            with m.If(chosen):
                m.d.comb += [bus.arvalid.eq(port.arvalid)] + [getattr(bus, name).eq(getattr(port, name))
                                                             for name in _REQUEST]
        taken = bus.arvalid & bus.arready
        m.d.comb += [order.w_en.eq(taken), order.w_data.eq(grant)]
        with m.If(taken):
            m.d.sync += granted.eq(0)
            with m.If(grant != 0):
                m.d.sync += last.eq(grant)

        head = order.r_data
        for index, port in enumerate(inputs):
            mine = order.r_rdy & (head == index)
            m.d.comb += [port.rvalid.eq(mine & bus.rvalid), port.rdata.eq(bus.rdata), port.rresp.eq(bus.rresp),
                         port.rlast.eq(bus.rlast), port.rid.eq(bus.rid)]
            with m.If(mine):
                m.d.comb += bus.rready.eq(port.rready)
        m.d.comb += [order.r_en.eq(bus.rvalid & bus.rready & bus.rlast), self.pending.eq(order.r_rdy)]
        return m
