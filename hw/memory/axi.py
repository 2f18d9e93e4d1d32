"""AXI4 (AMBA AXI4, IHI 0022) read channels as a `wiring.Signature`, from the master's side.

`AXI4Read.Signature(addr_width, data_width, id_width)`: the AR channel (`arvalid`, `arready`, `araddr`,
`arlen`, `arsize`, `arburst`, `arid`, and `arcache`/`arprot` for interconnects that want them) and the R
channel (`rvalid`, `rready`, `rdata`, `rresp`, `rlast`, `rid`). Members keep the specification's names, flat
rather than as `lib.stream` channels, so the exported ports (`<name>__araddr`, …) map one to one onto an
interconnect's or a memory controller's AXI4 slave port.
"""

from __future__ import annotations

from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI4Read", "Burst", "Response", "BOUNDARY_BYTES", "MAX_BURST_BEATS"]

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


class AXI4Read:
    class Signature(wiring.Signature):
        """AXI4 read address and read data channels, master side, for `data_width`-bit beats (64, 128, 256,
        … a power of two of at least 8 bits)."""

        def __init__(self, addr_width: int = 32, data_width: int = 128, id_width: int = 1):
            if not isinstance(addr_width, int) or not 12 <= addr_width <= 64:
                raise ValueError(f"AXI4Read addr_width = {addr_width!r}: must be an integer from 12 to 64")
            if not isinstance(data_width, int) or data_width < 8 or data_width & (data_width - 1) \
                    or data_width > 1024:
                raise ValueError(f"AXI4Read data_width = {data_width!r}: must be a power of two from 8 to 1024")
            if not isinstance(id_width, int) or not 1 <= id_width <= 16:
                raise ValueError(f"AXI4Read id_width = {id_width!r}: must be an integer from 1 to 16")
            self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
            super().__init__({
                "arvalid": Out(1), "arready": In(1),
                "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3), "arburst": Out(Burst),
                "arid": Out(id_width), "arcache": Out(4), "arprot": Out(3),
                "rvalid": In(1), "rready": Out(1),
                "rdata": In(data_width), "rresp": In(Response), "rlast": In(1), "rid": In(id_width),
            })

        @property
        def beat_bytes(self) -> int:
            return self.data_width // 8

        def __eq__(self, other):
            return (type(other) is type(self) and (self.addr_width, self.data_width, self.id_width)
                    == (other.addr_width, other.data_width, other.id_width))

        def __repr__(self):
            return f"AXI4Read.Signature({self.addr_width}, {self.data_width}, {self.id_width})"
