"""A cycle model of an SDR SDRAM chip that enforces its datasheet rules, for the controller's tests.

`SDRAMModel(chip, clock_hz).step(...)` takes the pins the controller drives in one clock cycle (CKE, CS#,
RAS#, CAS#, WE#, BA, A, DQ with its output enable, DQM) and returns the word the chip drives on DQ in that
cycle, or None. It raises `SDRAMTimingError` (its `rule` names the rule) on:

- the initialisation: a command other than NOP before the power-up wait; then PRECHARGE ALL, at least
  `init_refreshes` AUTO REFRESH and LOAD MODE REGISTER before any ACTIVE, READ or WRITE;
- the bank rules: ACTIVE on an open bank, READ/WRITE on a closed one, REFRESH or LOAD MODE with a bank open;
- tRCD, tRP (after a PRECHARGE, or an auto precharge), tRAS (minimum and maximum), tRC, tRRD, tRFC, tWR, tMRD;
- the refresh interval: more than `postponed_refreshes` refreshes owed (one falls due every tREFI);
- the data bus: the controller driving DQ while the chip does, or not driving it in a write's data cycle;
- the mode register: a reserved burst length or a CAS latency the chip does not take.

Reads and writes follow the mode register: burst length 1, 2, 4 or 8, sequential, CAS latency CL (the first
word on DQ CL cycles after READ), write data in the WRITE's cycle and the next BL − 1; A10 with READ/WRITE is
auto precharge (the bank closes after the burst, and after tWR for writes, no earlier than tRAS). DQM masks
write bytes (bit 0 the low byte); read masking (DQM latency 2) is not modelled: a controller keeps DQM low on
reads. Words never written read as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw.memory.sdram_chip import SDRAMChip

__all__ = ["SDRAMModel", "SDRAMTimingError", "Command"]


class SDRAMTimingError(AssertionError):
    """The controller broke an SDRAM rule; `rule` is its name (tRCD, tRP, …, init, bank, bus, refresh, mode)."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"{rule}: {message}")
        self.rule = rule


class Command:
    """(RAS#, CAS#, WE#) with CS# low."""
    ACTIVE, READ, WRITE, BURST_STOP = (0, 1, 1), (1, 0, 1), (1, 0, 0), (1, 1, 0)
    PRECHARGE, REFRESH, LOAD_MODE, NOP = (0, 1, 0), (0, 0, 1), (0, 0, 0), (1, 1, 1)


_NAMES = {value: name for name, value in vars(Command).items() if isinstance(value, tuple)}
_NEVER = -(1 << 60)


@dataclass
class _Bank:
    row: int | None = None
    activated: int = _NEVER
    precharged: int = _NEVER          # when the last precharge (explicit or automatic) took effect
    written: int = _NEVER             # the last write data cycle
    auto_precharge_at: int | None = None


@dataclass
class _Burst:
    bank: int
    row: int
    column: int
    start: int                        # the cycle of its first data word
    end: int                          # the cycle after its last (a later READ or WRITE may cut it short)
    write: bool


