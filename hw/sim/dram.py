"""A DRAM behind an AXI4 read port, for simulation: `AXI4ReadModel` serves a master's AR/R channels from a
NumPy byte image, cycle by cycle, through the `ctx.set / ctx.get` calls of an Amaranth async testbench, so it
runs in the Python simulator and in the fast harness (`hw.sim.verilator`) alike: each cycle the testbench
calls `drive(ctx, port)` before `await ctx.tick()` and `advance()` after it.

Timing: the first beat of a burst is available `latency` cycles after its AR handshake; beats leave at most
`beats_per_cycle` (≤ 1) per cycle on average, bursts in order; ARREADY is low with probability `ar_stall` and
RVALID withheld with probability `r_stall` each cycle (seeded). Once RVALID is high it stays high, with the
same beat, until accepted, as the slave's rules require. Beats of bytes in `fail` (a range) answer SLVERR.

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

__all__ = ["AXI4ReadModel", "AXI4WriteModel", "AXIProtocolError", "check_burst", "check_access"]


class AXIProtocolError(AssertionError):
    """The master broke an AXI4 rule; the message says which and when."""


@dataclass
class _Burst:
    address: int
    beats: int
    ready_at: int
    sent: int = 0


def check_access(address: int, length: int, size: int) -> None:
    """A host's access of `length` bytes at `address` to a simulated DRAM of `size` bytes: `ValueError` if it
    falls outside."""
    if address < 0 or address + length > size:
        raise ValueError(f"DRAM access of {length} bytes at {address:#x}: the simulated DRAM holds {size} bytes "
                         "(give `simulate` at least the program's DramMap.size)")


def check_burst(channel: str, cycle: int, address: int, length: int, size: int, burst, bus_bytes: int,
                image_bytes: int) -> int:
    """The AXI4 rules of one AR or AW request (`channel` "AR" / "AW") against a bus of `bus_bytes` and an image
    of `image_bytes`: raises `AXIProtocolError` naming the broken one; returns the burst's beats."""
    beats = length + 1
    where = f"cycle {cycle}: {channel} burst at {address:#x}, {beats} beats"
    if burst not in (Burst.INCR, Burst.INCR.value):
        raise AXIProtocolError(f"{where}: {channel}BURST {burst}, expected INCR")
    if 1 << size != bus_bytes:
        raise AXIProtocolError(f"{where}: {channel}SIZE {size} ({1 << size} bytes) on a {bus_bytes}-byte bus")
    if address % bus_bytes:
        raise AXIProtocolError(f"{where}: not aligned to the {bus_bytes}-byte beat")
    end = address + beats * bus_bytes
    if address // BOUNDARY_BYTES != (end - 1) // BOUNDARY_BYTES:
        raise AXIProtocolError(f"{where}: crosses a 4 KiB boundary")
    if end > image_bytes:
        raise AXIProtocolError(f"{where}: past the end of the {image_bytes}-byte image")
    return beats


class AXI4ReadModel:
    def __init__(self, image: np.ndarray, bus_bytes: int, *, latency: int = 8, beats_per_cycle: float = 1.0,
                 ar_stall: float = 0.0, r_stall: float = 0.0, fail: range | None = None, seed: int = 0):
        if not 0 < beats_per_cycle <= 1:
            raise ValueError(f"beats_per_cycle = {beats_per_cycle}: must be in (0, 1]")
        if latency < 1:
            raise ValueError(f"latency = {latency}: at least one cycle")
        self.image = np.asarray(image, dtype=np.uint8)
        self.bus_bytes, self.latency, self.beats_per_cycle = bus_bytes, latency, beats_per_cycle
        self.ar_stall, self.r_stall, self.fail = ar_stall, r_stall, fail
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
            failed = self.fail is not None and address < self.fail.stop and self.fail.start < address + self.bus_bytes
            self._beat = (int.from_bytes(self.image[address:address + self.bus_bytes].tobytes(), "little"),
                          head.sent == head.beats - 1, failed)
            self._credit -= 1.0
        ctx.set(port.rvalid, self._beat is not None)
        if self._beat is not None:
            ctx.set(port.rdata, self._beat[0])
            ctx.set(port.rlast, self._beat[1])
            ctx.set(port.rresp, Response.SLVERR if self._beat[2] else Response.OKAY)
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
        beats = check_burst("AR", self.cycle, address, arlen, arsize, arburst, self.bus_bytes, len(self.image))
        self.bursts += 1
        return _Burst(address, beats, self.cycle + self.latency)


