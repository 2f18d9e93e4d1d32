"""The host side of the board's link (`hw.board.protocol`): register and memory access over a byte pipe, and the
driver's transport on a board (`BoardTransport`).

`BridgeLink(pipe, bus_bytes)` speaks the protocol over `pipe`, an object with `async send(data: bytes)` and
`async receive(count) -> bytes` (a serial port, or the simulated bridge in the tests). Its methods are the
transport methods the driver uses (`read32`, `write32`, `write_dram`, `read_dram`); a reply other than OK, a
reply whose CRC fails, or a read of the wrong length raises `LinkError` naming the request. `write_dram` and
`read_dram` move whole bus words in requests of at most `chunk_beats`; the caller's address and length must be
bus-word multiples (the DRAM image's regions are).

`BoardTransport(link, dram_bytes)` is the driver's transport (`firmware.driver`) over a link: the link's
register and DRAM access; `wait_irq` polls STATUS until the run is no longer busy (the interrupt line does not
reach the host); `wait` and `cycles` are the pipe's (`idle(cycles)`, `cycles`: exact in simulation, the wall
time at the board's clock on a board). `upload(address, data)` writes what stays resident (the model's
weights) only if the board does not hold it already: the last `RESIDENT_TAG_BYTES` of the DRAM hold a tag of
the last upload (its address, length and SHA-256), read first and compared; it is cleared before an upload and
written after it, so an upload cut short is never taken for a whole one.

`SerialPipe(port, baud, clock_hz)` is the pipe on a real board's serial port (pyserial), and `Board(port,
clock_hz=…)` a board on one: `drive(host, accelerator)` runs `await host(transport)` on it (as `firmware.sim.simulate`
does on a simulator) and returns its result.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time

from hw.board.protocol import Op, Status, crc8
from hw.control.registers import Status as RunStatus
from hw.control.registers import register
from hw.board.top import DEFAULT_CLOCK_HZ
from hw.memory.sdram_chip import ULX3S_SDRAM

__all__ = ["BridgeLink", "LinkError", "request", "BoardTransport", "SerialPipe", "Board", "RESIDENT_TAG_BYTES",
           "resident_tag"]

RESIDENT_TAG_BYTES = 64
_TAG_MAGIC = b"m3vit resident\x00\x00"


class LinkError(RuntimeError):
    """The bridge refused a request or its reply was damaged."""


def request(op: Op, *fields: bytes) -> bytes:
    """One request frame: the op, its fields, the CRC."""
    frame = bytes([op]) + b"".join(fields)
    return frame + bytes([crc8(frame)])


class BridgeLink:
    def __init__(self, pipe, bus_bytes: int, chunk_beats: int = 256):
        self.pipe, self.bus_bytes, self.chunk_beats = pipe, bus_bytes, chunk_beats

    async def _status(self, what: str) -> int:
        (status,) = await self.pipe.receive(1)
        if status != Status.OK:
            name = Status(status).name if status in set(Status) else f"status {status}"
            raise LinkError(f"{what}: the bridge answered {name}")
        return status

    async def _check_crc(self, what: str, reply: bytes) -> None:
        (got,) = await self.pipe.receive(1)
        if got != crc8(reply):
            raise LinkError(f"{what}: the reply's CRC failed")

    async def read32(self, offset: int) -> int:
        what = f"register read at {offset:#x}"
        await self.pipe.send(request(Op.READ32, bytes([offset])))
        status = await self._status(what)
        value = await self.pipe.receive(4)
        await self._check_crc(what, bytes([status]) + value)
        return struct.unpack("<I", value)[0]

    async def write32(self, offset: int, value: int) -> None:
        what = f"register write at {offset:#x}"
        await self.pipe.send(request(Op.WRITE32, bytes([offset]), struct.pack("<I", value & 0xFFFF_FFFF)))
        status = await self._status(what)
        await self._check_crc(what, bytes([status]))

    def _chunks(self, address: int, length: int):
        if address % self.bus_bytes or length % self.bus_bytes:
            raise LinkError(f"DRAM access at {address:#x} of {length} bytes: not whole {self.bus_bytes}-byte words")
        step = self.chunk_beats * self.bus_bytes
        for start in range(0, length, step):
            yield address + start, min(step, length - start)

    async def write_dram(self, address: int, data: bytes) -> None:
        data = bytes(data)
        for start, length in self._chunks(address, len(data)):
            what = f"DRAM write at {start:#x}"
            block = data[start - address:start - address + length]
            header = request(Op.WRITE_MEM, struct.pack("<IH", start, length // self.bus_bytes))
            await self.pipe.send(header + block + bytes([crc8(block)]))
            status = await self._status(what)
            await self._check_crc(what, bytes([status]))

    async def read_dram(self, address: int, length: int) -> bytes:
        blocks = []
        for start, size in self._chunks(address, length):
            what = f"DRAM read at {start:#x}"
            await self.pipe.send(request(Op.READ_MEM, struct.pack("<IH", start, size // self.bus_bytes)))
            status = await self._status(what)
            block = await self.pipe.receive(size)
            (bus_status,) = await self.pipe.receive(1)
            await self._check_crc(what, bytes([status]) + block + bytes([bus_status]))
            if bus_status != Status.OK:
                raise LinkError(f"{what}: the bus answered an error")
            blocks.append(block)
        return b"".join(blocks)


def resident_tag(address: int, data: bytes) -> bytes:
    """The tag of `data` resident at `address` (`RESIDENT_TAG_BYTES`)."""
    digest = hashlib.sha256(struct.pack("<QQ", address, len(data)) + bytes(data)).digest()
    return (_TAG_MAGIC + digest).ljust(RESIDENT_TAG_BYTES, b"\x00")


class BoardTransport:
    def __init__(self, link: BridgeLink, dram_bytes: int):
        if RESIDENT_TAG_BYTES % link.bus_bytes:
            raise LinkError(f"a {link.bus_bytes}-byte bus does not divide the {RESIDENT_TAG_BYTES}-byte resident tag")
        self.link, self.pipe = link, link.pipe
        self.tag_address = dram_bytes - RESIDENT_TAG_BYTES
        self.read32, self.write32 = link.read32, link.write32
        self.write_dram, self.read_dram = link.write_dram, link.read_dram

    @property
    def cycles(self) -> int:
        return self.pipe.cycles

    async def wait(self, cycles: int) -> None:
        await self.pipe.idle(cycles)

    async def wait_irq(self, cycles: int) -> int:
        """Poll STATUS until the run is no longer busy, for at most `cycles`; the cycles that passed."""
        start, busy = self.cycles, 1 << RunStatus["busy"].offset
        while self.cycles - start < cycles:
            if not await self.read32(register("STATUS").offset) & busy:
                break
        return min(self.cycles - start, cycles)

    async def upload(self, address: int, data: bytes) -> bool:
        """Write `data` at `address` unless the board holds it there already (its tag); whether it was written."""
        if address + len(data) > self.tag_address:
            raise LinkError(f"an upload of {len(data):,} bytes at {address:#x} reaches the resident tag at "
                            f"{self.tag_address:#x}")
        tag = resident_tag(address, data)
        if await self.read_dram(self.tag_address, RESIDENT_TAG_BYTES) == tag:
            return False
        await self.write_dram(self.tag_address, bytes(RESIDENT_TAG_BYTES))
        await self.write_dram(address, data)
        await self.write_dram(self.tag_address, tag)
        return True


class SerialPipe:
    """The link's pipe on a serial port: `port` (a device name, or a pyserial URL such as `socket://host:port`) at
    `baud`; `cycles` counts the wall time at the board's `clock_hz`; a reply not complete within `timeout`
    seconds raises `LinkError`."""

    def __init__(self, port: str, *, baud: int = 3_000_000, clock_hz: float = DEFAULT_CLOCK_HZ, timeout: float = 2.0):
        import serial

        try:
            self.port = serial.serial_for_url(port, baud, timeout=timeout)
        except (serial.SerialException, ValueError) as error:
            raise LinkError(f"cannot open the serial port {port}: {error}") from None
        self.clock_hz, self.timeout, self.start = clock_hz, timeout, time.monotonic()

    @property
    def cycles(self) -> int:
        return int((time.monotonic() - self.start) * self.clock_hz)

    async def send(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    async def receive(self, count: int) -> bytes:
        data = self.port.read(count)
        if len(data) < count:
            raise LinkError(f"the board answered {len(data)} of {count} bytes within {self.timeout} s")
        return data

    async def idle(self, cycles: int) -> None:
        time.sleep(cycles / self.clock_hz)


class Board:
    """A board on the serial port `port` (opened at once: a port that is not there fails before any work)."""

    def __init__(self, port: str, *, clock_hz: float = DEFAULT_CLOCK_HZ, dram_bytes: int = ULX3S_SDRAM.bytes):
        self.pipe, self.port, self.dram_bytes = SerialPipe(port, clock_hz=clock_hz), port, dram_bytes

    def __str__(self) -> str:
        return f"board on {self.port}"

    def drive(self, host, accelerator, dram_bytes: int = 0):
        """`await host(transport)` on the board; `accelerator`: the hardware it holds (its configuration), which
        the host's `Driver.connect` checks against the board's CONFIG_HASH."""
        if dram_bytes > self.dram_bytes - RESIDENT_TAG_BYTES:
            raise LinkError(f"the board has {self.dram_bytes - RESIDENT_TAG_BYTES:,} bytes of DRAM, not {dram_bytes:,}")
        link = BridgeLink(self.pipe, accelerator.accel.dram_bytes_per_beat)
        return asyncio.run(host(BoardTransport(link, self.dram_bytes)))
