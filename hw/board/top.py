"""The ULX3S board top: the board's system (`hw.board.system`: the accelerator on the SDRAM, driven over the UART)
on the board's clock and pins.

`ULX3STop(model, accel, clock_hz=…, baud=…)`, elaborated for amaranth-boards' ULX3S platform:
- the 25 MHz oscillator through the ECP5 PLL (`pll_dividers`) to the `sync` clock at `clock_hz`, held in reset
  until the PLL locks (a reset synchronizer); the accelerator's controller and units on the same clock in a
  reset-less domain, `units`, reset from two registers in `sync` (`Accelerator`'s `unit_domain`); `sync`'s reset
  and those two registers reach their flip-flops over global nets (`ecp5_global`: with the clock, 4 of the 8
  that may reach logic);
- `BoardSystem` at `baud` on the USB serial port's UART pins, and on the board's 32 MiB SDRAM: the SDRAM clock
  is the `sync` clock inverted (a DDR output), so commands and data, launched on the rising edge, are sampled
  by the chip half a cycle later;
- LED 0 lit once the SDRAM is ready (the host waits for it after programming).
The host's side is `firmware.board`.
"""

from __future__ import annotations

from amaranth import ClockDomain, ClockSignal, Instance, Module, ResetSignal, Signal, Value
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer

from golden.config import AcceleratorConfig, ModelConfig

from ..memory.sdram_chip import ULX3S_SDRAM, SDRAMChip
from .system import BoardSystem
from .uart import divisor_for

__all__ = ["ULX3STop", "pll_dividers", "ecp5_global", "DEFAULT_CLOCK_HZ"]

OSCILLATOR_HZ = 25e6
# The default clock, 25 MHz × 12/5 = 60 MHz: the tiny accelerator on 4×4 places at 77.00-77.41 MHz constrained to
# 125 MHz (123fcdc, seeds 1-3) and meets 60 MHz on seeds 1 and 2 (docs/architecture.md, section 13); 20 cycles a bit
# make 3 Mbaud exactly.
DEFAULT_CLOCK_HZ = OSCILLATOR_HZ * 12 / 5
_PFD_HZ = (3.125e6, 400e6)                    # the phase detector's input: the oscillator over CLKI_DIV
_VCO_HZ = (400e6, 800e6)


def pll_dividers(input_hz: float, output_hz: float) -> tuple[int, int, int]:
    """(CLKI_DIV, CLKFB_DIV, CLKOP_DIV) of an ECP5 EHXPLLL fed back from CLKOP: output = input / CLKI_DIV ·
    CLKFB_DIV, the phase detector's input (input / CLKI_DIV) in 3.125-400 MHz, VCO = output · CLKOP_DIV in
    400-800 MHz; the exact ratio if there is one, else the closest (refused beyond 0.5 %)."""
    best = None
    for input_div in (d for d in range(1, 129) if _PFD_HZ[0] <= input_hz / d <= _PFD_HZ[1]):
        for feedback_div in range(1, 81):
            output = input_hz / input_div * feedback_div
            for output_div in range(1, 129):
                if _VCO_HZ[0] <= output * output_div <= _VCO_HZ[1]:
                    error = abs(output / output_hz - 1)
                    if best is None or error < best[0]:
                        best = (error, input_div, feedback_div, output_div)
                    break
    if best is None or best[0] > 0.005:
        raise ValueError(f"no ECP5 PLL setting makes {output_hz / 1e6:g} MHz from {input_hz / 1e6:g} MHz within 0.5 %")
    return best[1:]


def ecp5_global(m: Module, signal: Value, name: str) -> Signal:
    """`signal` on one of the ECP5's global nets, through a DCCA (no clock enable, so that nextpnr may place it at
    the centre): the same few nanoseconds to each of a reset's thousands of flip-flops, where a fabric net (nextpnr
    promotes clocks alone) spans the chip (e9ecbf7: 11.2 and 13.9 ns to a reset input)."""
    net = Signal(name=f"{name}_global")
    m.submodules[f"{name}_global"] = Instance("DCCA", i_CLKI=signal, o_CLKO=net)
    return net