class AXI4WriteModel:
    """A DRAM behind an AXI4 write port, for simulation, in the same style as `AXI4ReadModel`: call
    `drive(ctx, port)` before each clock edge and `advance()` after it.

    AWREADY and WREADY are low with probability `aw_stall` / `w_stall` each cycle; a burst's response comes
    `latency` cycles after its last beat and BVALID is withheld with probability `b_stall`, then held until
    BREADY. W beats may come before their burst's AW (AXI4 allows it). A burst that touches a byte in
    `fail` (a range) is not written and answers SLVERR. It checks the master's rules and raises
    `AXIProtocolError`: AW and W held until accepted, INCR bursts of the bus width, aligned, within 4 KiB and the
    image, WLAST on exactly the burst's last beat. `bytes_written` counts strobed bytes."""

    def __init__(self, image: np.ndarray, bus_bytes: int, *, latency: int = 4, aw_stall: float = 0.0,
                 w_stall: float = 0.0, b_stall: float = 0.0, fail: range | None = None, seed: int = 0):
        if latency < 1:
            raise ValueError(f"latency = {latency}: at least one cycle")
        self.image = image
        self.bus_bytes, self.latency = bus_bytes, latency
        self.aw_stall, self.w_stall, self.b_stall, self.fail = aw_stall, w_stall, b_stall, fail
        self.rng = np.random.default_rng(seed)
        self.bytes_written = 0
        self.bursts = 0
        self.cycle = 0
        self._bursts: deque[list] = deque()     # [address, beats, beats received, failed]
        self._beats: deque[tuple] = deque()     # W beats not yet matched to a burst: (data, strobe, last)
        self._responses: deque[tuple] = deque()  # (ready_at, failed)
        self._response = None                   # on BVALID, held until BREADY
        self._aw = self._w = None               # this cycle's offers
        self._aw_waiting = self._w_waiting = None
        self._ready = (False, False)
        self._b_taken = False

    def drive(self, ctx, port) -> None:
        self._ready = (bool(self.rng.random() >= self.aw_stall), bool(self.rng.random() >= self.w_stall))
        ctx.set(port.awready, self._ready[0])
        ctx.set(port.wready, self._ready[1])
        if self._response is None and self._responses and self._responses[0][0] <= self.cycle \
                and self.rng.random() >= self.b_stall:
            self._response = self._responses.popleft()[1]
        ctx.set(port.bvalid, self._response is not None)
        ctx.set(port.bresp, Response.SLVERR if self._response else Response.OKAY)
        ctx.set(port.bid, 0)
        self._aw = self._offer(ctx.get(port.awvalid), (ctx.get(port.awaddr), ctx.get(port.awlen),
                                                       ctx.get(port.awsize), ctx.get(port.awburst)),
                               self._aw_waiting, "AW")
        self._w = self._offer(ctx.get(port.wvalid), (ctx.get(port.wdata), ctx.get(port.wstrb), ctx.get(port.wlast)),
                              self._w_waiting, "W")
        self._b_taken = self._response is not None and bool(ctx.get(port.bready))

    def _offer(self, valid, payload, waiting, channel):
        if valid:
            if waiting is not None and payload != waiting:
                raise AXIProtocolError(f"cycle {self.cycle}: {channel} payload changed from {waiting} to {payload} "
                                       f"before {channel}READY")
            return payload
        if waiting is not None:
            raise AXIProtocolError(f"cycle {self.cycle}: {channel}VALID dropped before {channel}READY")
        return None

    def advance(self) -> None:
        aw_ready, w_ready = self._ready
        self._aw_waiting = None if self._aw is None or aw_ready else self._aw
        self._w_waiting = None if self._w is None or w_ready else self._w
        if self._aw is not None and aw_ready:
            self._bursts.append(self._check(*self._aw))
        if self._w is not None and w_ready:
            self._beats.append(self._w)
        while self._bursts and self._beats:
            self._write(self._bursts[0], *self._beats.popleft())
            if self._bursts[0][2] == self._bursts[0][1]:
                burst = self._bursts.popleft()
                self._responses.append((self.cycle + self.latency, burst[3]))
        if self._b_taken:
            self._response = None
        self.cycle += 1

    def _check(self, address, awlen, awsize, awburst) -> list:
        beats = check_burst("AW", self.cycle, address, awlen, awsize, awburst, self.bus_bytes, len(self.image))
        self.bursts += 1
        end = address + beats * self.bus_bytes
        failed = self.fail is not None and address < self.fail.stop and self.fail.start < end
        return [address, beats, 0, failed]

    def _write(self, burst, wdata, wstrb, wlast) -> None:
        address, beats, received, failed = burst
        if bool(wlast) != (received == beats - 1):
            raise AXIProtocolError(f"cycle {self.cycle}: WLAST {int(wlast)} on beat {received + 1} of a "
                                   f"{beats}-beat burst at {address:#x}")
        base = address + received * self.bus_bytes
        for byte in range(self.bus_bytes):
            if wstrb >> byte & 1:
                if not failed:
                    self.image[base + byte] = wdata >> (8 * byte) & 0xFF
                self.bytes_written += 1
        burst[2] += 1
