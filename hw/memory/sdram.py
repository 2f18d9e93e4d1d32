"""An SDR SDRAM controller behind an AXI4 slave port: the board's DRAM for the accelerator (and the host bridge).

`SDRAMController(chip, clock_hz, data_width=…)`:
- `axi` (AXI4 slave, `data_width` bits, a multiple of 16): INCR bursts of the full bus width (ARSIZE/AWSIZE =
  log2 of the bus bytes), served one at a time in the order accepted (AR and AW alternate when both wait).
  A burst of another size or type, or one reaching past the chip, is answered SLVERR without touching the
  SDRAM (read data 0; write data taken and dropped). W beats are taken into `W_BUFFER` beats of buffer (the
  last two, slots the WRITEs read in turn) ahead of their WRITEs (WREADY from its fill alone, whatever the
  burst), so a W beat may be taken before its AW and before the burst ahead of it is done. WSTRB masks bytes
  (through DQM). RRESP/BRESP OKAY otherwise; RID/BID echo ARID/AWID. A read burst's beats follow each other at
  one word a cycle when RREADY keeps up; the return buffer holds `read_buffer` beats, and reads are issued only
  against free room.
- `sdram`: the chip's pins, all driven from registers, `PIN_STAGES` = 2 cycles after the decision (so that
  neither the decision's logic nor the pins pull the other's registers across the chip); DQ's input is
  registered too, so read data reach the beat assembler CL + 3 cycles after the READ is decided.
- `ready`: the initialisation is done.

Scheduling: the mode register holds burst length 1 and CAS latency `cas_latency`; every word is its own READ or
WRITE, one a cycle in an open row. Word address bits [c-1:0] are the column, the next two the bank, the rest the
row, so a sequential stream changes row every 2 × columns bytes and moves to the next bank; whether a word's row
is open is worked out in a cycle of its own at a burst's first word and at each such change. Each bank keeps its
row open until another row of it is needed or a refresh falls due; a refresh (one per tREFI, never postponed)
closes every bank. A WRITE waits until no read data are due on DQ. Every timing rule of `hw.memory.sdram_chip`
is counted in cycles of `clock_hz` (tests run it against `hw.sim.sdram.SDRAMModel`, which raises on any breach).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..common.arith import times_constant
from ..common.pipeline import delay_line, ping_pong
from .axi import AXI4, Burst, Response
from .sdram_chip import SDRAMChip

__all__ = ["SDRAMController", "SDRAMPins"]


class SDRAMPins(wiring.Signature):
    """The pins of an SDR SDRAM chip, controller side: commands, address, DQ split into out/enable/in. The
    command pins reset to CKE high and CS# high (command inhibit), as the power-up wait wants."""

    def __init__(self, chip: SDRAMChip):
        self.chip = chip
        bank_bits = (chip.banks - 1).bit_length()
        super().__init__({
            "cke": Out(1, init=1), "cs_n": Out(1, init=1), "ras_n": Out(1, init=1), "cas_n": Out(1, init=1),
            "we_n": Out(1, init=1),
            "ba": Out(bank_bits), "a": Out(chip.address_width),
            "dq_o": Out(chip.data_width), "dq_oe": Out(1), "dq_i": In(chip.data_width),
            "dqm": Out(chip.data_width // 8),
        })


# W beats held between the port and the WRITE decision: a buffer's output register and two slots the WRITEs read in
# turn (the decision moves only the slots' read side).
W_BUFFER = 3
PIN_STAGES = 2      # registers from a command's decision to the pins

_NOP, _ACTIVE, _READ, _WRITE, _PRECHARGE, _REFRESH, _LOAD_MODE = (
    (1, 1, 1), (0, 1, 1), (1, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0))


class SDRAMController(wiring.Component):
    def __init__(self, chip: SDRAMChip, clock_hz: float, *, data_width: int = 128, addr_width: int = 32,
                 id_width: int = 1, cas_latency: int = 3, read_buffer: int = 4):
        problem = None
        if not isinstance(data_width, int) or data_width % chip.data_width or data_width < chip.data_width:
            problem = f"data_width = {data_width!r}: must be a multiple of the chip's {chip.data_width} bits"
        elif cas_latency not in chip.cas_latencies:
            problem = f"cas_latency = {cas_latency!r}: the chip takes {chip.cas_latencies}"
        elif not isinstance(addr_width, int) or (1 << addr_width) < chip.bytes:
            problem = f"addr_width = {addr_width!r}: too narrow for {chip.bytes} bytes"
        elif not isinstance(read_buffer, int) or read_buffer < 2:
            problem = f"read_buffer = {read_buffer!r}: must be at least 2 beats"
        if problem is not None:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"SDRAMController {problem}")
        self.chip, self.timing = chip, chip.timing.cycles(clock_hz)
        self.cas_latency, self.read_buffer = cas_latency, read_buffer
        self.words_per_beat = data_width // chip.data_width
        super().__init__({"axi": In(AXI4.Signature(addr_width, data_width, id_width)),
                          "sdram": Out(SDRAMPins(chip)), "ready": Out(1)})

    def elaborate(self, platform):
        m = Module()
        build = _Build(self, m)
        build.read_return()
        build.write_data()
        build.write_response()
        build.take_bursts()
        with m.FSM():
            build.initialise()
            with m.State("run"):
                with m.If(build.refresh()):
                    build.serve()
        return m


