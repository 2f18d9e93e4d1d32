"""The host registers behind their AXI4-Lite slave, driven by an AXI4-Lite master under random stalls: every
register reads what the map says, read-write registers keep what is written (byte strobes), CONTROL's pulses,
the interrupt, and SLVERR for unmapped offsets."""

import numpy as np
import pytest

from hw.control.host import HostRegisters
from hw.control.isa import ErrorCause
from hw.control.registers import COUNTERS, ID_MAGIC, ID_VERSION, REGISTERS, register
from hw.flow.export import lint, to_verilog
from hw.sim import simulate
from hw.sim.axilite import AXILiteError, AXILiteMaster

HASH = 0xC0FFEE11


@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_every_register_reads_and_writes_as_the_map_says(stall):
    dut = HostRegisters(HASH)
    rng = np.random.default_rng(int(stall * 10))
    inputs = {"busy": 1, "done": 0, "error": 1, "error_pc": 0x1234, "cycles": 0x1_2345_6789,
              **{name.lower(): int(rng.integers(1 << 32)) for name, _ in COUNTERS}}

    async def testbench(ctx):
        host = AXILiteMaster(ctx, dut.bus, ctx.tick, stall=stall, rng=rng)
        for name, value in inputs.items():
            ctx.set(getattr(dut, name), value)
        ctx.set(dut.cause, ErrorCause.BAD_TASK)
        expected = {"ID": ID_MAGIC << 16 | ID_VERSION, "CONFIG_HASH": HASH, "CONTROL": 0, "STATUS": 0b101,
                    "ERROR": ErrorCause.BAD_TASK.value, "ERROR_PC": 0x1234, "CYCLES_LO": 0x2345_6789,
                    "CYCLES_HI": 1, **{name: inputs[name.lower()] for name, _ in COUNTERS}}
        for reg in REGISTERS:
            if reg.access == "rw":
                value = int(rng.integers(1 << 32))
                await host.write(reg.offset, value)
                expected[reg.name] = value
                assert ctx.get(getattr(dut, reg.name.lower())) == value
        for reg in rng.permutation(REGISTERS):
            assert await host.read(reg.offset) == expected[reg.name], reg.name
        # Byte strobes: only byte 2 of TASK changes.
        task = register("TASK").offset
        await host.write(task, 0xAABBCCDD, strobe=0b0100)
        assert await host.read(task) == (expected["TASK"] & ~0x00FF0000) | 0x00BB0000
        # Writes to read-only registers are ignored.
        await host.write(register("ID").offset, 0)
        assert await host.read(register("ID").offset) == expected["ID"]

    simulate(dut, testbench)


def test_control_pulses_and_interrupt():
    dut = HostRegisters(HASH)
    control = register("CONTROL").offset
    seen = {"start": 0, "soft_reset": 0}

    async def tick_counting(ctx):
        for name in seen:
            seen[name] += ctx.get(getattr(dut, name))
        await ctx.tick()

    async def testbench(ctx):
        host = AXILiteMaster(ctx, dut.bus, lambda: tick_counting(ctx))
        await host.write(control, 0b001)
        assert seen == {"start": 1, "soft_reset": 0}
        await host.write(control, 0b110)            # soft reset, interrupt enable
        assert seen == {"start": 1, "soft_reset": 1}
        assert await host.read(control) == 0b100     # start and soft reset read back 0
        assert not ctx.get(dut.irq)
        ctx.set(dut.done, 1)
        assert ctx.get(dut.irq)
        await host.write(control, 0b000)
        assert not ctx.get(dut.irq)

    simulate(dut, testbench)


@pytest.mark.parametrize("offset", [0x2C, REGISTERS[-1].offset + 4, 0xFC, 0x81])   # a gap, past the last, the top, unaligned
def test_unmapped_offsets_answer_slverr(offset):
    dut = HostRegisters(HASH)

    async def testbench(ctx):
        host = AXILiteMaster(ctx, dut.bus, ctx.tick)
        with pytest.raises(AXILiteError, match="SLVERR"):
            await host.read(offset)
        with pytest.raises(AXILiteError, match="SLVERR"):
            await host.write(offset, 1)
        assert await host.read(register("ID").offset) == ID_MAGIC << 16 | ID_VERSION   # still answers

    simulate(dut, testbench)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="32-bit value"):
        HostRegisters(1 << 32)
    with pytest.raises(ValueError, match="too narrow"):
        HostRegisters(0, addr_width=4)


def test_verilog_elaborates_and_lints():
    lint(to_verilog(HostRegisters(HASH), "host_registers"), "host_registers")
