"""What the DRAM transfer masters share (`StreamReader`, `StoreWriter`): their parameters, their commands of
(DRAM address, bytes), and the address channel that cuts a command into INCR bursts.

A command is taken when no earlier command still has bursts to issue; an address that is not a bus-word
multiple sets the sticky `error` and the command is dropped, as is one of length 0, a cycle after it is
taken. Bursts are at most `max_burst` beats, never cross 4 KiB, and wait while the subclass says there is no
room (`outstanding`).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import BOUNDARY_BYTES, Burst, planned_burst

__all__ = ["DramTransfer", "transfer_layout", "LENGTH_BITS"]

LENGTH_BITS = 24


def transfer_layout(addr_width: int) -> data.StructLayout:
    """A DRAM transfer: `length` bytes (0 … 2^24 − 1) from or to byte `address`."""
    return data.StructLayout({"address": unsigned(addr_width), "length": unsigned(LENGTH_BITS)})


class DramTransfer(wiring.Component):
    def __init__(self, members: dict, *, bus_bytes: int, max_burst: int, outstanding: int, addr_width: int):
        kind = type(self).__name__
        for name, value in (("max_burst", max_burst), ("outstanding", outstanding)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{kind} {name} = {value!r}: must be a positive integer")
        if bus_bytes not in (8, 16, 32):
            raise ValueError(f"{kind} bus_bytes = {bus_bytes}: the AXI4 port is 64, 128 or 256 bits wide")
        if max_burst > 256 or max_burst * bus_bytes > BOUNDARY_BYTES:
            raise ValueError(f"{kind} max_burst = {max_burst}: at most 256 beats and 4 KiB per burst")
        self.bus_bytes, self.max_burst, self.outstanding = bus_bytes, max_burst, outstanding
        self.addr_width = addr_width
        super().__init__({"command": In(stream.Signature(transfer_layout(addr_width))), **members,
                          "idle": Out(1), "error": Out(1)})

    @classmethod
    def for_config(cls, accel, addr_width: int = 32):
        return cls(bus_bytes=accel.dram_bytes_per_beat, max_burst=accel.dram_max_burst,
                   outstanding=accel.dram_outstanding, addr_width=addr_width)

    def _bursts(self, m, channel: str, room):
        """Commands into bursts on the AXI4 address channel `channel` ("ar" or "aw") of `self.axi`, one issued
        in a cycle with `room`, at most every other cycle, the first two cycles after its command is taken.
        Returns a namespace: `active` (a command has bursts to issue), `issue` (a burst is issued this cycle),
        its `beats` and whether it is the command's `last`, and the command's `tail` (bytes of its last beat,
        1 … bus)."""
        bus, axi = self.bus_bytes, self.axi
        size = (bus - 1).bit_length()
        signal = lambda name: getattr(axi, f"{channel}{name}")     # noqa: E731
        m.d.comb += [signal("size").eq(size), signal("burst").eq(Burst.INCR), signal("id").eq(0),
                     signal("cache").eq(0b0011), signal("prot").eq(0)]
        active = Signal(name=f"{channel}_active")
        address = Signal(self.addr_width, name=f"{channel}_address")
        beats_left = Signal(LENGTH_BITS - size + 1, name=f"{channel}_beats_left")
        tail = Signal(size + 1, name=f"{channel}_tail")
        dropped = Signal(name=f"{channel}_dropped")      # the command taken moves nothing: misaligned or empty
        command = self.command.payload
        m.d.comb += self.command.ready.eq(~active)
        # While no command is active the registers follow the command's fields, offered or not (nothing reads them
        # then), so neither `valid` nor a comparison of the fields reaches their enable; a command taken moves
        # into `active`, and one that moves nothing is dropped a cycle later.
        with m.If(~active):
            misaligned = command.address[:size] != 0
            m.d.sync += [address.eq(command.address), beats_left.eq((command.length + bus - 1) >> size),
                         tail.eq(Mux(command.length[:size] == 0, bus, command.length[:size]))]
            with m.If(self.command.valid):
                m.d.sync += [active.eq(1), dropped.eq(misaligned | (command.length == 0))]
                with m.If(misaligned):
                    m.d.sync += self.error.eq(1)
        with m.If(dropped):
            m.d.sync += [active.eq(0), dropped.eq(0)]
        valid, ready = signal("valid"), signal("ready")
        issue = Signal(name=f"{channel}_issue")
        beats, last, known = planned_burst(m, address, beats_left, self.max_burst, size, prefix=channel,
                                           changing=~active | issue)
        m.d.comb += issue.eq(active & ~dropped & known & (~valid | ready) & room)
        with m.If(valid & ready):
            m.d.sync += valid.eq(0)
        with m.If(issue):
            m.d.sync += [valid.eq(1), signal("addr").eq(address), signal("len").eq(beats - 1),
                         address.eq(address + (beats << size)), beats_left.eq(beats_left - beats),
                         active.eq(~last)]
        return SimpleNamespace(active=active, issue=issue, beats=beats, last=last, tail=tail)
