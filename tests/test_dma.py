"""The DRAM transfer blocks: the stream reader (LOADs, program fetch), the read arbiter sharing one AXI4 port
among several masters, and the gearbox between bus words and memory words; exact under random stalls."""

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring

from hw.common.gearbox import Gearbox
from hw.flow.export import lint, to_verilog
from hw.memory.arbiter import ReadArbiter
from hw.memory.axi import AXI4Read
from hw.memory.reader import StreamReader
from hw.sim import simulate
from hw.sim.dram import AXI4ReadModel


@pytest.mark.parametrize("in_width, out_width", [(8, 32), (32, 8), (16, 16), (64, 128), (128, 32)])
@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_gearbox_keeps_every_bit_in_order(in_width, out_width, stall):
    rng = np.random.default_rng(in_width + out_width + int(stall * 10))
    dut = Gearbox(in_width, out_width)
    words = [int(x) for x in rng.integers(0, 1 << 62, 64)]
    words = [w & ((1 << in_width) - 1) | (w << 62 & ((1 << in_width) - 1)) for w in words]
    total_bits = len(words) * in_width - (len(words) * in_width) % out_width
    stream_bits = sum(w << (i * in_width) for i, w in enumerate(words))
    expected = [(stream_bits >> (i * out_width)) & ((1 << out_width) - 1) for i in range(total_bits // out_width)]
    received = []

    async def testbench(ctx):
        pending, offering = list(words), False
        for _ in range(2000):
            offering = bool(pending) and (offering or rng.random() >= stall)
            ctx.set(dut.input.valid, offering)
            # a word only while offered: garbage in between, which no register may keep
            ctx.set(dut.input.payload, pending[0] if offering else int(rng.integers(0, 1 << min(in_width, 62))))
            ctx.set(dut.output.ready, rng.random() < (1 - stall) ** 2)    # long waits: the input goes on
            taken = offering and ctx.get(dut.input.ready)
            if ctx.get(dut.output.valid) and ctx.get(dut.output.ready):
                received.append(ctx.get(dut.output.payload))
            await ctx.tick()
            if taken:
                pending.pop(0)
                offering = False
            if len(received) == len(expected):
                break

    design = Module()                     # a clock domain even when the gearbox is only wires
    design.submodules.dut = dut
    design.d.sync += Signal().eq(1)
    simulate(design, testbench)
    assert received == expected


class _Readers(wiring.Component):
    """`count` stream readers behind one arbiter."""

    def __init__(self, count, bus_bytes, max_burst, outstanding, depth):
        self.readers = [StreamReader(bus_bytes=bus_bytes, max_burst=max_burst, outstanding=outstanding)
                        for _ in range(count)]
        self.arbiter = ReadArbiter(AXI4Read.Signature(32, 8 * bus_bytes), count, depth)
        super().__init__({"bus": wiring.Out(AXI4Read.Signature(32, 8 * bus_bytes))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.arbiter = self.arbiter
        for index, reader in enumerate(self.readers):
            m.submodules[f"reader{index}"] = reader
            wiring.connect(m, reader.axi, self.arbiter.inputs[index])
        wiring.connect(m, self.arbiter.bus, wiring.flipped(self.bus))
        return m


@pytest.mark.parametrize("count, bus, max_burst, outstanding, depth", [(1, 8, 4, 2, 2), (3, 16, 4, 2, 4),
                                                                        (3, 32, 8, 1, 2), (4, 8, 16, 3, 6)])
@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_readers_behind_the_arbiter_get_their_own_bytes(count, bus, max_burst, outstanding, depth, stall):
    rng = np.random.default_rng(count * 100 + bus + max_burst + int(stall * 10))
    dut = _Readers(count, bus, max_burst, outstanding, depth)
    image = rng.integers(0, 256, 4 * 4096, dtype=np.uint8)
    dram = AXI4ReadModel(image, bus, latency=int(rng.integers(1, 10)), ar_stall=stall, r_stall=stall,
                         seed=int(rng.integers(1 << 30)))
    transfers = []
    for reader in range(count):
        for _ in range(4):
            length = int(rng.choice([1, bus, 3 * bus + 5, int(rng.integers(1, 1500))]))
            address = bus * int(rng.integers(0, (len(image) - length) // bus))
            transfers.append((reader, address, length))
    queues = {r: [(a, n) for rr, a, n in transfers if rr == r] for r in range(count)}
    received = {r: [] for r in range(count)}
    beats_wanted = {r: sum(-(-n // bus) for a, n in queues[r]) for r in range(count)}

    async def testbench(ctx):
        pending = {r: list(q) for r, q in queues.items()}
        for _ in range(40_000):
            for r, reader in enumerate(dut.readers):
                ctx.set(reader.command.valid, bool(pending[r]))
                # a command not offered is ignored, however misaligned its fields
                address, length = pending[r][0] if pending[r] else (1, 3)
                ctx.set(reader.command.payload, {"address": address, "length": length})
                ctx.set(reader.data.ready, rng.random() >= stall)
            dram.drive(ctx, dut.bus)
            taken = [bool(pending[r]) and ctx.get(reader.command.ready) for r, reader in enumerate(dut.readers)]
            for r, reader in enumerate(dut.readers):
                if ctx.get(reader.data.valid) and ctx.get(reader.data.ready):
                    received[r].append(ctx.get(reader.data.payload))
            await ctx.tick()
            dram.advance()
            for r in range(count):
                if taken[r]:
                    pending[r].pop(0)
            if all(len(received[r]) == beats_wanted[r] for r in range(count)) \
                    and all(ctx.get(reader.idle) for reader in dut.readers):
                break
        assert not any(ctx.get(reader.error) for reader in dut.readers)

    simulate(dut, testbench)
    for r in range(count):
        expected = []
        for address, length in queues[r]:
            beats = -(-length // bus)
            chunk = image[address:address + beats * bus]
            expected += [int.from_bytes(chunk[i * bus:(i + 1) * bus].tobytes(), "little") for i in range(beats)]
        assert received[r] == expected, f"reader {r}"
    assert dram.bytes_read == sum(-(-n // bus) * bus for _, _, n in transfers)


def test_fetch_wins_and_the_others_take_turns():
    """Master 0 is served first whenever it asks; 1 and 2 alternate."""
    arbiter = ReadArbiter(AXI4Read.Signature(32, 64), 3, depth=8)
    order = []

    async def testbench(ctx):
        for port in arbiter.inputs:
            ctx.set(port.arvalid, 1)
        ctx.set(arbiter.bus.arready, 1)
        for cycle in range(24):
            for index, port in enumerate(arbiter.inputs):
                if ctx.get(port.arready) and ctx.get(port.arvalid):
                    order.append(index)
            await ctx.tick()
            if order.count(0) == 3:          # master 0 stops asking after its third burst
                ctx.set(arbiter.inputs[0].arvalid, 0)

    simulate(arbiter, testbench)
    assert order[:3] == [0, 0, 0] and order[3:6] == [1, 2, 1], order


def test_verilog_elaborates_and_lints():
    lint(to_verilog(_Readers(3, 16, 16, 2, 4), "readers"), "readers")
    lint(to_verilog(Gearbox(128, 32), "gearbox"), "gearbox")