class ULX3STop(wiring.Component):
    def __init__(self, model: ModelConfig, accel: AcceleratorConfig, *, clock_hz: float = DEFAULT_CLOCK_HZ,
                 baud: float = 3_000_000, chip: SDRAMChip = ULX3S_SDRAM, accelerator: wiring.Component | None = None):
        """`accelerator`: a component of `Accelerator.Signature(accel)` in the accelerator's place (default the
        accelerator of `model` on `accel`)."""
        try:                                          # every check before any part is built
            self.dividers = pll_dividers(OSCILLATOR_HZ, clock_hz)
            self.system = BoardSystem(model, accel, clock_hz=clock_hz, divisor=divisor_for(clock_hz, baud),
                                      chip=chip, accelerator=accelerator, unit_domain="units",
                                      global_buffer=ecp5_global)
        except ValueError:
            self._MustUse__silence = True             # never built, so never elaborated
            raise
        self.clock_hz = clock_hz
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        self._clock(m, platform)
        m.submodules.system = self.system
        self._uart(m, platform)
        self._sdram_pins(m, platform)
        m.submodules.ready_led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += led.o.eq(self.system.ready)
        return m

    def _clock(self, m, platform):
        clock, locked = Signal(name="pll_clock"), Signal(name="pll_locked")
        m.submodules.oscillator = oscillator = io.Buffer("i", platform.request("clk25", dir="-"))
        input_div, feedback_div, output_div = self.dividers
        m.submodules.pll = Instance(
            "EHXPLLL",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
            p_CLKI_DIV=input_div, p_CLKFB_DIV=feedback_div, p_CLKOP_DIV=output_div,
            p_CLKOP_CPHASE=output_div - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            a_FREQUENCY_PIN_CLKI=f"{OSCILLATOR_HZ / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{self.clock_hz / 1e6:g}",
            i_RST=0, i_STDBY=0, i_CLKI=oscillator.i, i_CLKFB=clock, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1,
            i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clock, o_LOCK=locked)
        m.domains.sync = ClockDomain("sync")
        # the accelerator's controller and units: `sync`'s clock, no domain reset (the accelerator's reset
        # registers, in `sync`, are set while `sync` resets)
        m.domains.units = ClockDomain("units", reset_less=True)
        m.d.comb += [ClockSignal("sync").eq(clock), ClockSignal("units").eq(clock)]
        m.domains.lock = ClockDomain("lock")       # the PLL's lock, synchronized: `sync`'s reset before its global
        m.d.comb += ClockSignal("lock").eq(clock)
        m.submodules.reset = ResetSynchronizer(~locked, domain="lock")
        m.d.comb += ResetSignal("sync").eq(ecp5_global(m, ResetSignal("lock"), "reset"))
        platform.add_clock_constraint(clock, self.clock_hz)

    def _uart(self, m, platform):
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx, m.submodules.uart_tx = rx, tx = io.Buffer("i", uart.rx), io.Buffer("o", uart.tx)
        m.d.comb += [self.system.rx.eq(rx.i), tx.o.eq(self.system.tx)]

    def _sdram_pins(self, m, platform):
        pins, ports = self.system.sdram, platform.request("sdram", 0, dir="-")
        m.submodules.sdram_clock = clock = io.DDRBuffer("o", ports.clk)
        m.d.comb += [clock.o[0].eq(0), clock.o[1].eq(1)]          # the clock inverted
        outputs = {"clk_en": pins.cke, "cs": ~pins.cs_n, "we": ~pins.we_n, "ras": ~pins.ras_n,
                   "cas": ~pins.cas_n, "ba": pins.ba, "a": pins.a, "dqm": pins.dqm}
        for name, value in outputs.items():                       # cs, we, ras, cas: active-low pins (PinsN)
            buffer = io.Buffer("o", getattr(ports, name))
            m.submodules[f"sdram_{name}"] = buffer
            m.d.comb += buffer.o.eq(value)
        m.submodules.sdram_dq = dq = io.Buffer("io", ports.dq)
        m.d.comb += [dq.o.eq(pins.dq_o), dq.oe.eq(pins.dq_oe), pins.dq_i.eq(dq.i)]
