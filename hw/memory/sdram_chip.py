"""An SDR SDRAM chip's organisation and datasheet timing, in nanoseconds and in cycles of a given clock.

`ULX3S_SDRAM` is the ULX3S's 32 MiB chip (16 bits wide, 4 banks × 8,192 rows × 512 columns; the board has
carried an AS4C16M16SA-7 and an IS42S16160G-7): for each parameter the slower of the two -7 datasheets.
A time in nanoseconds becomes ⌈t / tCK⌉ cycles (`SDRAMTiming.cycles`), as the datasheets' notes say; a
parameter given in clocks (tMRD ≥ 2 clocks, the write recovery ≥ 2 clocks) is at least that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, make_dataclass

__all__ = ["SDRAMChip", "SDRAMTiming", "SDRAMCycles", "ULX3S_SDRAM"]


@dataclass(frozen=True)
class SDRAMTiming:
    """Datasheet minimums in ns (tRAS_max and tREFI are maximums): ACTIVE→READ/WRITE (tRCD), PRECHARGE→ACTIVE
    or REFRESH (tRP), ACTIVE→PRECHARGE (tRAS, at most tRAS_max), ACTIVE→ACTIVE of a bank (tRC) and of two
    banks (tRRD), REFRESH→any command (tRFC), last write data→PRECHARGE (tWR), LOAD MODE→any command (tMRD),
    the average refresh interval (tREFI) and the power-up wait before the first command."""

    tCK_min: float = 7.0
    tRCD: float = 21.0
    tRP: float = 21.0
    tRAS: float = 42.0
    tRAS_max: float = 100_000.0
    tRC: float = 63.0
    tRRD: float = 14.0
    tRFC: float = 63.0
    tWR: float = 14.0
    tMRD: float = 14.0
    tREFI: float = 7_800.0
    power_up: float = 200_000.0

    def cycles(self, clock_hz: float) -> "SDRAMCycles":
        """The parameters in cycles of `clock_hz`; refuses a clock faster than the chip's (tCK_min)."""
        period = 1e9 / clock_hz
        if period < self.tCK_min - 1e-9:
            raise ValueError(f"SDRAM clock {clock_hz / 1e6:.1f} MHz: faster than the chip's "
                             f"{1e3 / self.tCK_min:.1f} MHz (tCK ≥ {self.tCK_min} ns)")

        def up(ns: float, at_least: int = 1) -> int:
            return max(at_least, math.ceil(ns / period - 1e-9))

        return SDRAMCycles(tRCD=up(self.tRCD), tRP=up(self.tRP), tRAS=up(self.tRAS),
                           tRAS_max=math.floor(self.tRAS_max / period), tRC=up(self.tRC), tRRD=up(self.tRRD),
                           tRFC=up(self.tRFC), tWR=up(self.tWR, 2), tMRD=up(self.tMRD, 2),
                           tREFI=math.floor(self.tREFI / period), power_up=up(self.power_up))


# `SDRAMTiming`'s parameters in clock cycles (tCK_min aside): what a controller counts.
SDRAMCycles = make_dataclass("SDRAMCycles", [(f.name, int) for f in fields(SDRAMTiming) if f.name != "tCK_min"],
                             frozen=True)


@dataclass(frozen=True)
class SDRAMChip:
    """Organisation (`banks` × `rows` × `columns` words of `data_width` bits), CAS latencies it takes, the
    auto refreshes its initialisation needs, refreshes it may postpone, and its timing."""

    banks: int = 4
    rows: int = 8192
    columns: int = 512
    data_width: int = 16
    cas_latencies: tuple[int, ...] = (2, 3)
    init_refreshes: int = 8
    postponed_refreshes: int = 8
    timing: SDRAMTiming = SDRAMTiming()

    @property
    def bytes(self) -> int:
        return self.banks * self.rows * self.columns * self.data_width // 8

    @property
    def address_width(self) -> int:
        """Row and column share the address pins A[n-1:0]; A10 is the auto-precharge / all-banks flag."""
        return max(self.rows.bit_length() - 1, 11)


ULX3S_SDRAM = SDRAMChip()
