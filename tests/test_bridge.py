"""The host link end to end in simulation: the host's code (`firmware.board.BridgeLink`) → the byte stream →
the bridge (`hw.board.bridge`) → the host registers and the SDRAM controller → the SDRAM chip model, bit-exact;
the UART as a loopback; damaged and refused requests."""

import random
import struct

import pytest
from amaranth import Module
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.sim import Simulator

from firmware.board import BridgeLink, LinkError, request
from hw.board.bridge import HostBridge
from hw.board.protocol import Op, Status, crc8
from hw.board.uart import UARTReceiver, UARTTransmitter, divisor_for
from hw.control.host import HostRegisters
from hw.control.registers import ID_MAGIC, register
from hw.memory.sdram import SDRAMController
from test_sdram import CLOCK, QUICK, simulate

BUS_BYTES, BYTE_GAP, RESYNC = 16, 3, 200


class Board(wiring.Component):
    """The bridge on the host registers and the SDRAM controller (the board top's link, without the UART)."""

    def __init__(self):
        self.bridge = HostBridge(bus_bytes=BUS_BYTES, resync_cycles=RESYNC)
        self.registers = HostRegisters(config_hash=0x1234_5678)
        self.sdram = SDRAMController(QUICK, CLOCK, data_width=8 * BUS_BYTES)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge, m.submodules.registers, m.submodules.sdram = self.bridge, self.registers, self.sdram
        wiring.connect(m, self.bridge.registers, self.registers.bus)
        wiring.connect(m, self.bridge.memory, self.sdram.axi)
        return m


class SimulatedPipe:
    """`send` feeds the bridge's rx a byte every `BYTE_GAP` cycles; `receive` collects its tx bytes."""

    def __init__(self, ctx, bridge):
        self.ctx, self.bridge, self.received = ctx, bridge, bytearray()
        self.response_ready = set()      # (RREADY, BREADY) of the register port, as seen in every cycle

    async def tick(self):
        ctx = self.ctx
        ctx.set(self.bridge.tx.ready, 1)
        self.response_ready.add((ctx.get(self.bridge.registers.rready), ctx.get(self.bridge.registers.bready)))
        _, _, valid, byte = await ctx.tick().sample(self.bridge.tx.valid, self.bridge.tx.payload)
        if valid:
            self.received.append(byte)

    async def send(self, data: bytes):
        for byte in data:
            self.ctx.set(self.bridge.rx.payload, byte)
            self.ctx.set(self.bridge.rx.valid, 1)
            await self.tick()
            self.ctx.set(self.bridge.rx.valid, 0)
            for _ in range(BYTE_GAP - 1):
                await self.tick()

    async def receive(self, count: int) -> bytes:
        for _ in range(200_000):
            if len(self.received) >= count:
                break
            await self.tick()
        data, self.received[:] = bytes(self.received[:count]), self.received[count:]
        if len(data) < count:
            raise LinkError(f"no reply: {len(data)} of {count} bytes")
        return data

    async def quiet(self):
        for _ in range(RESYNC + 10):
            await self.tick()


def run_board(bench):
    """`bench(pipe, link)` on the board with the chip model on its SDRAM pins (`test_sdram.simulate`)."""
    board = Board()

    async def host(ctx):
        pipe = SimulatedPipe(ctx, board.bridge)
        while not ctx.get(board.sdram.ready):
            await ctx.tick()
        await bench(pipe, BridgeLink(pipe, BUS_BYTES, chunk_beats=3))

    return simulate(board.sdram, QUICK, host, design=board)


def test_the_host_code_reads_and_writes_registers_and_dram_through_the_bridge():
    rng = random.Random(7)
    blocks = {address: bytes(rng.getrandbits(8) for _ in range(size))
              for address, size in ((0, 16), (4096 - 32, 128), (5 * 1024, 7 * 16))}
    seen = {}

    async def bench(pipe, link):
        seen["id"] = await link.read32(register("ID").offset)
        await link.write32(register("TASK").offset, 0xA5A5_0003)
        seen["task"] = await link.read32(register("TASK").offset)
        seen["response ready"] = pipe.response_ready       # the bridge's contract: always ready for a response
        for address, data in blocks.items():
            await link.write_dram(address, data)
        for address, data in blocks.items():
            seen[address] = await link.read_dram(address, len(data))

    model = run_board(bench)
    assert seen["id"] >> 16 == ID_MAGIC and seen["task"] == 0xA5A5_0003
    assert seen["response ready"] == {(1, 1)}
    assert all(seen[address] == data for address, data in blocks.items())
    assert model.writes == sum(len(d) for d in blocks.values()) // 2