@dataclass
class SDRAMModel:
    chip: SDRAMChip
    clock_hz: float
    cycle: int = 0
    words: dict = field(default_factory=dict)

    def __post_init__(self):
        self.t = self.chip.timing.cycles(self.clock_hz)
        self.banks = [_Bank() for _ in range(self.chip.banks)]
        self.cas_latency = self.burst_length = None
        self.init_refreshes = 0
        self.init_precharged = False
        self.last_active = self.last_refresh = self.last_mode = _NEVER
        self.refreshes = 0
        self.refresh_start = None
        self.bursts: list[_Burst] = []
        self.reads = self.writes = 0

    def _fail(self, rule: str, message: str):
        raise SDRAMTimingError(rule, f"cycle {self.cycle}: {message}")

    def _since(self, rule: str, then: int, minimum: int, what: str):
        if self.cycle - then < minimum:
            self._fail(rule, f"{what} {self.cycle - then} cycles after, {minimum} needed")

    def _row(self, bank: int, row: int) -> np.ndarray:
        key = (bank, row)
        if key not in self.words:
            self.words[key] = np.zeros(self.chip.columns, np.uint16)
        return self.words[key]

    def step(self, *, cke=1, cs_n=1, ras_n=1, cas_n=1, we_n=1, ba=0, a=0, dq=0, dq_oe=0, dqm=0) -> int | None:
        """One clock cycle: the controller's pins in, the chip's DQ out (None when it does not drive it)."""
        self._close_auto_precharged()
        self._check_refresh_debt()
        for bank in self.banks:
            if bank.row is not None and self.cycle - bank.activated > self.t.tRAS_max:
                self._fail("tRAS", f"a row open longer than tRAS_max ({self.t.tRAS_max} cycles)")
        if not cke:
            self._fail("init", "CKE low (power-down and self refresh are not modelled)")
        if not cs_n and (ras_n, cas_n, we_n) != Command.NOP:
            self._command((ras_n, cas_n, we_n), ba, a)
        driven = self._data(dq, dq_oe, dqm)
        self.cycle += 1
        return driven

    def _close_auto_precharged(self):
        for bank in self.banks:
            if bank.auto_precharge_at is not None and self.cycle >= bank.auto_precharge_at:
                bank.row, bank.precharged, bank.auto_precharge_at = None, bank.auto_precharge_at, None

    def _check_refresh_debt(self):
        if self.refresh_start is None:
            return
        due = (self.cycle - self.refresh_start) // self.t.tREFI
        if due - self.refreshes > self.chip.postponed_refreshes:
            self._fail("refresh", f"{due - self.refreshes} refreshes owed (one is due every {self.t.tREFI} cycles, "
                                  f"at most {self.chip.postponed_refreshes} may be postponed)")

    def _command(self, command, ba: int, a: int):
        name = _NAMES.get(command, "?")
        if self.cycle < self.t.power_up:
            self._fail("init", f"{name} during the power-up wait ({self.t.power_up} cycles of NOP)")
        self._since("tRFC", self.last_refresh, self.t.tRFC, f"{name} after REFRESH:")
        self._since("tMRD", self.last_mode, self.t.tMRD, f"{name} after LOAD MODE:")
        if command in (Command.ACTIVE, Command.READ, Command.WRITE) and self.cas_latency is None:
            self._fail("init", f"{name} before the initialisation (PRECHARGE ALL, {self.chip.init_refreshes} "
                               "REFRESH, LOAD MODE) is complete")
        {Command.ACTIVE: self._active, Command.READ: self._access, Command.WRITE: self._access,
         Command.PRECHARGE: self._precharge, Command.REFRESH: self._refresh, Command.LOAD_MODE: self._load_mode,
         Command.BURST_STOP: self._burst_stop}[command](command, ba, a)

    def _active(self, command, ba, a):
        bank = self.banks[ba]
        if bank.row is not None:
            self._fail("bank", f"ACTIVE on bank {ba}, whose row {bank.row} is open")
        self._since("tRP", bank.precharged, self.t.tRP, f"ACTIVE on bank {ba} after its precharge:")
        self._since("tRC", bank.activated, self.t.tRC, f"ACTIVE on bank {ba} after its last ACTIVE:")
        self._since("tRRD", self.last_active, self.t.tRRD, "ACTIVE after an ACTIVE on another bank:")
        bank.row, bank.activated, self.last_active = a % self.chip.rows, self.cycle, self.cycle

    def _access(self, command, ba, a):
        write = command == Command.WRITE
        bank, name = self.banks[ba], "WRITE" if write else "READ"
        if bank.row is None or bank.auto_precharge_at is not None:
            self._fail("bank", f"{name} on bank {ba}, which has no open row")
        self._since("tRCD", bank.activated, self.t.tRCD, f"{name} on bank {ba} after its ACTIVE:")
        column = a & (self.chip.columns - 1)
        start = self.cycle if write else self.cycle + self.cas_latency
        length = 1 if write and self.write_single else self.burst_length
        for old in self.bursts:                                   # a new burst cuts the one in flight
            if write and not old.write and old.end > self.cycle:
                self._fail("bus", f"WRITE in cycle {self.cycle} while read data is due until cycle {old.end - 1}")
            old.end = min(old.end, self.cycle if old.write else start)
        self.bursts.append(_Burst(ba, bank.row, column, start, start + length, write))
        if a >> 10 & 1:                                           # auto precharge after the burst
            close = start + length - 1 + self.t.tWR if write else start + length
            bank.auto_precharge_at = max(close, bank.activated + self.t.tRAS)

    def _precharge(self, command, ba, a):
        targets = range(self.chip.banks) if a >> 10 & 1 else [ba]
        for index in targets:
            bank = self.banks[index]
            if bank.row is None:
                continue
            self._since("tRAS", bank.activated, self.t.tRAS, f"PRECHARGE of bank {index} after its ACTIVE:")
            self._since("tWR", bank.written, self.t.tWR, f"PRECHARGE of bank {index} after its last write data:")
            bank.row, bank.precharged = None, self.cycle
        if a >> 10 & 1 and self.cas_latency is None:
            self.init_precharged = True
        for burst in self.bursts:          # a read's data goes on for CL − 1 cycles, a write's stops
            if burst.bank in targets:
                burst.end = min(burst.end, self.cycle if burst.write else self.cycle + self.cas_latency)

    def _refresh(self, command, ba, a):
        for index, bank in enumerate(self.banks):
            if bank.row is not None:
                self._fail("bank", f"REFRESH with bank {index} open")
            self._since("tRP", bank.precharged, self.t.tRP, f"REFRESH after bank {index}'s precharge:")
        if self.cas_latency is None:
            if not self.init_precharged:
                self._fail("init", "REFRESH before the initialisation's PRECHARGE ALL")
            self.init_refreshes += 1
        else:
            self.refreshes += 1
        self.last_refresh = self.cycle

    def _load_mode(self, command, ba, a):
        if any(bank.row is not None for bank in self.banks):
            self._fail("bank", "LOAD MODE with a bank open")
        if self.cas_latency is None and self.init_refreshes < self.chip.init_refreshes:
            self._fail("init", f"LOAD MODE after {self.init_refreshes} of the {self.chip.init_refreshes} "
                               "initialisation refreshes")
        burst, interleaved, latency = a & 7, a >> 3 & 1, a >> 4 & 7
        if burst not in (0, 1, 2, 3) or interleaved or a >> 7 & 3:
            self._fail("mode", f"mode register {a:#x}: only sequential bursts of 1, 2, 4 or 8 are modelled")
        if latency not in self.chip.cas_latencies:
            self._fail("mode", f"CAS latency {latency}: the chip takes {self.chip.cas_latencies}")
        self.cas_latency, self.burst_length = latency, 1 << burst
        self.write_single = bool(a >> 9 & 1)
        self.last_mode = self.cycle
        if self.refresh_start is None:             # refreshes fall due from the end of the initialisation
            self.refresh_start = self.cycle

    def _burst_stop(self, command, ba, a):
        for burst in self.bursts:          # a read's data goes on for CL − 1 cycles, a write's stops
            burst.end = min(burst.end, self.cycle if burst.write else self.cycle + self.cas_latency)

    def _data(self, dq: int, dq_oe: int, dqm: int) -> int | None:
        """The data beat of the bursts in flight in this cycle."""
        driven = None
        self.bursts = [b for b in self.bursts if b.end > self.cycle]
        for burst in self.bursts:
            beat = self.cycle - burst.start
            if beat < 0:
                continue
            row = self._row(burst.bank, burst.row)
            length = self.burst_length
            column = (burst.column & ~(length - 1)) | ((burst.column + beat) & (length - 1))
            if burst.write:
                if not dq_oe:
                    self._fail("bus", f"write data to bank {burst.bank} column {column} not driven on DQ")
                keep = (0xFF if dqm & 1 else 0) | (0xFF00 if dqm & 2 else 0)
                row[column] = (int(row[column]) & keep) | (dq & ~keep & 0xFFFF)
                self.banks[burst.bank].written = self.cycle
                self.writes += 1
            else:
                if dq_oe:
                    self._fail("bus", "the controller drives DQ while the chip drives read data")
                driven = int(row[column])
                self.reads += 1
        return driven
