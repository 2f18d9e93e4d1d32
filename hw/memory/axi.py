"""AXI4 (AMBA AXI4, IHI 0022) channels as `wiring.Signature`s, from the master's side.

`AXI4Read.Signature(addr_width, data_width, id_width)`: the AR channel (`arvalid`, `arready`, `araddr`,
`arlen`, `arsize`, `arburst`, `arid`, and `arcache`/`arprot` for interconnects that want them) and the R
channel (`rvalid`, `rready`, `rdata`, `rresp`, `rlast`, `rid`). Members keep the specification's names, flat
rather than as `lib.stream` channels, so the exported ports (`<name>__araddr`, …) map one to one onto an
interconnect's or a memory controller's AXI4 slave port. `AXI4Write.Signature`: the AW, W (`wdata`, `wstrb`,
`wlast`) and B channels; `AXI4.Signature`: both, one master port.
"""

from __future__ import annotations

from amaranth import Mux, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI4", "AXI4Lite", "AXI4Read", "AXI4Write", "join", "next_burst", "planned_burst", "Burst", "Response",
           "BOUNDARY_BYTES", "MAX_BURST_BEATS"]

BOUNDARY_BYTES = 4096    # no burst may cross a 4 KiB address boundary
MAX_BURST_BEATS = 256    # INCR bursts: ARLEN + 1 ≤ 256


class Burst(enum.Enum, shape=2):
    FIXED = 0
    INCR = 1
    WRAP = 2


class Response(enum.Enum, shape=2):
    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


def _read_members(addr_width, data_width, id_width) -> dict:
    return {
        "arvalid": Out(1), "arready": In(1),
        "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3), "arburst": Out(Burst),
        "arid": Out(id_width), "arcache": Out(4), "arprot": Out(3),
        "rvalid": In(1), "rready": Out(1),
        "rdata": In(data_width), "rresp": In(Response), "rlast": In(1), "rid": In(id_width),
    }


def _write_members(addr_width, data_width, id_width) -> dict:
    return {
        "awvalid": Out(1), "awready": In(1),
        "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3), "awburst": Out(Burst),
        "awid": Out(id_width), "awcache": Out(4), "awprot": Out(3),
        "wvalid": Out(1), "wready": In(1), "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
        "bvalid": In(1), "bready": Out(1), "bresp": In(Response), "bid": In(id_width),
    }


class _Signature(wiring.Signature):
    """A master port for `data_width`-bit beats (a power of two from 8 to 1024 bits)."""

    _members = None

    def __init__(self, addr_width: int = 32, data_width: int = 128, id_width: int = 1):
        kind = type(self).__qualname__.split(".")[0]
        if not isinstance(addr_width, int) or not 12 <= addr_width <= 64:
            raise ValueError(f"{kind} addr_width = {addr_width!r}: must be an integer from 12 to 64")
        if not isinstance(data_width, int) or data_width < 8 or data_width & (data_width - 1) or data_width > 1024:
            raise ValueError(f"{kind} data_width = {data_width!r}: must be a power of two from 8 to 1024")
        if not isinstance(id_width, int) or not 1 <= id_width <= 16:
            raise ValueError(f"{kind} id_width = {id_width!r}: must be an integer from 1 to 16")
        self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
        members = {}
        for build in type(self)._members:
            members.update(build(addr_width, data_width, id_width))
        super().__init__(members)

    @property
    def beat_bytes(self) -> int:
        return self.data_width // 8

    def __eq__(self, other):
        return (type(other) is type(self) and (self.addr_width, self.data_width, self.id_width)
                == (other.addr_width, other.data_width, other.id_width))

    def __repr__(self):
        return f"{type(self).__qualname__}({self.addr_width}, {self.data_width}, {self.id_width})"


class AXI4Read:
    class Signature(_Signature):
        """AXI4 read address and read data channels, master side."""
        _members = (_read_members,)


class AXI4Write:
    class Signature(_Signature):
        """AXI4 write address, write data and write response channels, master side."""
        _members = (_write_members,)


class AXI4:
    class Signature(_Signature):
        """A whole AXI4 master port: read and write channels."""
        _members = (_read_members, _write_members)


def join(m, master, bus, signature) -> None:
    """Connect `master`'s members of `signature` to the same members of `bus` (which may have more: a read or a
    write master on a whole AXI4 port): `bus`'s take the master's outputs (`Out` members), the master's inputs
    take `bus`'s. Either may be a port seen from inside its component or from outside."""
    for name, member in signature.members.items():
        source, sink = (master, bus) if member.flow == Out else (bus, master)
        m.d.comb += getattr(sink, name).eq(getattr(source, name))


def next_burst(m, address, beats_left, max_burst: int, size: int):
    """The beats of the next INCR burst from byte `address` with `beats_left` beats of 2^`size` bytes to go:
    min(beats_left, max_burst, the beats to the next 4 KiB boundary). Returns (beats, whether it is the last)."""
    to_boundary = (BOUNDARY_BYTES - address[:12]) >> size
    wanted = Signal(range(max_burst + 1))
    beats = Signal(range(max_burst + 1))
    m.d.comb += [wanted.eq(Mux(beats_left < max_burst, beats_left, max_burst)),
                 beats.eq(Mux(to_boundary < wanted, to_boundary, wanted))]
    return beats, beats == beats_left


def planned_burst(m, address, beats_left, max_burst: int, size: int, *, changing, prefix: str):
    """`next_burst`'s (beats, last) worked out from the registers `address` and `beats_left` into registers of
    their own, so that its comparisons are not in the cycle that issues the burst and adds to the address.
    `changing` is high in a cycle that changes either register; the plan is `known` (of the registers as they
    are now) from the cycle after the next. Returns (beats, last, known)."""
    next_beats, next_last = next_burst(m, address, beats_left, max_burst, size)
    beats = Signal.like(next_beats, name=f"{prefix}_beats", reset_less=True)     # data: `known` says when
    last = Signal(name=f"{prefix}_last", reset_less=True)
    known = Signal(name=f"{prefix}_known")
    m.d.sync += [beats.eq(next_beats), last.eq(next_last), known.eq(~changing)]
    return beats, last, known


class AXI4Lite:
    class Signature(wiring.Signature):
        """AXI4-Lite, master side (a slave takes it `flip()`ped): AW, W, B, AR, R with the specification's names,
        `data_width` 32 or 64."""

        def __init__(self, addr_width: int = 8, data_width: int = 32):
            if not isinstance(addr_width, int) or not 2 <= addr_width <= 64:
                raise ValueError(f"AXI4Lite addr_width = {addr_width!r}: must be an integer from 2 to 64")
            if data_width not in (32, 64):
                raise ValueError(f"AXI4Lite data_width = {data_width!r}: must be 32 or 64")
            self.addr_width, self.data_width = addr_width, data_width
            super().__init__({
                "awvalid": Out(1), "awready": In(1), "awaddr": Out(addr_width), "awprot": Out(3),
                "wvalid": Out(1), "wready": In(1), "wdata": Out(data_width), "wstrb": Out(data_width // 8),
                "bvalid": In(1), "bready": Out(1), "bresp": In(Response),
                "arvalid": Out(1), "arready": In(1), "araddr": Out(addr_width), "arprot": Out(3),
                "rvalid": In(1), "rready": Out(1), "rdata": In(data_width), "rresp": In(Response),
            })

        def __eq__(self, other):
            return type(other) is type(self) and (self.addr_width, self.data_width) == (other.addr_width,
                                                                                       other.data_width)

        def __repr__(self):
            return f"AXI4Lite.Signature({self.addr_width}, {self.data_width})"
