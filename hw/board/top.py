"""The ULX3S board top: the accelerator on the board's SDRAM, driven over the USB serial port.

`ULX3STop(model, accel, clock_hz=…, baud=…)`, elaborated for amaranth-boards' ULX3S platform:
- the 25 MHz oscillator through the ECP5 PLL (`pll_dividers`) to the `sync` clock at `clock_hz`, held in reset
  until the PLL locks (a reset synchronizer);
- the accelerator (`hw.control.accelerator`) and the host bridge's memory port, two AXI4 masters on one port
  (`AXI4Arbiter`, the accelerator first for reads), served by `SDRAMController` from the board's 32 MiB SDRAM;
  the SDRAM clock is the `sync` clock inverted (a DDR output), so commands and data, launched on the rising
  edge, are sampled by the chip half a cycle later;
- the host bridge (`hw.board.bridge`) on the UART (`hw.board.uart`, the line synchronised by two flip-flops) at
  `baud`, its register port on the accelerator's host registers.
The host's side is `firmware.board.BridgeLink`.
"""

from __future__ import annotations

from amaranth import ClockDomain, ClockSignal, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer, ResetSynchronizer

from golden.config import AcceleratorConfig, ModelConfig

from ..control.accelerator import Accelerator
from ..memory.arbiter import AXI4Arbiter
from ..memory.sdram import SDRAMController
from ..memory.sdram_chip import ULX3S_SDRAM, SDRAMChip
from .bridge import HostBridge
from .protocol import RESYNC_BYTES
from .uart import UARTReceiver, UARTTransmitter, divisor_for

__all__ = ["ULX3STop", "pll_dividers"]

OSCILLATOR_HZ = 25e6
_VCO_HZ = (400e6, 800e6)


def pll_dividers(input_hz: float, output_hz: float) -> tuple[int, int, int]:
    """(CLKI_DIV, CLKFB_DIV, CLKOP_DIV) of an ECP5 EHXPLLL fed back from CLKOP: output = input / CLKI_DIV ·
    CLKFB_DIV, VCO = output · CLKOP_DIV in 400-800 MHz; the exact ratio if there is one, else the closest (refused
    beyond 0.5 %)."""
    best = None
    for input_div in range(1, 129):
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


class ULX3STop(wiring.Component):
    def __init__(self, model: ModelConfig, accel: AcceleratorConfig, *, clock_hz: float = 50e6,
                 baud: float = 3_000_000, chip: SDRAMChip = ULX3S_SDRAM, accelerator: wiring.Component | None = None):
        """`accelerator`: a component of `Accelerator.Signature(accel)` in the accelerator's place (default the
        accelerator of `model` on `accel`)."""
        try:                                          # every check before any part is built
            self.dividers = pll_dividers(OSCILLATOR_HZ, clock_hz)
            self.divisor = divisor_for(clock_hz, baud)
            chip.timing.cycles(clock_hz)
        except ValueError:
            self._MustUse__silence = True             # never built, so never elaborated
            raise
        self.accelerator = accelerator if accelerator is not None else Accelerator(model, accel)
        self.sdram = SDRAMController(chip, clock_hz, data_width=8 * accel.dram_bytes_per_beat,
                                     cas_latency=2 if clock_hz <= 100e6 else 3)
        self.clock_hz, self.chip = clock_hz, chip
        self.bridge = HostBridge(bus_bytes=accel.dram_bytes_per_beat,
                                 resync_cycles=RESYNC_BYTES * 10 * self.divisor)
        self.arbiter = AXI4Arbiter(Accelerator.Signature(accel).bus, 2)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        self._clock(m, platform)
        m.submodules.accelerator, m.submodules.bridge = self.accelerator, self.bridge
        m.submodules.arbiter, m.submodules.sdram = self.arbiter, self.sdram
        wiring.connect(m, self.accelerator.axi, self.arbiter.inputs[0])
        wiring.connect(m, self.bridge.memory, self.arbiter.inputs[1])
        wiring.connect(m, self.arbiter.bus, self.sdram.axi)
        wiring.connect(m, self.bridge.registers, self.accelerator.host)
        self._uart(m, platform)
        self._sdram_pins(m, platform)
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
        m.d.comb += ClockSignal("sync").eq(clock)
        m.submodules.reset = ResetSynchronizer(~locked, domain="sync")
        platform.add_clock_constraint(clock, self.clock_hz)

    def _uart(self, m, platform):
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx, m.submodules.uart_tx = rx, tx = io.Buffer("i", uart.rx), io.Buffer("o", uart.tx)
        m.submodules.receiver = receiver = UARTReceiver(self.divisor)
        m.submodules.transmitter = transmitter = UARTTransmitter(self.divisor)
        m.submodules.rx_sync = FFSynchronizer(rx.i, receiver.rx, init=1)
        m.d.comb += tx.o.eq(transmitter.tx)
        wiring.connect(m, receiver.data, self.bridge.rx)
        wiring.connect(m, self.bridge.tx, transmitter.data)

    def _sdram_pins(self, m, platform):
        pins, ports = self.sdram.sdram, platform.request("sdram", 0, dir="-")
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
