"""Several AXI4 masters on one AXI4 port, a burst at a time: `ReadArbiter` (AR/R), `WriteArbiter` (AW/W/B) and
`AXI4Arbiter` (both, for whole AXI4 masters: the board's accelerator and host bridge on its SDRAM).

`ReadArbiter`: several AXI4 read masters share one AXI4 read port, a burst at a time.

Master 0 (the controller's program fetch) wins whenever it requests; the others take turns (round robin from the one
after the last served). A granted master's AR is taken into a register (ARREADY the cycle after its grant) and
offered on the port from there until ARREADY; its index goes into a FIFO, and R beats return to the master at the
FIFO's head until RLAST (the port's bursts answer in order: one ID). The FIFO holds `depth` bursts: at most that
many are in flight on the shared port (the masters' own limits apply below it); `pending` is high while a burst is
in flight. Every master sees the AXI4 rules kept: its ARREADY only while it is granted, its RVALID only for its own
beats.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..common.pipeline import skid_buffer
from .axi import AXI4, AXI4Read, AXI4Write

__all__ = ["ReadArbiter", "WriteArbiter", "AXI4Arbiter"]

_REQUEST = ("araddr", "arlen", "arsize", "arburst", "arid", "arcache", "arprot")


def _grant(m, requests, room, *, first_wins: bool):
    """(granted, grant): a master is granted while none is and there is `room`: request 0 first if
    `first_wins`, else (and among the others) in turn from the one after the last granted. The caller clears
    `granted` when the grant is used."""
    count = len(requests)
    granted, grant = Signal(), Signal(range(count))
    last = Signal(range(count))                   # the last of the turn-takers served
    turns = list(range(1 if first_wins else 0, count))
    def in_turn():
        with m.Switch(last):                      # from the one after `last`
            for served in range(count):
                start = turns.index(served) + 1 if served in turns else 0
                with m.Case(served):
                    for turn, candidate in enumerate(turns[start:] + turns[:start]):
                        with (m.If if turn == 0 else m.Elif)(requests[candidate]):
                            m.d.sync += [granted.eq(1), grant.eq(candidate), last.eq(candidate)]

    with m.If(~granted & room):
        if first_wins:
            with m.If(requests[0]):
                m.d.sync += [granted.eq(1), grant.eq(0)]
            with m.Else():
                in_turn()
        else:
            in_turn()
    return granted, grant


def _hold_request(m, inputs, channel: str, fields, bus, granted, grant):
    """The granted master's address request (`channel` "ar" or "aw") taken into a register the cycle after
    the grant (its READY then, whatever the port does) and offered on `bus` from there until the port's READY;
    returns that handshake (the request taken by the port). No path runs from the port's READY to a master."""
    holding = Signal(name=f"{channel}_holding")
    held = {name: Signal.like(getattr(bus, name), name=f"{name}_held") for name in fields}
    for index, port in enumerate(inputs):
        chosen = granted & (grant == index) & ~holding
        m.d.comb += getattr(port, f"{channel}ready").eq(chosen)
        with m.If(chosen & getattr(port, f"{channel}valid")):
            m.d.sync += [holding.eq(1)] + [held[name].eq(getattr(port, name)) for name in fields]
    taken = getattr(bus, f"{channel}valid") & getattr(bus, f"{channel}ready")
    m.d.comb += [getattr(bus, f"{channel}valid").eq(holding)] + [getattr(bus, name).eq(held[name]) for name in fields]
    with m.If(taken):
        m.d.sync += holding.eq(0)
    return taken


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

        granted, grant = _grant(m, [port.arvalid for port in inputs], order.w_rdy, first_wins=True)
        taken = _hold_request(m, inputs, "ar", _REQUEST, bus, granted, grant)
        m.d.comb += [order.w_en.eq(taken), order.w_data.eq(grant)]
        with m.If(taken):
            m.d.sync += granted.eq(0)

        head = order.r_data
        for index, port in enumerate(inputs):
            mine = order.r_rdy & (head == index)
            m.d.comb += [port.rvalid.eq(mine & bus.rvalid), port.rdata.eq(bus.rdata), port.rresp.eq(bus.rresp),
                         port.rlast.eq(bus.rlast), port.rid.eq(bus.rid)]
            with m.If(mine):
                m.d.comb += bus.rready.eq(port.rready)
        m.d.comb += [order.r_en.eq(bus.rvalid & bus.rready & bus.rlast), self.pending.eq(order.r_rdy)]
        return m


_WRITE_REQUEST = ("awaddr", "awlen", "awsize", "awburst", "awid", "awcache", "awprot")


