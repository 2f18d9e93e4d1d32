"""The SDRAM controller (`hw.memory.sdram`) against the chip model that raises on any datasheet rule
(`hw.sim.sdram`): initialisation, random AXI4 traffic with stalls checked against a byte image, W beats ahead of
their burst, bursts it must refuse, the sequential read bandwidth, and Verilog that elaborates."""

import dataclasses
import random
import types

import numpy as np
import pytest
from amaranth import Module
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.memory.arbiter import AXI4Arbiter
from hw.memory.axi import AXI4, Burst, Response
from hw.memory.sdram import W_BUFFER, SDRAMController
from hw.memory.sdram_chip import ULX3S_SDRAM, SDRAMChip
from hw.sim.sdram import SDRAMModel

CLOCK = 125e6
QUICK = SDRAMChip(timing=dataclasses.replace(ULX3S_SDRAM.timing, power_up=2_000.0))   # a short power-up wait
SLOW_ROW_CYCLE = SDRAMChip(timing=dataclasses.replace(QUICK.timing, tRC=90.0))       # tRC beyond tRAS + tRP
ONE_CYCLE_RULES = SDRAMChip(timing=dataclasses.replace(QUICK.timing, tRCD=8.0, tRP=8.0, tRRD=8.0))   # met at once
LIMIT_CYCLES = 60_000
PINS = ("cke", "cs_n", "ras_n", "cas_n", "we_n", "ba", "a", "dq_oe", "dqm")


def simulate(controller, chip, *benches, model=None, design=None):
    """Run `benches` (async functions of ctx) on `design` (default the controller) with the chip model (or
    `model`) on the controller's pins; returns the model."""
    model = model or SDRAMModel(chip, CLOCK)
    pins = controller.sdram

    async def sdram(ctx):
        while len(finished) < len(benches):
            assert model.cycle < LIMIT_CYCLES, f"the controller stopped answering within {LIMIT_CYCLES} cycles"
            values = {name: ctx.get(getattr(pins, name)) for name in PINS}
            word = model.step(dq=ctx.get(pins.dq_o), **values)
            ctx.set(pins.dq_i, 0 if word is None else word)
            await ctx.tick()

    finished = []

    def counted(bench):
        async def run(ctx):
            await bench(ctx)
            finished.append(bench)
        return run

    simulator = Simulator(design or controller)
    simulator.add_clock(1 / CLOCK)
    simulator.add_testbench(sdram)
    for bench in benches:
        simulator.add_testbench(counted(bench))
    simulator.run()
    return model


async def until(ctx, condition):
    while not condition():
        await ctx.tick()


class Master:
    """One AXI4 burst at a time, VALID and READY withheld at random (`stall`)."""

    def __init__(self, controller, rng, stall=0.0):
        self.axi, self.rng, self.stall = controller.axi, rng, stall
        self.bytes = controller.axi.signature.beat_bytes

    async def _pause(self, ctx):
        while self.rng.random() < self.stall:
            await ctx.tick()

    async def _address(self, ctx, channel, address, beats, size=None, burst=Burst.INCR, ident=0):
        axi = self.axi
        await self._pause(ctx)
        for name, value in (("addr", address), ("len", beats - 1), ("size", (self.bytes - 1).bit_length()
                            if size is None else size), ("burst", burst), ("id", ident), ("valid", 1)):
            ctx.set(getattr(axi, channel + name), value)
        await ctx.tick().until(getattr(axi, channel + "ready"))
        ctx.set(getattr(axi, channel + "valid"), 0)

    async def write(self, ctx, address, beats, strobes, **burst):
        axi = self.axi
        await self._address(ctx, "aw", address, len(beats), **burst)
        for index, (beat, strobe) in enumerate(zip(beats, strobes)):
            await self._pause(ctx)
            ctx.set(axi.wdata, beat)
            ctx.set(axi.wstrb, strobe)
            ctx.set(axi.wlast, index == len(beats) - 1)
            ctx.set(axi.wvalid, 1)
            await ctx.tick().until(axi.wready)
            ctx.set(axi.wvalid, 0)
        await self._pause(ctx)
        ctx.set(axi.bready, 1)
        response, ident = await ctx.tick().sample(axi.bresp, axi.bid).until(axi.bvalid)
        ctx.set(axi.bready, 0)
        return Response(response), ident

    async def read(self, ctx, address, beats, **burst):
        axi = self.axi
        await self._address(ctx, "ar", address, beats, **burst)
        got = []
        while len(got) < beats:
            ctx.set(axi.rready, self.rng.random() >= self.stall)
            _, _, valid, ready, *beat = await ctx.tick().sample(axi.rvalid, axi.rready, axi.rdata, axi.rresp,
                                                                 axi.rlast, axi.rid)
            if valid and ready:
                got.append(beat)
        ctx.set(axi.rready, 0)
        return got


