"""The SDRAM chip model (`hw.sim.sdram`) catches each datasheet rule the controller could break, one cycle early,
and lets the same sequence pass one cycle later; data round-trip through every burst length and CAS latency."""

import dataclasses

import pytest

from hw.memory.sdram_chip import ULX3S_SDRAM, SDRAMChip
from hw.sim.sdram import Command, SDRAMModel, SDRAMTimingError

CLOCK = 125e6
T = ULX3S_SDRAM.timing.cycles(CLOCK)


class Pins:
    """Drives an `SDRAMModel` one command at a time, NOPs between; `data` keeps every word the chip drove."""

    def __init__(self, chip=ULX3S_SDRAM):
        self.model = SDRAMModel(chip, CLOCK)
        self.data = {}

    def nop(self, cycles=1, **pins):
        for _ in range(cycles):
            self._step(**pins)

    def _step(self, command=None, **pins):
        if command is not None:
            ras_n, cas_n, we_n = command
            pins.update(cs_n=0, ras_n=ras_n, cas_n=cas_n, we_n=we_n)
        cycle = self.model.cycle
        word = self.model.step(**pins)
        if word is not None:
            self.data[cycle] = word

    def command(self, command, wait=1, **pins):
        """`command` in this cycle, then NOPs until `wait` cycles have passed."""
        self._step(command, **pins)
        self.nop(wait - 1)

    def init(self, latency=2, burst=1):
        t = self.model.t
        self.nop(t.power_up)
        self.command(Command.PRECHARGE, t.tRP, a=1 << 10)
        for _ in range(self.model.chip.init_refreshes):
            self.command(Command.REFRESH, t.tRFC)
        self.command(Command.LOAD_MODE, t.tMRD, a=latency << 4 | {1: 0, 2: 1, 4: 2, 8: 3}[burst])
        return self


def rule_of(action):
    with pytest.raises(SDRAMTimingError) as caught:
        action()
    return caught.value.rule


# tRC binds only where tRAS + tRP falls short of it (not on the ULX3S's chips: 42 + 21 = 63 ns)
SLOW_ROW_CYCLE = SDRAMChip(timing=dataclasses.replace(ULX3S_SDRAM.timing, tRC=90.0))

# (rule, chip, the cycles the sequence waits where the rule needs them, the sequence given that wait)
TIMED = [
    ("tRCD", ULX3S_SDRAM, T.tRCD, lambda p, t, w: (p.command(Command.ACTIVE, w), p.command(Command.READ))),
    ("tRAS", ULX3S_SDRAM, T.tRAS, lambda p, t, w: (p.command(Command.ACTIVE, w), p.command(Command.PRECHARGE))),
    ("tRP", ULX3S_SDRAM, T.tRP, lambda p, t, w: (p.command(Command.ACTIVE, t.tRAS), p.command(Command.PRECHARGE, w),
                                                 p.command(Command.ACTIVE))),
    ("tRC", SLOW_ROW_CYCLE, SLOW_ROW_CYCLE.timing.cycles(CLOCK).tRC,
     lambda p, t, w: (p.command(Command.ACTIVE, t.tRAS), p.command(Command.PRECHARGE, w - t.tRAS),
                      p.command(Command.ACTIVE))),
    ("tRRD", ULX3S_SDRAM, T.tRRD, lambda p, t, w: (p.command(Command.ACTIVE, w, ba=0),
                                                   p.command(Command.ACTIVE, ba=1))),
    ("tRFC", ULX3S_SDRAM, T.tRFC, lambda p, t, w: (p.command(Command.REFRESH, w), p.command(Command.ACTIVE))),
    ("tMRD", ULX3S_SDRAM, T.tMRD, lambda p, t, w: (p.command(Command.LOAD_MODE, w, a=0x20),
                                                   p.command(Command.ACTIVE))),
    ("tWR", ULX3S_SDRAM, T.tRAS + T.tWR, lambda p, t, w: (p.command(Command.ACTIVE, t.tRAS),
                                                          p.command(Command.WRITE, w - t.tRAS, dq=1, dq_oe=1),
                                                          p.command(Command.PRECHARGE))),
]


@pytest.mark.parametrize("rule, chip, needed, sequence", TIMED, ids=[t[0] for t in TIMED])
def test_each_timing_rule_is_caught_one_cycle_early_and_met_on_time(rule, chip, needed, sequence):
    def run(wait):
        pins = Pins(chip).init()
        sequence(pins, pins.model.t, wait)

    assert rule_of(lambda: run(needed - 1)) == rule
    run(needed)


def test_the_ulx3s_chip_in_cycles_at_125_mhz():
    assert (T.tRCD, T.tRP, T.tRAS, T.tRC, T.tRRD, T.tRFC, T.tWR, T.tMRD) == (3, 3, 6, 8, 2, 8, 2, 2)
    assert T.tREFI == 975 and T.power_up == 25_000
    with pytest.raises(ValueError, match="faster than the chip"):
        ULX3S_SDRAM.timing.cycles(150e6)


