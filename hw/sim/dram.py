"""A DRAM behind an AXI4 read port, for simulation: `AXI4ReadModel` serves a master's AR/R channels from a
NumPy byte image, cycle by cycle, through the `ctx.set / ctx.get` calls of an Amaranth async testbench, so it
runs in the Python simulator and in the fast harness (`hw.sim.verilator`) alike: each cycle the testbench
calls `drive(ctx, port)` before `await ctx.tick()` and `advance()` after it.

Timing: the first beat of a burst is available `latency` cycles after its AR handshake; beats leave at most
`beats_per_cycle` (≤ 1) per cycle on average, bursts in order; ARREADY is low with probability `ar_stall` and
RVALID withheld with probability `r_stall` each cycle (seeded). Once RVALID is high it stays high, with the
same beat, until accepted, as the slave's rules require.

It checks the master's rules and raises `AXIProtocolError` on a violation: ARVALID held until accepted with
ARADDR/ARLEN/ARSIZE/ARBURST stable, INCR bursts of the full bus width, addresses aligned to the beat, no burst
crossing 4 KiB, no read outside the image, RREADY never needed (a master may stall R, but the count of
cycles it does is kept). It counts bytes read (`bytes_read`, whole beats) and the most bursts in flight.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from hw.memory.axi import BOUNDARY_BYTES, Burst, Response

__all__ = ["AXI4ReadModel", "AXIProtocolError"]


class AXIProtocolError(AssertionError):
    """The master broke an AXI4 rule; the message says which and when."""


@dataclass
class _Burst:
    address: int
    beats: int
    ready_at: int
    sent: int = 0


class AXI4ReadModel:
    def __init__(self, image: np.ndarray, bus_bytes: int, *, latency: int = 8, beats_per_cycle: float = 1.0,
                 ar_stall: float = 0.0, r_stall: float = 0.0, seed: int = 0):
        if not 0 < beats_per_cycle <= 1:
            raise ValueError(f"beats_per_cycle = {beats_per_cycle}: must be in (0, 1]")
        if latency < 1:
            raise ValueError(f"latency = {latency}: at least one cycle")
        self.image = np.asarray(image, dtype=np.uint8)
        self.bus_bytes, self.latency, self.beats_per_cycle = bus_bytes, latency, beats_per_cycle
        self.ar_stall, self.r_stall = ar_stall, r_stall
        self.rng = np.random.default_rng(seed)
        self.bytes_read = 0
        self.bursts = 0
        self.max_in_flight = 0
        self.r_backpressure_cycles = 0
        self.cycle = 0
        self._pending: deque[_Burst] = deque()
        self._waiting = None     # the AR request seen last cycle and not accepted: must stay the same
        self._request = None
        self._arready = False
        self._credit = 0.0
        self._beat = None        # the beat on RVALID, held until accepted
        self._accepted = False

    def drive(self, ctx, port) -> None:
        """This cycle's ARREADY and R beat, and what the master presents; call before the clock edge."""
        self._arready = bool(self.rng.random() >= self.ar_stall)
        ctx.set(port.arready, self._arready)
        self._credit = min(1.0, self._credit + self.beats_per_cycle)
        pending = self._pending
        if self._beat is None and pending and pending[0].ready_at <= self.cycle and self._credit >= 1.0 \
                and self.rng.random() >= self.r_stall:
            head = pending[0]
            address = head.address + head.sent * self.bus_bytes
            self._beat = (int.from_bytes(self.image[address:address + self.bus_bytes].tobytes(), "little"),
                          head.sent == head.beats - 1)
            self._credit -= 1.0
        ctx.set(port.rvalid, self._beat is not None)
        if self._beat is not None:
            ctx.set(port.rdata, self._beat[0])
            ctx.set(port.rlast, self._beat[1])
            ctx.set(port.rresp, Response.OKAY)
            ctx.set(port.rid, 0)
        self._request = None
        if ctx.get(port.arvalid):
            self._request = (ctx.get(port.araddr), ctx.get(port.arlen), ctx.get(port.arsize), ctx.get(port.arburst))
            if self._waiting is not None and self._request != self._waiting:
                raise AXIProtocolError(f"cycle {self.cycle}: AR request changed from {self._waiting} to "
                                       f"{self._request} before ARREADY")
        elif self._waiting is not None:
            raise AXIProtocolError(f"cycle {self.cycle}: ARVALID dropped before ARREADY ({self._waiting})")
        self._accepted = self._beat is not None and bool(ctx.get(port.rready))
        if self._beat is not None and not self._accepted:
            self.r_backpressure_cycles += 1

    def advance(self) -> None:
        """The clock edge has passed: take the handshakes it made."""
        if self._request is not None and self._arready:
            self._pending.append(self._check(self._request))
            self._waiting = None
        else:
            self._waiting = self._request
        if self._accepted:
            head = self._pending[0]
            head.sent += 1
            self.bytes_read += self.bus_bytes
            if head.sent == head.beats:
                self._pending.popleft()
            self._beat = None
        self.max_in_flight = max(self.max_in_flight, len(self._pending))
        self.cycle += 1

    def _check(self, request) -> _Burst:
        address, arlen, arsize, arburst = request
        beats = arlen + 1
        where = f"cycle {self.cycle}: burst at {address:#x}, {beats} beats"
        if arburst not in (Burst.INCR, Burst.INCR.value):
            raise AXIProtocolError(f"{where}: ARBURST {arburst}, expected INCR")
        if 1 << arsize != self.bus_bytes:
            raise AXIProtocolError(f"{where}: ARSIZE {arsize} ({1 << arsize} bytes) on a {self.bus_bytes}-byte bus")
        if address % self.bus_bytes:
            raise AXIProtocolError(f"{where}: not aligned to the {self.bus_bytes}-byte beat")
        end = address + beats * self.bus_bytes
        if address // BOUNDARY_BYTES != (end - 1) // BOUNDARY_BYTES:
            raise AXIProtocolError(f"{where}: crosses a 4 KiB boundary")
        if end > len(self.image):
            raise AXIProtocolError(f"{where}: past the end of the {len(self.image)}-byte image")
        self.bursts += 1
        return _Burst(address, beats, self.cycle + self.latency)