def test_damaged_and_refused_requests_get_their_status_and_the_link_recovers():
    replies = {}

    async def bench(pipe, link):
        async def ask(name, frame, reply_bytes=2):
            await pipe.send(frame)
            replies[name] = await pipe.receive(reply_bytes)
            await pipe.quiet()

        good = request(Op.READ32, bytes([0]))
        await ask("crc", good[:-1] + bytes([good[-1] ^ 1]))
        await ask("command", bytes([0x55]))
        await ask("misaligned", request(Op.READ_MEM, struct.pack("<IH", 8, 1)))
        await ask("empty", request(Op.READ_MEM, struct.pack("<IH", 0, 0)))
        await ask("unmapped", request(Op.READ32, bytes([0xFC])), 6)
        block = bytes(range(16))
        await ask("data crc", request(Op.WRITE_MEM, struct.pack("<IH", 64, 1)) + block + bytes([crc8(block) ^ 1]))
        await ask("past the chip", request(Op.READ_MEM, struct.pack("<IH", QUICK.bytes - 16, 2)), 35)
        replies["after"] = await link.read_dram(64, 16)             # written even so (the host resends)
        with pytest.raises(LinkError, match="MISALIGNED"):
            await link.pipe.send(request(Op.READ_MEM, struct.pack("<IH", 8, 1)))
            await link._status("a misaligned read")

    run_board(bench)
    for name, status in (("crc", Status.BAD_CRC), ("command", Status.BAD_COMMAND),
                         ("misaligned", Status.MISALIGNED), ("empty", Status.MISALIGNED),
                         ("unmapped", Status.BUS_ERROR), ("data crc", Status.BAD_CRC)):
        assert replies[name][0] == status, name
        assert replies[name][-1] == crc8(replies[name][:-1]), name
    past = replies["past the chip"]                                 # the header is fine; the bus status says
    assert past[0] == Status.OK and past[-2] == Status.BUS_ERROR and past[-1] == crc8(past[:-1])
    assert replies["after"] == bytes(range(16))


@pytest.mark.parametrize("divisor", [4, 7])
def test_uart_loopback_carries_every_byte(divisor):
    m = Module()
    m.submodules.tx, m.submodules.rx = tx, rx = UARTTransmitter(divisor), UARTReceiver(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    data = list(range(256)) if divisor == 4 else [0x00, 0xFF, 0x55, 0xAA, 0x80, 0x01]
    got = []

    async def send(ctx):
        for byte in data:
            ctx.set(tx.data.payload, byte)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
        ctx.set(tx.data.valid, 0)

    async def receive(ctx):
        ctx.set(rx.data.ready, 1)
        while len(got) < len(data):
            _, _, valid, byte = await ctx.tick().sample(rx.data.valid, rx.data.payload)
            if valid:
                got.append(byte)

    simulator = Simulator(m)
    simulator.add_clock(1e-8)
    simulator.add_testbench(send)
    simulator.add_testbench(receive)
    simulator.run()
    assert got == data


def test_they_elaborate_and_refuse_bad_parameters():
    text = rtlil.convert(Board())
    assert "bridge" in text and "sdram" in text
    for unit, arguments in ((HostBridge, {"bus_bytes": 12}), (HostBridge, {"resync_cycles": 0}),
                            (UARTReceiver, {"divisor": 3}), (UARTTransmitter, {"divisor": 2.5})):
        with pytest.raises(ValueError, match=unit.__name__[:4]):
            unit(**arguments)


def test_divisors_for_the_board_rates():
    assert divisor_for(125e6, 3_000_000) == 42              # 2.98 Mbaud, 0.8 % off
    with pytest.raises(ValueError, match="within 2 %"):
        divisor_for(10e6, 3_000_000)

