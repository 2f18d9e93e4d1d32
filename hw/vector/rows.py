"""The two-row buffer of the row-wise vector units (LayerNorm, softmax): a row comes in beat by beat while the
unit reduces it (sums, maximum), waits for its per-row statistics, then is read back beat by beat.

`RowBuffer` is built inside a unit's `elaborate`: two banks of ⌈length / lanes⌉ words in one `Memory`, each bank
FREE → FILLING → REDUCED → STATISTICS → READY → READING → FREE. The unit marks REDUCED (its reduction
pipeline saw the row's last beat), STATISTICS/READY (its per-row computation), and frees a bank once its
read-back no longer needs the bank's per-row registers.
"""

from __future__ import annotations

from amaranth import Const, Mux, Signal
from amaranth.lib import data, enum
from amaranth.lib.memory import Memory

from ..common.arith import times_constant

__all__ = ["BankState", "RowBuffer", "pick", "lane_mask"]


class BankState(enum.Enum, shape=3):
    FREE = 0
    FILLING = 1
    REDUCED = 2
    STATISTICS = 3
    READY = 4
    READING = 5


def pick(bank, pair):
    """pair[bank] of two like-shaped values."""
    return Mux(bank, pair[1], pair[0])


class RowBuffer:
    """Rows of `length` values of `shape`, `lanes` per beat, from the stream `input` (lanes past the row's end
    replaced by `fill`), at most `rows` of them while `enable`. Read back with `issue` (a beat of the bank
    `read_bank`, in order; `read_last` on a row's last beat): the beat is in `read_data` a cycle later, when
    `read_enable` was set (it holds otherwise). A beat taken is written the cycle after: a bank is read no sooner
    than two cycles after its row's last beat is taken (the units' reductions take longer)."""

    def __init__(self, m, name: str, input, *, length: int, lanes: int, shape, fill: int, rows, enable):
        self.beats = beats = -(-length // lanes)
        self.edge = length - (beats - 1) * lanes                        # valid lanes of the last beat
        # A row is written into one bank while the other is read: never the same word, so the read of a word
        # being written is left undefined (`no_rw_check`: no logic emulating the old word); the read is an
        # asynchronous port and a register, which synthesis folds into the block RAM.
        memory = m.submodules[name] = Memory(shape=data.ArrayLayout(shape, lanes), depth=2 * beats, init=[],
                                             attrs={"no_rw_check": 1})
        write, read = memory.write_port(), memory.read_port(domain="comb")
        self.read_enable = Signal(name=f"{name}_read_enable")
        self.read_data = Signal(data.ArrayLayout(shape, lanes), name=f"{name}_read_data")
        with m.If(self.read_enable):
            m.d.sync += self.read_data.eq(read.data)
        self.state = [Signal(BankState, name=f"{name}_bank{b}") for b in range(2)]

        # intake: a row starts in a free bank (one still FILLING may hold a complete row not yet reduced)
        self.rows_in = Signal(range(1 << len(rows)), name=f"{name}_rows_in")
        self.beat = Signal(range(beats), name=f"{name}_beat")
        self.bank = Signal(name=f"{name}_bank")
        self.first, self.last = self.beat == 0, self.beat == beats - 1
        m.d.comb += input.ready.eq(enable & (self.rows_in != rows) &
                                   ((self.beat != 0) | (pick(self.bank, self.state) == BankState.FREE)))
        self.taking = input.valid & input.ready
        self.masked = Signal(data.ArrayLayout(shape, lanes), name=f"{name}_masked")
        for lane in range(lanes):
            keep = Const(1) if lane < self.edge else ~self.last
            m.d.comb += self.masked[lane].eq(Mux(keep, input.payload[lane], fill))
        # the beat is written the cycle after it is taken, from registers (its bank is read only once reduced, a
        # few cycles on): the input's path ends at a register, not at the memory's write port
        write_address, write_data = Signal.like(write.addr, reset_less=True), Signal.like(self.masked, reset_less=True)
        write_enable = Signal()
        m.d.sync += [write_address.eq(times_constant(self.bank, beats) + self.beat), write_data.eq(self.masked),
                     write_enable.eq(self.taking)]
        m.d.comb += [write.addr.eq(write_address), write.data.eq(write_data), write.en.eq(write_enable)]
        with m.If(self.taking):
            m.d.sync += self.beat.eq(Mux(self.last, 0, self.beat + 1))
            self.set_state(m, self.bank, BankState.FILLING, self.first)
            with m.If(self.last):
                m.d.sync += [self.bank.eq(~self.bank), self.rows_in.eq(self.rows_in + 1)]

        # read-back
        self.read_bank = Signal(name=f"{name}_read_bank")
        self.read_beat = Signal(range(beats), name=f"{name}_read_beat")
        self.read_last = self.read_beat == beats - 1
        read_state = pick(self.read_bank, self.state)
        self.readable = (read_state == BankState.READY) | (read_state == BankState.READING)
        self.issue = Signal(name=f"{name}_issue")
        with m.If(self.issue):
            m.d.sync += self.read_beat.eq(Mux(self.read_last, 0, self.read_beat + 1))
            self.set_state(m, self.read_bank, BankState.READING)
            with m.If(self.read_last):
                m.d.sync += self.read_bank.eq(~self.read_bank)
        m.d.comb += read.addr.eq(times_constant(self.read_bank, beats) + self.read_beat)

    def intake_sides(self, m, name: str, stages: int) -> list[Signal]:
        """{valid, first, last, bank} of the beat taken, through `stages` registers: what the unit's reduction
        pipeline carries beside the beat's values (the last one meets the reduced beat)."""
        layout = data.StructLayout({"valid": 1, "first": 1, "last": 1, "bank": 1})
        sides = [Signal(layout, name=f"{name}{stage}") for stage in range(stages)]
        m.d.sync += [sides[0].valid.eq(self.taking), sides[0].first.eq(self.first), sides[0].last.eq(self.last),
                     sides[0].bank.eq(self.bank)]
        m.d.sync += [sides[stage].eq(sides[stage - 1]) for stage in range(1, stages)]
        return sides

    def set_state(self, m, bank, state: BankState, condition=Const(1)):
        """state[bank] ← `state` at the next edge where `condition` holds."""
        for b in range(2):
            with m.If(condition & (bank == b)):
                m.d.sync += self.state[b].eq(state)

    def reset(self, m):
        """A new command: no rows taken yet."""
        m.d.sync += self.rows_in.eq(0)


def lane_mask(m, name: str, lanes: int, edge: int, last) -> Signal:
    """A bit per lane: set unless the lane is past the row's end (`edge` lanes valid) on its `last` beat."""
    mask = Signal(lanes, name=name)
    for lane in range(lanes):
        m.d.comb += mask[lane].eq(Const(1) if lane < edge else ~last)
    return mask