class WriteArbiter(wiring.Component):
    """Several AXI4 write masters share one AXI4 write port, a burst at a time, in turn (round robin). A granted
    master's AW is taken into a register (AWREADY the cycle after its grant) and offered on the port from there
    until AWREADY; its index goes into two FIFOs of `depth` bursts: W beats pass (through a two-entry buffer, so
    that WREADY is a register on either side) from the master at the head of the first, a cycle after its AW is
    taken at the earliest, until WLAST (AXI4 has no write ID: data follow the addresses' order), B responses return
    to the master at the head of the second (the port answers in order: one ID). A master may offer W beats before
    its AW: they wait until its burst's turn."""

    def __init__(self, signature: AXI4Write.Signature, masters: int, depth: int = 4):
        if not isinstance(masters, int) or masters < 1 or not isinstance(depth, int) or depth < 1:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"WriteArbiter masters = {masters!r}, depth = {depth!r}: at least one of each")
        self.masters, self.depth = masters, depth
        super().__init__({"inputs": In(signature).array(masters), "bus": Out(signature)})

    def elaborate(self, platform):
        m = Module()
        bus, inputs = self.bus, self.inputs
        width = max(1, (self.masters - 1).bit_length())
        # the W side's order leaves a register (a buffered FIFO): which master's beats pass is not a read of the
        # FIFO's storage through the head pointer's multiplexer on the way into every master's WREADY
        m.submodules.data_order = data_order = SyncFIFOBuffered(width=width, depth=self.depth)
        m.submodules.response_order = response_order = SyncFIFO(width=width, depth=self.depth)
        granted, grant = _grant(m, [port.awvalid for port in inputs], data_order.w_rdy & response_order.w_rdy,
                                first_wins=False)
        taken = _hold_request(m, inputs, "aw", _WRITE_REQUEST, bus, granted, grant)
        m.d.comb += [data_order.w_en.eq(taken), data_order.w_data.eq(grant),
                     response_order.w_en.eq(taken), response_order.w_data.eq(grant)]
        with m.If(taken):
            m.d.sync += granted.eq(0)
        # W beats pass through a two-entry buffer: both its sides' handshakes come from registers
        beat = {name: Signal.like(getattr(bus, name), name=f"beat_{name}") for name in _BEAT}
        beat_valid, beat_ready = Signal(), Signal()
        for index, port in enumerate(inputs):
            writer = data_order.r_rdy & (data_order.r_data == index)
            answered = response_order.r_rdy & (response_order.r_data == index)
            m.d.comb += [port.wready.eq(writer & beat_ready),
                         port.bvalid.eq(answered & bus.bvalid), port.bresp.eq(bus.bresp), port.bid.eq(bus.bid)]
            with m.If(writer):
                m.d.comb += [beat_valid.eq(port.wvalid)] + [beat[name].eq(getattr(port, name)) for name in _BEAT]
            with m.If(answered):
                m.d.comb += bus.bready.eq(port.bready)
        skid_buffer(m, beat_valid, beat_ready, beat, bus.wvalid, bus.wready, {name: getattr(bus, name)
                                                                             for name in _BEAT})
        m.d.comb += [data_order.r_en.eq(beat_valid & beat_ready & beat["wlast"]),
                     response_order.r_en.eq(bus.bvalid & bus.bready)]
        return m


_BEAT = ("wdata", "wstrb", "wlast")


class AXI4Arbiter(wiring.Component):
    """Whole AXI4 masters on one AXI4 port: a `ReadArbiter` (master 0 first) and a `WriteArbiter`, side by
    side (`inputs[i]` and `bus` carry both halves)."""

    def __init__(self, signature: AXI4.Signature, masters: int, depth: int = 4):
        self.read = ReadArbiter(AXI4Read.Signature(signature.addr_width, signature.data_width, signature.id_width),
                                masters, depth)
        self.write = WriteArbiter(AXI4Write.Signature(signature.addr_width, signature.data_width,
                                                      signature.id_width), masters, depth)
        super().__init__({"inputs": In(signature).array(masters), "bus": Out(signature)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.read, m.submodules.write = self.read, self.write
        for half in (self.read, self.write):
            members = half.bus.signature.members
            for name, member in members.items():
                pairs = [(getattr(half.bus, name), getattr(self.bus, name))]
                pairs += [(getattr(half.inputs[i], name), getattr(self.inputs[i], name))
                          for i in range(len(self.inputs))]
                for index, (inner, outer) in enumerate(pairs):
                    from_outside = (member.flow == Out) == (index > 0)
                    m.d.comb += inner.eq(outer) if from_outside else outer.eq(inner)
        return m
