"""`AXI4Quiesce` between a read and a write master that are reset at a random cycle of their transfers, against the
AXI4 models (which raise on a broken rule): the bursts in flight end by the rules, no byte outside the abandoned
write changes, and the masters' next transfers are exact; without an abandon it passes traffic unchanged."""

import numpy as np
import pytest
from amaranth import Module, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.flow.export import lint, to_verilog
from hw.memory.axi import AXI4, join
from hw.memory.quiesce import AXI4Quiesce
from hw.memory.reader import StreamReader
from hw.memory.writer import StoreWriter
from hw.sim import simulate
from hw.sim.dram import AXI4ReadModel, AXI4WriteModel

BUS, MAX_BURST, OUTSTANDING = 16, 8, 2


class _Masters(wiring.Component):
    """A reader and a writer through the guard, both reset the cycle after `abandon` (as the accelerator's units
    are)."""

    def __init__(self):
        self.reader = StreamReader(bus_bytes=BUS, max_burst=MAX_BURST, outstanding=OUTSTANDING)
        self.writer = StoreWriter(bus_bytes=BUS, max_burst=MAX_BURST, outstanding=OUTSTANDING)
        self.guard = AXI4Quiesce(AXI4.Signature(32, 8 * BUS), OUTSTANDING)
        super().__init__({"abandon": In(1), "bus": Out(AXI4.Signature(32, 8 * BUS))})

    def elaborate(self, platform):
        m = Module()
        reset = Signal()
        m.d.sync += reset.eq(self.abandon)
        m.submodules.reader = ResetInserter(reset)(self.reader)
        m.submodules.writer = ResetInserter(reset)(self.writer)
        m.submodules.guard = guard = self.guard
        for master in (self.reader.axi, self.writer.axi):
            join(m, master, guard.inner, master.signature)
        wiring.connect(m, guard.outer, wiring.flipped(self.bus))
        m.d.comb += guard.abandon.eq(self.abandon)
        return m


def _beats(payload: np.ndarray) -> list[int]:
    return [int.from_bytes(bytes(payload[i:i + BUS]).ljust(BUS, b"\0"), "little") for i in range(0, len(payload), BUS)]


