"""The host side of the board's link (`hw.board.protocol`): register and memory access over a byte pipe.

`BridgeLink(pipe, bus_bytes)` speaks the protocol over `pipe`, an object with `async send(data: bytes)` and
`async receive(count) -> bytes` (a serial port, or the simulated bridge in the tests). Its methods are the
transport methods the driver uses (`read32`, `write32`, `write_dram`, `read_dram`); a reply other than OK, a
reply whose CRC fails, or a read of the wrong length raises `LinkError` naming the request. `write_dram` and
`read_dram` move whole bus words in requests of at most `chunk_beats`; the caller's address and length must be
bus-word multiples (the DRAM image's regions are).
"""

from __future__ import annotations

import struct

from hw.board.protocol import Op, Status, crc8

__all__ = ["BridgeLink", "LinkError", "request"]


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
