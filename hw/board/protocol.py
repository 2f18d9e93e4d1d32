"""The host link's framing over a byte stream (the board's UART), shared by the gateware (`hw.board.bridge`) and
the host (`firmware.board`).

Every frame, both ways, ends with a CRC-8 (polynomial 0x07, initial value 0, no reflection; `crc8`) of the bytes
before it in the frame. Integers are little-endian. The host sends one request and waits for its reply:

| request | bytes | reply |
|---|---|---|
| READ32 `R` | `R`, offset (1), CRC | status, value (4), CRC |
| WRITE32 `W` | `W`, offset (1), value (4), CRC | status, CRC |
| READ_MEM `r` | `r`, address (4), beats (2), CRC | status; if OK: beats × bus bytes, bus status, CRC |
| WRITE_MEM `w` | `w`, address (4), beats (2), CRC; then beats × bus bytes, CRC of them | status, CRC |

A register access is one AXI4-Lite transfer at that byte offset. A memory transfer moves `beats` whole bus
words (1 to 65,535) from a bus-aligned address, one AXI4 beat (a single-beat burst) at a time; WRITE_MEM writes
each word as it arrives, so a data CRC that fails (status BAD_CRC) has written the block anyway, and the host
sends it again. Status: OK, BAD_CRC (the request's header), BAD_COMMAND, MISALIGNED (address not a bus word, or
0 beats), BUS_ERROR (a response other than OKAY; READ_MEM's bus status, or the whole of a write). After a
reply other than OK the bridge ignores the line until it has been quiet for `RESYNC_BYTES` byte times, and so
does it when a request stops halfway: the host waits that long before it sends again.
"""

from __future__ import annotations

import enum

__all__ = ["Op", "Status", "crc8", "RESYNC_BYTES", "HEADER_BYTES"]

RESYNC_BYTES = 32


class Op(enum.IntEnum):
    READ32 = ord("R")
    WRITE32 = ord("W")
    READ_MEM = ord("r")
    WRITE_MEM = ord("w")


HEADER_BYTES = {Op.READ32: 1, Op.WRITE32: 5, Op.READ_MEM: 6, Op.WRITE_MEM: 6}   # after the op, before the CRC


class Status(enum.IntEnum):
    OK = 0
    BAD_CRC = 1
    BAD_COMMAND = 2
    MISALIGNED = 3
    BUS_ERROR = 4


POLYNOMIAL = 0x07


def crc8(data: bytes, crc: int = 0) -> int:
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc << 1 ^ (POLYNOMIAL if crc & 0x80 else 0)) & 0xFF
    return crc