async def _transfer(ctx, dut, reads, writes, payloads, rng, stall, cycles, drams, abandon=None):
    """Run the read `reads` and the write `writes` (address, length) with `payloads`, random stalls on the
    streams, for at most `cycles` cycles, the models beside. `abandon` (cycle, channel or None): pulse `abandon` at
    the first cycle from then on in which `channel` ("ar", "aw" or "w") is offered and not taken (any cycle with
    None), and stop offering the cycle after (as the masters' sources do, reset with them). Returns the read beats
    received (none if abandoned)."""
    reader, writer, bus = dut.reader, dut.writer, dut.bus
    beats = [beat for payload in payloads for beat in _beats(payload)]
    reads, writes, received, feeding, abandoned = list(reads), list(writes), [], False, None
    wanted = sum(-(-length // BUS) for _, length in reads)
    for cycle in range(cycles):
        if abandoned is not None and cycle == abandoned + 1:
            reads, writes, beats, feeding = [], [], [], False
        for unit, queue in ((reader, reads), (writer, writes)):
            ctx.set(unit.command.valid, bool(queue))
            if queue:
                ctx.set(unit.command.payload, {"address": queue[0][0], "length": queue[0][1]})
        feeding = bool(beats) and (feeding or rng.random() >= stall)
        ctx.set(writer.data.valid, feeding)
        ctx.set(writer.data.payload, beats[0] if beats else 0)
        ctx.set(reader.data.ready, rng.random() >= stall)
        for dram in drams:
            dram.drive(ctx, bus)
        if abandon is not None and abandoned is None and cycle >= abandon[0]:
            channel = abandon[1]
            if channel is None or (ctx.get(getattr(bus, f"{channel}valid"))
                                   and not ctx.get(getattr(bus, f"{channel}ready"))):
                abandoned = cycle
        ctx.set(dut.abandon, cycle == abandoned)
        taken = [bool(queue) and ctx.get(unit.command.ready) for unit, queue in ((reader, reads), (writer, writes))]
        if ctx.get(reader.data.valid) and ctx.get(reader.data.ready) and abandon is None:
            received.append(ctx.get(reader.data.payload))
        beat_taken = feeding and ctx.get(writer.data.ready)
        await ctx.tick()
        for dram in drams:
            dram.advance()
        for queue, was_taken in zip((reads, writes), taken):
            if was_taken:
                queue.pop(0)
        if beat_taken:
            beats.pop(0)
            feeding = False
        quiet = not ctx.get(dut.guard.draining) and ctx.get(reader.idle) and ctx.get(writer.idle)
        ended = len(received) == wanted if abandon is None else abandoned is not None and cycle > abandoned
        if quiet and not reads and not writes and not beats and ended:
            return received
    raise TimeoutError(f"the transfers did not end ({len(received)} of {wanted} beats read, abandoned: {abandoned})")


CASES = [(seed, None) for seed in range(6)] + [(seed, channel) for channel in ("ar", "aw", "w") for seed in (7, 8)]


@pytest.mark.parametrize("seed, channel", CASES)
def test_transfers_abandoned_mid_burst_end_by_the_rules_and_the_next_are_exact(seed, channel):
    """Abandoned at a random cycle, or at one where `channel` is offered and not taken (its payload must stay)."""
    rng = np.random.default_rng(seed)
    stall = [0.0, 0.3, 0.6][seed % 3] if channel is None else 0.5
    dut = _Masters()
    image = rng.integers(0, 256, 4 * 4096, dtype=np.uint8)
    before = image.copy()
    latency = int(rng.integers(1, 12))
    drams = [AXI4ReadModel(image, BUS, latency=latency, ar_stall=stall, r_stall=stall, seed=seed),
             AXI4WriteModel(image, BUS, latency=latency, aw_stall=stall, w_stall=stall, b_stall=stall, seed=seed + 1)]
    abandoned_write, next_read, next_write = (BUS * int(rng.integers(256 * i, 256 * i + 64)) for i in range(3))
    length = int(rng.integers(300, 900))
    payloads = [rng.integers(0, 256, length, dtype=np.uint8) for _ in range(2)]
    received = []

    async def testbench(ctx):
        await _transfer(ctx, dut, [(next_read + 4096, length)], [(abandoned_write, length)], payloads[:1], rng,
                        stall, 5_000, drams, (int(rng.integers(3, 40 if channel is None else 10)), channel))
        for _ in range(int(rng.integers(0, 4))):          # a pause, the models running
            for dram in drams:
                dram.drive(ctx, dut.bus)
            await ctx.tick()
            for dram in drams:
                dram.advance()
        received.extend(await _transfer(ctx, dut, [(next_read, length)], [(next_write, length)], payloads[1:], rng,
                                        stall, 20_000, drams))
        assert not ctx.get(dut.reader.error) and not ctx.get(dut.writer.error)

    simulate(dut, testbench)
    read_bytes = np.frombuffer(b"".join(beat.to_bytes(BUS, "little") for beat in received), np.uint8)[:length]
    assert np.array_equal(read_bytes, before[next_read:next_read + length])
    assert np.array_equal(image[next_write:next_write + length], payloads[1])
    # the abandoned write: each byte its old value or its new one; every other byte as it was
    written = image[abandoned_write:abandoned_write + length]
    old = before[abandoned_write:abandoned_write + length]
    assert np.all((written == old) | (written == payloads[0]))
    untouched = np.ones(len(image), bool)
    untouched[abandoned_write:abandoned_write + length] = False
    untouched[next_write:next_write + length] = False
    assert np.array_equal(image[untouched], before[untouched])
    read_model, write_model = drams
    assert not read_model._pending and read_model._beat is None, "a read burst left open"
    assert not write_model._bursts and not write_model._beats, "a write burst left open"


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="max_bursts = 0"):
        AXI4Quiesce(AXI4.Signature(32, 128), 0)


def test_verilog_elaborates_and_lints():
    lint(to_verilog(AXI4Quiesce(AXI4.Signature(32, 128), 6), "quiesce"), "quiesce")