@pytest.mark.parametrize("data_width, stall, seed, chip", [(32, 0.0, 1, QUICK), (64, 0.3, 2, SLOW_ROW_CYCLE),
                                                           (128, 0.5, 3, QUICK), (32, 0.2, 4, ONE_CYCLE_RULES)])
def test_random_traffic_reads_back_what_was_written(data_width, stall, seed, chip):
    controller = SDRAMController(chip, CLOCK, data_width=data_width, id_width=2)
    rng = random.Random(seed)
    master = Master(controller, rng, stall)
    beat = master.bytes
    image = np.zeros(QUICK.bytes, np.uint8)
    # addresses near row and bank boundaries (1 KiB rows, 4 KiB a row of every bank) and anywhere
    starts = [1024 - 2 * beat, 4096 - beat, 3 * 4096 + 1024 - beat, QUICK.bytes - 8 * beat, 0, 5 * 4096 + 512]

    async def bench(ctx):
        await until(ctx, lambda: ctx.get(controller.ready))
        for _ in range(60):
            beats = rng.choice([1, 2, 3, 8, 17])
            address = rng.choice(starts + [rng.randrange(0, QUICK.bytes // beat - 64) * beat])
            address = min(address, QUICK.bytes - beats * beat)
            address -= max(0, address % 4096 + beats * beat - 4096)      # no burst crosses 4 KiB
            ident = rng.randrange(4)
            if rng.random() < 0.5:
                data = [rng.getrandbits(8 * beat) for _ in range(beats)]
                strobes = [rng.choice([(1 << beat) - 1, rng.getrandbits(beat)]) for _ in range(beats)]
                assert await master.write(ctx, address, data, strobes, ident=ident) == (Response.OKAY, ident)
                for index, (word, strobe) in enumerate(zip(data, strobes)):
                    for byte in range(beat):
                        if strobe >> byte & 1:
                            image[address + index * beat + byte] = word >> (8 * byte) & 0xFF
            else:
                got = await master.read(ctx, address, beats, ident=ident)
                expected = [int.from_bytes(image[address + i * beat:address + (i + 1) * beat].tobytes(), "little")
                            for i in range(beats)]
                assert [g[0] for g in got] == expected
                assert [(g[1], g[2], g[3]) for g in got] == [(Response.OKAY, i == beats - 1, ident)
                                                             for i in range(beats)]

    model = simulate(controller, chip, bench)
    assert model.reads and model.writes and model.refreshes >= 1


@pytest.mark.parametrize("chip, write_bank, write_row", [(QUICK, 1, 0), (SLOW_ROW_CYCLE, 0, 1)],
                         ids=["two-open-rows", "one-bank-two-rows"])
def test_a_reader_and_a_writer_at_once(chip, write_bank, write_row):
    """AR and AW wait together, so bursts alternate: with the rows in two banks, read→write turnarounds in open
    rows; in one bank, a row change at every burst. The read row (bank 0, row 0) is filled through the model's
    storage first; the written one is checked in it after."""
    controller = SDRAMController(chip, CLOCK, data_width=32)
    rng = random.Random(5)
    reader, writer = Master(controller, rng, 0.2), Master(controller, rng, 0.2)
    row_bytes = 2 * chip.columns
    read_start, write_start = 0, (write_row * chip.banks + write_bank) * row_bytes
    model = SDRAMModel(chip, CLOCK)
    stored = np.array([rng.getrandbits(16) for _ in range(chip.columns)], np.uint16)
    written = {}

    async def reads(ctx):
        await until(ctx, lambda: ctx.get(controller.ready))
        for _ in range(30):
            beats = rng.choice([1, 2, 4])
            address = read_start + 4 * rng.randrange(0, row_bytes // 4 - beats)
            got = await reader.read(ctx, address, beats)
            words = stored[address // 2:address // 2 + 2 * beats]
            assert [g[0] for g in got] == [int(words[2 * i]) | int(words[2 * i + 1]) << 16 for i in range(beats)]

    async def writes(ctx):
        await until(ctx, lambda: ctx.get(controller.ready))
        for _ in range(30):
            beats = rng.choice([1, 2, 4])
            address = write_start + 4 * rng.randrange(0, row_bytes // 4 - beats)
            data = [rng.getrandbits(32) for _ in range(beats)]
            assert (await writer.write(ctx, address, data, [0xF] * beats))[0] == Response.OKAY
            written.update({address + 4 * i: word for i, word in enumerate(data)})

    model.words[(0, 0)] = stored.copy()
    simulate(controller, chip, reads, writes, model=model)
    row = model.words[(write_bank, write_row)]
    assert all(int(row[a // 2 % chip.columns]) | int(row[a // 2 % chip.columns + 1]) << 16 == word
               for a, word in written.items())


@pytest.mark.parametrize("data_width", [16, 64])
def test_a_reader_that_stops_taking_data_loses_none(data_width):
    """RREADY low for 100 cycles in the middle of a burst: reads wait for room in the return buffer."""
    controller = SDRAMController(QUICK, CLOCK, data_width=data_width, read_buffer=2)
    axi, beat_bytes, beats = controller.axi, data_width // 8, 32
    stored = np.arange(QUICK.columns, dtype=np.uint16) * 7 + 3
    model = SDRAMModel(QUICK, CLOCK)
    model.words[(0, 0)] = stored.copy()
    got = []

    async def bench(ctx):
        await until(ctx, lambda: ctx.get(controller.ready))
        for name, value in (("araddr", 0), ("arlen", beats - 1), ("arsize", (beat_bytes - 1).bit_length()),
                            ("arburst", Burst.INCR), ("arvalid", 1)):
            ctx.set(getattr(axi, name), value)
        await ctx.tick().until(axi.arready)
        ctx.set(axi.arvalid, 0)
        cycle = 0
        while len(got) < beats and cycle < 2_000:      # a lost beat ends the wait, not the test run
            ctx.set(axi.rready, not 5 <= cycle < 105)
            _, _, valid, ready, word = await ctx.tick().sample(axi.rvalid, axi.rready, axi.rdata)
            cycle += 1
            if valid and ready:
                got.append(word)

    simulate(controller, QUICK, bench, model=model)
    words = [int(w) for w in stored[:beats * data_width // 16]]
    per_beat = data_width // 16
    assert got == [sum(words[i * per_beat + j] << (16 * j) for j in range(per_beat)) for i in range(beats)]


def test_two_masters_share_it_through_the_arbiter():
    """The board's arrangement: two whole AXI4 masters (the accelerator, the host bridge) on one controller
    through `AXI4Arbiter`, each writing and reading back its own region with random stalls, at once."""
    controller = SDRAMController(QUICK, CLOCK, data_width=64)
    arbiter = AXI4Arbiter(AXI4.Signature(32, 64), 2)
    design = Module()
    design.submodules.controller, design.submodules.arbiter = controller, arbiter
    wiring.connect(design, arbiter.bus, controller.axi)
    rng = random.Random(9)
    checked = []

    def master(index):
        port = Master(types.SimpleNamespace(axi=arbiter.inputs[index]), rng, 0.3)
        base = index * 64 * 1024 + 1024 * index

        async def bench(ctx):
            await until(ctx, lambda: ctx.get(controller.ready))
            written = {}
            for _ in range(12):
                beats = rng.choice([1, 3, 8])
                address = base + 8 * rng.randrange(0, 200)
                data = [rng.getrandbits(64) for _ in range(beats)]
                assert (await port.write(ctx, address, data, [0xFF] * beats))[0] == Response.OKAY
                written.update({address + 8 * i: word for i, word in enumerate(data)})
                check = rng.choice(sorted(written))
                assert (await port.read(ctx, check, 1))[0][0] == written[check]
                checked.append(index)
        return bench

    simulate(controller, QUICK, master(0), master(1), design=design)
    assert sorted(set(checked)) == [0, 1] and len(checked) == 24


def test_bursts_it_cannot_serve_answer_slverr_and_leave_the_sdram_alone():
    controller = SDRAMController(QUICK, CLOCK, data_width=32)
    master = Master(controller, random.Random(4))

    async def bench(ctx):
        await until(ctx, lambda: ctx.get(controller.ready))
        assert (await master.write(ctx, 0, [0xDEADBEEF], [0xF], size=1))[0] == Response.SLVERR   # narrow
        assert (await master.write(ctx, QUICK.bytes - 4, [1, 2], [0xF, 0xF]))[0] == Response.SLVERR  # past the end
        assert (await master.write(ctx, QUICK.bytes - 8, [1, 2], [0xF, 0xF]))[0] == Response.OKAY    # to the end
        for beat in await master.read(ctx, 8, 2, burst=Burst.WRAP):
            assert beat[:2] == [0, Response.SLVERR]
        for beat in await master.read(ctx, 2, 1):                          # not aligned to the beat
            assert beat[1] == Response.SLVERR
        assert (await master.write(ctx, 16, [0x12345678], [0xF]))[0] == Response.OKAY
        assert (await master.read(ctx, 16, 1))[0][:2] == [0x12345678, Response.OKAY]

    model = simulate(controller, QUICK, bench)
    assert model.writes == 6 and model.reads == 2          # only the good bursts: 4 words to the end, 2 at 16


def test_w_beats_are_taken_ahead_of_their_burst_into_the_buffer_and_no_further():
    """W before AW (AXI4 allows it): the controller takes `W_BUFFER` beats at once, then holds WREADY low until
    the burst's AW lets it write them; the burst then completes with those beats where they belong."""
    controller = SDRAMController(QUICK, CLOCK, data_width=32)
    master, axi = Master(controller, random.Random(5)), controller.axi
    beats = [0x11111111 * (i + 1) for i in range(W_BUFFER + 1)]

    async def bench(ctx):
        await until(ctx, lambda: ctx.get(controller.ready))
        taken = 0
        for _ in range(4 * W_BUFFER):                     # no AW yet: only the buffer's room is taken
            ctx.set(axi.wdata, beats[taken])
            ctx.set(axi.wstrb, 0xF)
            ctx.set(axi.wlast, 0)
            ctx.set(axi.wvalid, 1)
            _, _, ready = await ctx.tick().sample(axi.wready)
            taken += ready
        ctx.set(axi.wvalid, 0)
        assert taken == W_BUFFER
        await master._address(ctx, "aw", 64, len(beats))
        ctx.set(axi.wdata, beats[-1])
        ctx.set(axi.wlast, 1)
        ctx.set(axi.wvalid, 1)
        await ctx.tick().until(axi.wready)
        ctx.set(axi.wvalid, 0)
        ctx.set(axi.bready, 1)
        response, = await ctx.tick().sample(axi.bresp).until(axi.bvalid)
        ctx.set(axi.bready, 0)
        assert Response(response) == Response.OKAY
        assert [beat[0] for beat in await master.read(ctx, 64, len(beats))] == beats

    model = simulate(controller, QUICK, bench)
    assert model.writes == len(beats) * 32 // QUICK.data_width       # a WRITE a chip word


def test_initialisation_follows_the_datasheet_with_the_real_power_up_wait():
    controller = SDRAMController(ULX3S_SDRAM, CLOCK, data_width=16)
    cycles = []

    async def bench(ctx):
        for cycle in range(40_000):
            if ctx.get(controller.ready):
                cycles.append(cycle)
                return
            await ctx.tick()

    model = simulate(controller, ULX3S_SDRAM, bench)
    t = ULX3S_SDRAM.timing.cycles(CLOCK)
    assert model.cas_latency == 3 and model.burst_length == 1 and model.init_refreshes == 8
    assert t.power_up < cycles[0] < t.power_up + t.tRP + 8 * t.tRFC + t.tMRD + 8


def test_sequential_4_kib_reads_sustain_85_percent_of_the_bus():
    """Bursts of 4 KiB back to back, RREADY always high: bytes over 2 bytes × cycles, refreshes included."""
    controller = SDRAMController(QUICK, CLOCK, data_width=128)
    axi, bursts, beats = controller.axi, 4, 4096 // 16
    window = []

    async def addresses(ctx):
        await until(ctx, lambda: ctx.get(controller.ready))
        for index in range(bursts):
            for name, value in (("araddr", index * 4096), ("arlen", beats - 1), ("arsize", 4),
                                ("arburst", Burst.INCR), ("arvalid", 1)):
                ctx.set(getattr(axi, name), value)
            await ctx.tick().until(axi.arready)
            ctx.set(axi.arvalid, 0)

    async def data(ctx):
        ctx.set(axi.rready, 1)
        received, cycle = 0, 0
        while received < bursts * beats:
            _, _, valid = await ctx.tick().sample(axi.rvalid)
            cycle += 1
            if valid:
                received += 1
                window.append(cycle)

    model = simulate(controller, QUICK, addresses, data)
    assert model.refreshes >= model.cycle // model.t.tREFI - 1        # none postponed
    cycles = window[-1] - window[0] + 8                # and the first beat's own 8 words
    share = bursts * 4096 / (2 * cycles)
    print(f"sequential 4 KiB reads: {share:.3f} of 2 bytes a cycle ({cycles} cycles for {bursts * 4096} bytes)")
    assert share >= 0.85


@pytest.mark.parametrize("arguments, message", [
    ({"data_width": 24}, "multiple of the chip"), ({"cas_latency": 1}, "cas_latency"),
    ({"addr_width": 20}, "too narrow"), ({"read_buffer": 1}, "read_buffer")])
def test_bad_parameters_are_refused_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        SDRAMController(ULX3S_SDRAM, CLOCK, **arguments)


def test_it_elaborates():
    text = rtlil.convert(SDRAMController(ULX3S_SDRAM, CLOCK, data_width=128, id_width=4))
    assert "sdram__ras_n" in text and "axi__rdata" in text
    text = rtlil.convert(AXI4Arbiter(AXI4.Signature(32, 128, 2), 2))
    assert "inputs__1__wdata" in text and "bus__bresp" in text