@dataclass(frozen=True)
class _Rule:
    """A timing rule's counter: a rule of n cycles loads n − 1 into `value`, which steps down to 0; `met` is
    `value` = 0 as a register of its own (from `value` = 1 a cycle before), so a decision reads a flip-flop, not
    a comparison. Per bank: `value` and `met` are `Array`s, and `rule[bank]` is that bank's rule."""
    value: object
    met: object

    @staticmethod
    def counter(m: Module, name: str, longest: int) -> "_Rule":
        rule = _Rule(Signal(range(max(longest, 2)), name=name), Signal(init=1, name=f"{name}_met"))
        with m.If(rule.value != 0):
            m.d.sync += [rule.value.eq(rule.value - 1), rule.met.eq(rule.value == 1)]
        return rule

    def __getitem__(self, bank) -> "_Rule":
        return _Rule(self.value[bank], self.met[bank])

    def load(self, m: Module, cycles: int):
        m.d.sync += [self.value.eq(max(cycles, 1) - 1), self.met.eq(cycles <= 1)]


class _Build:
    """The controller's logic, part by part, on shared signals (one instance per elaboration)."""

    def __init__(self, controller: SDRAMController, m: Module):
        self.c, self.m = controller, m
        chip, t = controller.chip, controller.timing
        self.chip, self.t, self.axi = chip, t, controller.axi
        self.signature = controller.axi.signature
        banks = chip.banks
        column_bits, bank_bits = (chip.columns - 1).bit_length(), (banks - 1).bit_length()
        self.beat_size = (self.signature.beat_bytes - 1).bit_length()

        # The pins: registered, NOP unless a command is decided.
        self.command = Signal(3, init=0b111)                      # (RAS#, CAS#, WE#) = NOP
        self.bank_pin, self.address_pin = Signal(bank_bits), Signal(chip.address_width)
        self.dq_out, self.dq_enable, self.mask = Signal(chip.data_width), Signal(), Signal(chip.data_width // 8)
        pins = controller.sdram
        m.d.sync += [pins.cke.eq(1), pins.cs_n.eq(0)]
        # `PIN_STAGES` registers from the decision to each pin: the first can sit beside the decision's logic, the
        # last beside the pin. The command's operands: registers the reset does not reach (the command and DQ's
        # enable say when they count).
        m.d.comb += [Cat(pins.we_n, pins.cas_n, pins.ras_n).eq(delay_line(m, self.command, PIN_STAGES,
                                                                             "command")[-1]),
                     pins.dq_oe.eq(delay_line(m, self.dq_enable, PIN_STAGES, "dq_enable")[-1])]
        for pin, value in ((pins.ba, self.bank_pin), (pins.a, self.address_pin), (pins.dq_o, self.dq_out),
                           (pins.dqm, self.mask)):
            m.d.comb += pin.eq(delay_line(m, value, PIN_STAGES, pin.name, data=True)[-1])
        self.dq_in = Signal(chip.data_width)
        m.d.sync += self.dq_in.eq(pins.dq_i)

        # Timing counters: a rule of n cycles loads n − 1 and is met when the counter is 0 (`_Rule`).
        def per_bank(name):
            rules = [_Rule.counter(m, f"{name}_{b}", max(t.tRCD, t.tRAS, t.tWR, t.tRP, t.tRC)) for b in range(banks)]
            return _Rule(Array(rule.value for rule in rules), Array(rule.met for rule in rules))

        self.to_rw, self.to_precharge, self.to_active, self.to_reactivate = (
            per_bank(name) for name in ("trcd", "tras_twr", "trp", "trc"))
        self.rrd = _Rule.counter(m, "trrd", t.tRRD)
        self.wait = _Rule.counter(m, "wait", max(t.power_up, t.tRFC, t.tRP, t.tMRD))
        self.open = Array(Signal(name=f"open_{b}") for b in range(banks))
        self.open_row = Array(Signal(chip.address_width, name=f"row_{b}") for b in range(banks))
        self.refresh_timer, self.refresh_due = Signal(range(t.tREFI)), Signal()

        # The burst being served, word by word.
        self.serving, self.writing, self.failed, self.prefer_write = Signal(), Signal(), Signal(), Signal()
        self.word = Signal(column_bits + bank_bits + (chip.rows - 1).bit_length())
        self.words_left = Signal(range(256 * controller.words_per_beat + 1))
        self.burst_id = Signal(self.signature.id_width)
        self.in_beat = Signal(range(controller.words_per_beat))
        self.column, self.bank = self.word[:column_bits], self.word[column_bits:column_bits + bank_bits]
        self.row = self.word[column_bits + bank_bits:]
        # Whether the word's bank has the word's row open (`hit`), from registers: worked out (`known`) the cycle
        # after the word changes row (a burst's first word, the next column's wrap), and kept by the commands
        # that open and close the word's bank since; the word's decision compares no row.
        self.hit, self.known = Signal(), Signal()
        self.column_last = self.column == chip.columns - 1

        # What a word hands on: the read return's entry, the read credit it spends, the write response.
        self.entry = data.StructLayout({"valid": 1, "error": 1, "last_word": 1, "last": 1,
                                        "id": self.signature.id_width})
        self.launched, self.spend = Signal(self.entry), Signal()
        self.respond, self.respond_error = Signal(), Signal()

    def _issue(self, code, bank=0, address=0):
        self.m.d.comb += [self.command.eq(Cat(*reversed(code))), self.bank_pin.eq(bank),
                          self.address_pin.eq(address)]

    def read_return(self):
        """A pipeline of `PIN_STAGES` + CL + 1 stages (the pins' registers, CL, DQ's input register), a beat
        assembler and a buffer of `read_buffer` beats; reads are issued against credits for its room."""
        m, c, axi, chip = self.m, self.c, self.axi, self.chip
        stages = [Signal(self.entry, name=f"stage_{i}") for i in range(PIN_STAGES + c.cas_latency + 1)]
        m.d.sync += [after.eq(before) for before, after in zip([self.launched] + stages, stages)]
        self.reads_due = Cat(stage.valid & ~stage.error for stage in stages[:c.cas_latency]).any()
        arriving = stages[-1]
        beat = data.StructLayout({"data": self.signature.data_width, "last": 1, "error": 1,
                                  "id": self.signature.id_width})
        m.submodules.returned = returned = SyncFIFO(width=beat.size, depth=c.read_buffer)   # exactly that room
        gathered, beat_error = Signal(self.signature.data_width), Signal()
        word_in = Mux(arriving.error, 0, self.dq_in)
        assembled = Cat(gathered[chip.data_width:], word_in) if c.words_per_beat > 1 else word_in
        with m.If(arriving.valid):
            m.d.sync += [gathered.eq(assembled),
                         beat_error.eq(Mux(arriving.last_word, 0, beat_error | arriving.error))]
            with m.If(arriving.last_word):
                out = Signal(beat)
                m.d.comb += [out.data.eq(assembled), out.last.eq(arriving.last), out.id.eq(arriving.id),
                             out.error.eq(beat_error | arriving.error),
                             returned.w_data.eq(out), returned.w_en.eq(1)]
        head = Signal(beat)
        m.d.comb += [head.eq(returned.r_data), axi.rvalid.eq(returned.r_rdy), returned.r_en.eq(axi.rready),
                     axi.rdata.eq(head.data), axi.rlast.eq(head.last), axi.rid.eq(head.id),
                     axi.rresp.eq(Mux(head.error, Response.SLVERR, Response.OKAY))]
        room = c.read_buffer * c.words_per_beat
        self.credits = Signal(range(room + 1), init=room)
        m.d.sync += self.credits.eq(self.credits - self.spend + Mux(axi.rvalid & axi.rready, c.words_per_beat, 0))

    def write_data(self):
        """W beats through a buffer, then two slots the WRITEs read in turn (`W_BUFFER` beats in all): WREADY and
        the valid beat the WRITE decision waits on leave registers, so the master's W handshake does not run on
        through the command decision into the master again; and the decision's `w_taken` moves only the slots'
        read side (a pointer and a flag), while the buffer's read and the slots' enables come from registers."""
        m, axi = self.m, self.axi
        beat = data.StructLayout({"data": self.signature.data_width, "strb": self.signature.data_width // 8})
        m.submodules.w_buffer = buffer = SyncFIFOBuffered(width=beat.size, depth=W_BUFFER - 2)
        m.d.comb += [buffer.w_data.eq(Cat(axi.wdata, axi.wstrb)), buffer.w_en.eq(axi.wvalid),
                     axi.wready.eq(buffer.w_rdy)]
        slots = [Signal(beat, name=f"w_slot{index}", reset_less=True) for index in range(2)]   # valid with `full`
        self.w_taken, fill = Signal(), Signal()
        full, filling, reading = ping_pong(m, fill & buffer.r_rdy, self.w_taken, "w_slots")
        self.w_beat = data.View(beat, Mux(reading, slots[1], slots[0]))
        self.w_valid = full.bit_select(reading, 1)
        m.d.comb += [fill.eq(~full.bit_select(filling, 1)), buffer.r_en.eq(fill)]
        for index, slot in enumerate(slots):
            with m.If(fill & (filling == index)):
                m.d.sync += slot.eq(buffer.r_data)

    def write_response(self):
        """One response held at a time (a write burst is taken only while none is)."""
        m, axi = self.m, self.axi
        with m.If(axi.bvalid & axi.bready):
            m.d.sync += axi.bvalid.eq(0)
        with m.If(self.respond):
            m.d.sync += [axi.bvalid.eq(1), axi.bid.eq(self.burst_id),
                         axi.bresp.eq(Mux(self.respond_error, Response.SLVERR, Response.OKAY))]

    def take_bursts(self):
        """AW or AR, alternating when both wait, when no burst is being served."""
        m, axi = self.m, self.axi

        def take(address, length, size, burst, ident, write):
            # the burst's last byte, at the beat size (a burst of another size is refused anyway): one adder
            last_byte = address + Cat(Const((1 << self.beat_size) - 1, self.beat_size), length)
            top = self.chip.bytes.bit_length() - 1
            beyond = last_byte[top:].any() if self.chip.bytes == 1 << top else last_byte >= self.chip.bytes
            bad = (size != self.beat_size) | (burst != Burst.INCR) | beyond | address[:self.beat_size].any()
            m.d.comb += (axi.awready if write else axi.arready).eq(1)
            m.d.sync += [self.serving.eq(1), self.writing.eq(write), self.failed.eq(bad), self.burst_id.eq(ident),
                         self.word.eq(address[1:]), self.known.eq(0),
                         self.words_left.eq(times_constant(length + 1, self.c.words_per_beat)),
                         self.in_beat.eq(0), self.prefer_write.eq(~write)]

        with m.If(~self.serving & self.c.ready):
            with m.If(axi.awvalid & ~axi.bvalid & (self.prefer_write | ~axi.arvalid)):
                take(axi.awaddr, axi.awlen, axi.awsize, axi.awburst, axi.awid, 1)
            with m.Elif(axi.arvalid):
                take(axi.araddr, axi.arlen, axi.arsize, axi.arburst, axi.arid, 0)

    def initialise(self):
        """The power-up wait, PRECHARGE ALL, the initialisation's refreshes, LOAD MODE (burst length 1, CL)."""
        m, t, wait = self.m, self.t, self.wait
        refreshes = Signal(range(self.chip.init_refreshes + 1))
        with m.State("power-up"):
            wait.load(m, t.power_up)
            m.next = "power-up wait"
        with m.State("power-up wait"):
            with m.If(wait.met):
                self._issue(_PRECHARGE, 0, 1 << 10)
                wait.load(m, t.tRP)
                m.next = "init refresh"
        with m.State("init refresh"):
            with m.If(wait.met & (refreshes == self.chip.init_refreshes)):
                self._issue(_LOAD_MODE, 0, self.c.cas_latency << 4)
                wait.load(m, t.tMRD)
                m.next = "mode"
            with m.Elif(wait.met):
                self._issue(_REFRESH)
                wait.load(m, t.tRFC)
                m.d.sync += refreshes.eq(refreshes + 1)
        with m.State("mode"):
            with m.If(wait.met):
                m.d.sync += [self.c.ready.eq(1), self.refresh_timer.eq(t.tREFI - 1)]
                m.next = "run"

    def refresh(self):
        """One refresh every tREFI, never postponed beyond closing the open rows. Returns whether no refresh
        is under way (the words may go on)."""
        m, t, banks = self.m, self.t, range(self.chip.banks)
        m.d.sync += self.refresh_timer.eq(Mux(self.refresh_timer == 0, t.tREFI - 1, self.refresh_timer - 1))
        with m.If(self.refresh_timer == 0):
            m.d.sync += self.refresh_due.eq(1)
        with m.If(self.refresh_due & Cat(*self.open).any()):
            with m.If(Cat(self.to_precharge.met[b] | ~self.open[b] for b in banks).all()):
                self._issue(_PRECHARGE, 0, 1 << 10)
                m.d.sync += self.hit.eq(0)
                for b in banks:
                    m.d.sync += self.open[b].eq(0)
                    self.to_active[b].load(m, t.tRP)
        with m.Elif(self.refresh_due & Cat(self.to_active.met[b] for b in banks).all() & self.wait.met):
            self._issue(_REFRESH)
            self.wait.load(m, t.tRFC)
            m.d.sync += self.refresh_due.eq(self.refresh_timer == 0)
        return ~self.refresh_due

    def _advance(self):
        """The word is done: on to the next; a read's entry enters the return pipeline."""
        m, last_word = self.m, self.in_beat == self.c.words_per_beat - 1
        final = self.words_left == 1
        m.d.sync += [self.word.eq(self.word + 1), self.words_left.eq(self.words_left - 1),
                     self.in_beat.eq(Mux(last_word, 0, self.in_beat + 1))]
        with m.If(final):
            m.d.sync += self.serving.eq(0)
        with m.If(self.column_last):
            m.d.sync += self.known.eq(0)
        m.d.comb += [self.launched.valid.eq(~self.writing), self.launched.error.eq(self.failed),
                     self.launched.last_word.eq(last_word), self.launched.last.eq(final),
                     self.launched.id.eq(self.burst_id), self.spend.eq(~self.writing)]
        with m.If(self.writing):
            m.d.comb += [self.w_taken.eq(last_word), self.respond.eq(final), self.respond_error.eq(self.failed)]

    def _open_row(self):
        """The word's bank has another row open, or none: PRECHARGE it, or ACTIVATE the word's row."""
        m, t, bank = self.m, self.t, self.bank
        with m.If(self.open[bank]):
            with m.If(self.to_precharge.met[bank]):
                self._issue(_PRECHARGE, bank, 0)
                m.d.sync += self.open[bank].eq(0)
                self.to_active[bank].load(m, t.tRP)
        with m.Elif(self.to_active.met[bank] & self.to_reactivate.met[bank] & self.rrd.met):
            self._issue(_ACTIVE, bank, self.row)
            m.d.sync += [self.open[bank].eq(1), self.open_row[bank].eq(self.row), self.hit.eq(1)]
            self.to_rw[bank].load(m, t.tRCD)
            self.to_precharge[bank].load(m, t.tRAS)
            self.to_reactivate[bank].load(m, t.tRC)
            self.rrd.load(m, t.tRRD)

    def serve(self):
        """The word's command, one a cycle: a refused burst's words pass without one; a WRITE waits for its W
        beat and for no read data due on DQ, a READ for a credit."""
        m, chip, bank = self.m, self.chip, self.bank
        last_word = self.in_beat == self.c.words_per_beat - 1
        with m.If(self.serving & ~self.known):
            m.d.sync += [self.hit.eq(self.open[bank] & (self.open_row[bank] == self.row)), self.known.eq(1)]
        with m.If(self.serving & self.failed):
            with m.If(Mux(self.writing, self.w_valid | ~last_word, self.credits != 0)):
                self._advance()
        with m.Elif(self.serving & self.known & self.wait.met):
            with m.If(~self.hit):
                self._open_row()
            with m.Elif(self.to_rw.met[bank] & self.writing & self.w_valid & ~self.reads_due):
                self._issue(_WRITE, bank, self.column)
                m.d.comb += [self.dq_out.eq(self.w_beat.data.word_select(self.in_beat, chip.data_width)),
                             self.dq_enable.eq(1),
                             self.mask.eq(~self.w_beat.strb.word_select(self.in_beat, chip.data_width // 8))]
                with m.If(self.to_precharge.value[bank] <= self.t.tWR - 1):     # the counter steps down too
                    self.to_precharge[bank].load(m, self.t.tWR)
                self._advance()
            with m.Elif(self.to_rw.met[bank] & ~self.writing & (self.credits != 0)):
                self._issue(_READ, bank, self.column)
                self._advance()
