"""The host registers (`hw.control.registers`) behind an AXI4-Lite slave with the specification's port names, so a
vendor block design or a soft CPU connects it directly.

AXI4-Lite (`bus`, 32-bit data, byte addresses, the low two bits ignored): a write is taken when AWVALID and
WVALID are both high (AWREADY and WREADY rise together), its response follows the next cycle and is held until
BREADY; a read is taken while no read is under way, its data follows two cycles later (its offset registered
first) and is held until RREADY.
Unmapped offsets answer SLVERR (reads return 0); writes to read-only registers are ignored with OKAY. WSTRB
selects the bytes of a read-write register that change.

Towards the controller: `start` and `soft_reset` are one-cycle pulses of a write of 1 to their CONTROL bits, from
registers: high the cycle after the write is taken (the cycle its response appears), so the reset they spread to
every unit starts at a flip-flop, not at the bus's handshake; a read taken after the write's response has been
accepted sees what the pulse changed (STATUS.busy of a run it started). `irq` is high while CONTROL.irq_enable and
STATUS.done; the read-write registers are outputs named after them (`task`, `program_addr`, …), the read-only ones
inputs (`busy`, `done`, `error`, `cause`, `error_pc`, `cycles` of 64 bits, and one per performance counter:
`busy_gemm`, …).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..common.pipeline import kept_copies
from ..memory.axi import AXI4Lite, Response
from .isa import ErrorCause
from .registers import COUNTERS, ID_MAGIC, ID_VERSION, REGISTER_BYTES, REGISTERS

__all__ = ["HostRegisters"]

_COUNTER_PORTS = [name.lower() for name, _ in COUNTERS]
_WRITABLE = [reg for reg in REGISTERS if reg.access == "rw"]


class HostRegisters(wiring.Component):
    def __init__(self, config_hash: int, addr_width: int = 8):
        problem = None
        if not isinstance(config_hash, int) or not 0 <= config_hash < 1 << 32:
            problem = f"config_hash = {config_hash!r}: a 32-bit value"
        elif (1 << addr_width) <= max(reg.offset for reg in REGISTERS):
            problem = f"addr_width = {addr_width}: too narrow for the register map"
        if problem:
            self._MustUse__silence = True         # never built, so never elaborated
            raise ValueError(f"HostRegisters {problem}")
        self.config_hash = config_hash
        super().__init__({
            "bus": In(AXI4Lite.Signature(addr_width, 32)),
            "start": Out(1), "soft_reset": Out(1), "irq": Out(1),
            **{reg.name.lower(): Out(32) for reg in _WRITABLE},
            "busy": In(1), "done": In(1), "error": In(1), "cause": In(ErrorCause), "error_pc": In(32),
            "cycles": In(64),
            **{name: In(32) for name in _COUNTER_PORTS},
        })

    def _read_values(self, irq_enable) -> dict[str, object]:
        """Register name → the value a read returns."""
        values = {
            "ID": Const(ID_MAGIC << 16 | ID_VERSION, 32),
            "CONFIG_HASH": Const(self.config_hash, 32),
            "CONTROL": Cat(Const(0, 2), irq_enable),
            "STATUS": Cat(self.busy, self.done, self.error),
            "ERROR": self.cause.as_value(),
            "ERROR_PC": self.error_pc,
            "CYCLES_LO": self.cycles[:32],
            "CYCLES_HI": self.cycles[32:],
            **{reg.name: getattr(self, reg.name.lower()) for reg in _WRITABLE},
            **{name: getattr(self, name.lower()) for name, _ in COUNTERS},
        }
        assert set(values) == {reg.name for reg in REGISTERS}
        return values

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        irq_enable = Signal()
        m.d.comb += self.irq.eq(irq_enable & self.done)

        # --- Writes ----------------------------------------------------------------------------------------
        take_write = bus.awvalid & bus.wvalid & ~bus.bvalid
        m.d.comb += [bus.awready.eq(take_write), bus.wready.eq(take_write)]
        write_offset = bus.awaddr & ~(REGISTER_BYTES - 1)
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        m.d.sync += [self.start.eq(0), self.soft_reset.eq(0)]     # pulses: a cycle long unless written below
        with m.If(take_write):
            m.d.sync += [bus.bvalid.eq(1), bus.bresp.eq(Response.SLVERR)]
            with m.Switch(write_offset):
                for reg in REGISTERS:
                    with m.Case(reg.offset):
                        m.d.sync += bus.bresp.eq(Response.OKAY)
                        if reg.name == "CONTROL":
                            m.d.sync += [self.start.eq(bus.wstrb[0] & bus.wdata[0]),
                                         self.soft_reset.eq(bus.wstrb[0] & bus.wdata[1])]
                            with m.If(bus.wstrb[0]):
                                m.d.sync += irq_enable.eq(bus.wdata[2])
                        elif reg.access == "rw":
                            target = getattr(self, reg.name.lower())
                            for byte in range(REGISTER_BYTES):
                                with m.If(bus.wstrb[byte]):
                                    m.d.sync += target[8 * byte:8 * byte + 8].eq(bus.wdata[8 * byte:8 * byte + 8])

        # --- Reads -----------------------------------------------------------------------------------------
        values = self._read_values(irq_enable)
        # The read's offset is registered as it is taken (every cycle: it is used only in the cycle after a take)
        # and the register chosen by it a cycle later, so that the decoding of the master's address is not in the
        # same cycle as the multiplexer; a copy of the offset per byte of `rdata` (no one net reaches them all).
        reading = Signal()
        read_offsets = kept_copies(m, bus.araddr & ~(REGISTER_BYTES - 1), REGISTER_BYTES, "read_offset")
        m.d.comb += bus.arready.eq(~bus.rvalid & ~reading)
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        m.d.sync += reading.eq(bus.arvalid & bus.arready)
        with m.If(reading):
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(0), bus.rresp.eq(Response.SLVERR)]
            for byte, read_offset in enumerate(read_offsets):
                with m.Switch(read_offset):
                    for reg in REGISTERS:
                        with m.Case(reg.offset):
                            m.d.sync += bus.rdata[8 * byte:8 * byte + 8].eq(values[reg.name][8 * byte:8 * byte + 8])
                            if byte == 0:
                                m.d.sync += bus.rresp.eq(Response.OKAY)
        return m
