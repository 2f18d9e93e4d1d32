"""The STORE write master against the AXI4 write model: DRAM bytes exact under random stalls on every channel
and on the data stream, bursts within 4 KiB, strobes on the last beat, misaligned commands and error
responses flagged."""

import numpy as np
import pytest

from hw.flow.export import lint, to_verilog
from hw.memory.writer import StoreWriter
from hw.sim import simulate
from hw.sim.dram import AXI4WriteModel, AXIProtocolError


def _commands(rng, bus, image_bytes, count):
    """Bus-aligned writes, some just below a 4 KiB boundary, of 1, bus − 1, bus + 3 or a random number of bytes."""
    commands = []
    for i in range(count):
        length = int(rng.choice([1, bus - 1, bus + 3, 2000, int(rng.integers(1, 700))]))
        if i % 3 == 0:
            address = 4096 * int(rng.integers(1, image_bytes // 4096 - 1)) - bus * int(rng.integers(1, 5))
        else:
            address = bus * int(rng.integers(0, (image_bytes - length) // bus))
        commands.append((address, length))
    return commands


async def _store(ctx, writer, dram, commands, payloads, rng, gaps, timeout=100_000):
    """Issue `commands`, feed their beats with random gaps, run the DRAM; return when the writer is idle."""
    bus = writer.bus_bytes
    beats = [int.from_bytes(bytes(p[i:i + bus]).ljust(bus, b"\0"), "little")
             for p in payloads for i in range(0, len(p), bus)]
    queue = list(commands)
    feeding = False                                   # a stream source holds valid until its beat is taken
    for cycle in range(timeout):
        if queue:
            address, length = queue[0]
            ctx.set(writer.command.valid, 1)
            ctx.set(writer.command.payload, {"address": address, "length": length})
        else:
            ctx.set(writer.command.valid, 0)
        feeding = bool(beats) and (feeding or rng.random() >= gaps)
        ctx.set(writer.data.valid, feeding)
        if beats:
            ctx.set(writer.data.payload, beats[0])
        dram.drive(ctx, writer.axi)
        command_taken = queue and ctx.get(writer.command.ready)
        beat_taken = feeding and ctx.get(writer.data.ready)
        await ctx.tick()
        dram.advance()
        if command_taken:
            queue.pop(0)
        if beat_taken:
            beats.pop(0)
            feeding = False
        if not queue and not beats and ctx.get(writer.idle):
            return cycle
    raise TimeoutError("the write master did not finish")


@pytest.mark.parametrize("bus, max_burst, outstanding", [(8, 4, 1), (16, 16, 2), (32, 8, 4), (16, 256, 3)])
@pytest.mark.parametrize("stall", [0.0, 0.4, 0.9])
def test_dram_holds_the_stored_bytes(bus, max_burst, outstanding, stall):
    if bus * max_burst > 4096:
        max_burst = 4096 // bus
    rng = np.random.default_rng(bus * 100 + max_burst + int(stall * 10))
    writer = StoreWriter(bus_bytes=bus, max_burst=max_burst, outstanding=outstanding)
    image = rng.integers(0, 256, 4 * 4096, dtype=np.uint8)
    expected = image.copy()
    commands = _commands(rng, bus, len(image), 8)
    payloads = [rng.integers(0, 256, length, dtype=np.uint8) for _, length in commands]
    for (address, length), payload in zip(commands, payloads):
        expected[address:address + length] = payload
    dram = AXI4WriteModel(image, bus, latency=int(rng.integers(1, 9)), aw_stall=stall, w_stall=stall,
                          b_stall=stall, seed=int(rng.integers(1 << 30)))

    async def testbench(ctx):
        await _store(ctx, writer, dram, commands, payloads, rng, gaps=stall)
        assert not ctx.get(writer.error)

    simulate(writer, testbench)
    assert np.array_equal(image, expected)
    assert dram.bytes_written == sum(length for _, length in commands)
    bursts = sum(-(-(-(-length // bus)) // max_burst) for _, length in commands)
    assert dram.bursts >= bursts


def test_misaligned_command_sets_error_and_is_dropped():
    rng = np.random.default_rng(1)
    writer = StoreWriter(bus_bytes=8, max_burst=4)
    image = np.zeros(8192, np.uint8)
    dram = AXI4WriteModel(image, 8)
    payload = rng.integers(1, 256, 20, dtype=np.uint8)

    async def testbench(ctx):
        await _store(ctx, writer, dram, [(4, 20)], [], rng, gaps=0.0, timeout=50)
        assert ctx.get(writer.error)
        await _store(ctx, writer, dram, [(64, 20)], [payload], rng, gaps=0.0)   # the next command still works

    simulate(writer, testbench)
    assert not image[:64].any() and np.array_equal(image[64:84], payload) and not image[84:].any()


def test_error_response_sets_error():
    rng = np.random.default_rng(2)
    writer = StoreWriter(bus_bytes=16, max_burst=4)
    image = np.zeros(8192, np.uint8)
    dram = AXI4WriteModel(image, 16, fail=range(1000, 1001))

    async def testbench(ctx):
        await _store(ctx, writer, dram, [(0, 256)], [np.ones(256, np.uint8)], rng, gaps=0.0)
        assert not ctx.get(writer.error)
        await _store(ctx, writer, dram, [(960, 128)], [np.ones(128, np.uint8)], rng, gaps=0.0)
        assert ctx.get(writer.error)

    simulate(writer, testbench)


def test_the_model_catches_a_broken_master():
    """The model must be able to fail: a master that drops AWVALID before AWREADY."""
    from amaranth import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import Out
    from hw.memory.axi import AXI4Write

    class Fickle(wiring.Component):
        axi: Out(AXI4Write.Signature(32, 64))

        def elaborate(self, platform):
            m = Module()
            m.d.sync += self.axi.awvalid.eq(~self.axi.awvalid)
            m.d.comb += [self.axi.awsize.eq(3), self.axi.awburst.eq(1)]
            return m

    fickle = Fickle()
    dram = AXI4WriteModel(np.zeros(8192, np.uint8), 8, aw_stall=1.0)

    async def testbench(ctx):
        for _ in range(4):
            dram.drive(ctx, fickle.axi)
            await ctx.tick()
            dram.advance()

    with pytest.raises(AXIProtocolError, match="AWVALID dropped before AWREADY"):
        simulate(fickle, testbench)


def test_verilog_elaborates_and_lints():
    lint(to_verilog(StoreWriter(bus_bytes=16, max_burst=16, outstanding=4), "store_writer"), "store_writer")