def test_initialisation_rules():
    early = Pins()
    early.nop(T.power_up - 1)
    assert rule_of(lambda: early.command(Command.PRECHARGE, a=1 << 10)) == "init"
    pins = Pins()
    pins.nop(T.power_up)
    assert rule_of(lambda: pins.command(Command.REFRESH)) == "init"        # before PRECHARGE ALL
    pins.command(Command.PRECHARGE, T.tRP, a=1 << 10)
    assert rule_of(lambda: pins.command(Command.ACTIVE)) == "init"         # before LOAD MODE
    for _ in range(ULX3S_SDRAM.init_refreshes - 1):
        pins.command(Command.REFRESH, T.tRFC)
    assert rule_of(lambda: pins.command(Command.LOAD_MODE, a=0x20)) == "init"   # one refresh short
    assert rule_of(lambda: Pins().nop(1, cke=0)) == "init"


@pytest.mark.parametrize("mode", [0x10, 0x07, 0x28, 0x120 ^ 0x100 | 0x80])
def test_a_mode_the_chip_does_not_take_is_refused(mode):
    pins = Pins()
    pins.nop(T.power_up)
    pins.command(Command.PRECHARGE, T.tRP, a=1 << 10)
    for _ in range(ULX3S_SDRAM.init_refreshes):
        pins.command(Command.REFRESH, T.tRFC)
    assert rule_of(lambda: pins.command(Command.LOAD_MODE, a=mode)) == "mode"


def test_bank_state_rules():
    pins = Pins().init()
    assert rule_of(lambda: pins.command(Command.READ, ba=2)) == "bank"
    pins.command(Command.ACTIVE, T.tRC, ba=1)
    assert rule_of(lambda: pins.command(Command.ACTIVE, ba=1)) == "bank"
    assert rule_of(lambda: pins.command(Command.REFRESH)) == "bank"
    assert rule_of(lambda: pins.command(Command.LOAD_MODE, a=0x20)) == "bank"


def test_refresh_interval_and_row_open_time():
    pins = Pins().init()
    for _ in range(20):                                  # one refresh per interval: never owed
        pins.command(Command.REFRESH, T.tREFI)
    late = Pins().init()
    late.nop(late.model.refresh_start + (ULX3S_SDRAM.postponed_refreshes + 1) * T.tREFI - late.model.cycle)
    assert rule_of(lambda: late.nop(1)) == "refresh"
    patient = Pins(SDRAMChip(postponed_refreshes=100)).init()    # so the row's time runs out first
    patient.command(Command.ACTIVE)
    patient.nop(T.tRAS_max)
    assert rule_of(lambda: patient.nop(1)) == "tRAS"


def test_data_bus_rules():
    pins = Pins().init(latency=3)
    pins.command(Command.ACTIVE, T.tRCD)
    pins.command(Command.READ)
    assert rule_of(lambda: pins.command(Command.WRITE, dq_oe=1)) == "bus"    # read data still due
    pins = Pins().init(latency=3)
    pins.command(Command.ACTIVE, T.tRCD)
    pins.command(Command.READ, 3)
    assert rule_of(lambda: pins.nop(1, dq_oe=1)) == "bus"                     # drives over the read data
    pins = Pins().init()
    pins.command(Command.ACTIVE, T.tRCD)
    assert rule_of(lambda: pins.command(Command.WRITE)) == "bus"              # write data not driven


@pytest.mark.parametrize("latency", [2, 3])
@pytest.mark.parametrize("burst", [1, 2, 4, 8])
def test_data_round_trips_through_bursts_masks_and_auto_precharge(latency, burst):
    pins = Pins().init(latency=latency, burst=burst)
    pins.command(Command.ACTIVE, T.tRCD, ba=3, a=4321)
    column = 37
    written = {}
    start = pins.model.cycle
    for beat in range(burst):
        word = 0x1111 * (beat + 1) & 0xFFFF
        dqm = 2 if beat == 1 else 0          # the second word keeps its upper byte (0)
        pins._step(Command.WRITE if beat == 0 else None, ba=3, a=column | 1 << 10, dq=word, dq_oe=1, dqm=dqm)
        at = (column & ~(burst - 1)) | ((column + beat) & (burst - 1))
        written[at] = word & 0x00FF if dqm == 2 else word
    pins.nop(max(T.tWR + T.tRP, T.tRC - (pins.model.cycle - start)))
    pins.command(Command.ACTIVE, T.tRCD, ba=3, a=4321)
    issued = pins.model.cycle
    pins.command(Command.READ, burst + latency, ba=3, a=column)
    got = [pins.data[issued + latency + beat] for beat in range(burst)]
    assert got == [written[(column & ~(burst - 1)) | ((column + beat) & (burst - 1))] for beat in range(burst)]
    assert pins.model.reads == burst and pins.model.writes == burst


def test_back_to_back_single_word_reads_stream_one_word_a_cycle():
    pins = Pins().init(latency=2)
    pins.command(Command.ACTIVE, T.tRCD)
    for column in range(8):
        pins.command(Command.WRITE, dq=column * 3, dq_oe=1, a=column)
    first = pins.model.cycle
    for column in range(8):
        pins.command(Command.READ, a=column)
    pins.nop(3)
    assert [pins.data[first + 2 + c] for c in range(8)] == [c * 3 for c in range(8)]


def test_a_smaller_chip_has_its_own_geometry():
    chip = SDRAMChip(rows=4096, columns=256)
    assert chip.bytes == 4 * 4096 * 256 * 2 and chip.address_width == 12
    assert ULX3S_SDRAM.bytes == 32 << 20 and ULX3S_SDRAM.address_width == 13
