"""The board's system, without the board: the accelerator on an SDRAM, driven over a UART. `hw.board.top` puts it
on the ULX3S (clock, reset, pins); the simulator runs it as it is (`firmware.sim`, `simulator="board"`).

`BoardSystem(model, accel, clock_hz=…, divisor=…, chip=…, accelerator=…)`, one clock domain (`sync`):
- `rx` (in), `tx` (out): the UART line (idle high; 8N1 at `divisor` cycles a bit); `rx` passes two flip-flops
  first, so it may come straight from a pin;
- `sdram`: the chip's pins (`hw.memory.sdram.SDRAMPins`), from `SDRAMController` (CAS latency 2 up to 100 MHz,
  3 above), all registered;
- `ready` (out): the SDRAM's initialisation is done (its power-up wait alone is 200 µs): the host's memory
  requests before it wait, and a WRITE_MEM's bytes behind a beat not yet written are lost (`hw.board.bridge`);
- inside: the accelerator (`hw.control.accelerator`) and the host bridge's memory port, two AXI4 masters on one
  port (`AXI4Arbiter`, the accelerator first), served by the controller; the host bridge (`hw.board.bridge`)
  on the UART, its register port on the accelerator's host registers.
`accelerator`: a component of `Accelerator.Signature(accel)` in the accelerator's place (default the accelerator
of `model` on `accel`, its units in `unit_domain`, its reset nets through `global_buffer`: `Accelerator`).
"""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from golden.config import AcceleratorConfig, ModelConfig

from ..control.accelerator import Accelerator, GlobalBuffer
from ..memory.arbiter import AXI4Arbiter
from ..memory.sdram import SDRAMController, SDRAMPins
from ..memory.sdram_chip import ULX3S_SDRAM, SDRAMChip
from .bridge import HostBridge
from .protocol import RESYNC_BYTES
from .uart import UARTReceiver, UARTTransmitter

__all__ = ["BoardSystem"]


class BoardSystem(wiring.Component):
    def __init__(self, model: ModelConfig, accel: AcceleratorConfig, *, clock_hz: float, divisor: int,
                 chip: SDRAMChip = ULX3S_SDRAM, accelerator: wiring.Component | None = None,
                 unit_domain: str = "sync", global_buffer: GlobalBuffer | None = None):
        try:                                          # every check before any part is built
            chip.timing.cycles(clock_hz)
            self.receiver, self.transmitter = UARTReceiver(divisor), UARTTransmitter(divisor)
        except ValueError:
            self._MustUse__silence = True             # never built, so never elaborated
            raise
        self.accelerator = accelerator if accelerator is not None else Accelerator(
            model, accel, unit_domain=unit_domain, global_buffer=global_buffer)
        self.sdram_controller = SDRAMController(chip, clock_hz, data_width=8 * accel.dram_bytes_per_beat,
                                                cas_latency=2 if clock_hz <= 100e6 else 3)
        self.bridge = HostBridge(bus_bytes=accel.dram_bytes_per_beat, resync_cycles=RESYNC_BYTES * 10 * divisor)
        self.arbiter = AXI4Arbiter(Accelerator.Signature(accel).bus, 2)
        self.clock_hz, self.chip, self.divisor = clock_hz, chip, divisor
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "sdram": Out(SDRAMPins(chip)),
                          "ready": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.accelerator, m.submodules.bridge = self.accelerator, self.bridge
        m.submodules.arbiter, m.submodules.sdram = self.arbiter, self.sdram_controller
        m.submodules.receiver, m.submodules.transmitter = self.receiver, self.transmitter
        wiring.connect(m, self.accelerator.axi, self.arbiter.inputs[0])
        wiring.connect(m, self.bridge.memory, self.arbiter.inputs[1])
        wiring.connect(m, self.arbiter.bus, self.sdram_controller.axi)
        wiring.connect(m, self.bridge.registers, self.accelerator.host)
        wiring.connect(m, wiring.flipped(self.sdram), self.sdram_controller.sdram)
        m.submodules.rx_sync = FFSynchronizer(self.rx, self.receiver.rx, init=1)
        m.d.comb += [self.tx.eq(self.transmitter.tx), self.ready.eq(self.sdram_controller.ready)]
        wiring.connect(m, self.receiver.data, self.bridge.rx)
        wiring.connect(m, self.bridge.tx, self.transmitter.data)
        return m
