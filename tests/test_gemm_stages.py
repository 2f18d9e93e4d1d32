"""The GEMM engine's stages on their own, each against its model: the requantizer lane (every saturation width,
RAW, relu, per-row scales, the extremes; the drain's and the GELU path's), the tile sequencer's walks, the
operand streamer, the drain and the output FIFO under random handshakes."""

import numpy as np
import pytest

from golden import ops
from hw.compute.gemm import OPERAND_READ_LATENCY, GemmGeometry
from hw.compute.gemm.requantizer import RequantizerLane
from hw.common.multiplier import Multiplier
from hw.sim import simulate

GEOMETRY = GemmGeometry(2, 2, 4, 4, 4)


def _cases(rng, count, lane):
    """Random values for `lane` with the extremes first: the word's and the bias's ends, every shift's edge."""
    width, widths = lane.word_width, lane.widths
    low, high = -(1 << (width - 1)), (1 << (width - 1)) - 1
    extremes = [(low, 0), (high, 0), (low, low), (high, high), (0, 0), (-1, 0), (1, -2)]
    cases = []
    for index in range(count):
        if index < len(extremes):
            word, bias = extremes[index]
        else:
            word, bias = (int(v) for v in rng.integers(low, high + 1, 2))
        multiplier = int(rng.choice([0, 1, (1 << 16) - 1, int(rng.integers(1, 1 << 16))]))
        shift = int(rng.choice([0, 1, 14, 31, 47, 62, int(rng.integers(0, 63))]))
        row_multiplier, row_shift = int(rng.integers(0, 1 << 16)), int(rng.integers(0, 63))
        width_index = int(rng.integers(0, len(widths)))
        raw = width_index == len(widths) - 1 and len(widths) > 1 and bool(rng.integers(0, 2))
        cases.append({"word": word, "bias": bias, "multiplier": multiplier, "shift": shift,
                      "row_multiplier": row_multiplier, "row_shift": row_shift, "width_index": width_index,
                      "raw": raw, "relu": bool(rng.integers(0, 2)), "row_scaled": bool(rng.integers(0, 2)) and not raw})
    return cases


def _expected(case, lane):
    multiplier, shift = ((case["row_multiplier"], case["row_shift"]) if case["row_scaled"]
                         else (case["multiplier"], case["shift"]))
    bits = lane.widths[case["width_index"]]
    return int(RequantizerLane.model(case["word"], case["bias"], multiplier, shift, bits, raw=case["raw"],
                                     relu=case["relu"]))


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("word_width, widths", [(None, None), (16, [8])], ids=["drain", "gelu"])
def test_requantizer_lane_is_its_model(seed, word_width, widths):
    """The drain's lane (the accumulator's words, every mode's width and RAW: two partial products) and the
    GELU path's (int16 into int8: one product)."""
    lane = RequantizerLane(GEOMETRY, word_width=word_width, saturation_widths=widths)
    pw = lane.product_width
    cases = _cases(np.random.default_rng(seed), 60, lane)
    got = []

    async def testbench(ctx):
        # per command: flags held; here one "command" per case, the pipeline drained between cases so that the
        # flags (held for a whole command in the engine) never change under a value in flight
        for case in cases:
            ctx.set(lane.raw, case["raw"])
            ctx.set(lane.relu, case["relu"])
            ctx.set(lane.row_scaled, case["row_scaled"])
            ctx.set(lane.saturate, 1 << case["width_index"])
            for name in ("word", "bias", "multiplier", "shift", "row_multiplier"):
                ctx.set(getattr(lane, name), case[name])
            await ctx.tick()
            ctx.set(lane.row_shift, min(case["row_shift"], pw))            # a cycle after the word
            await ctx.tick().repeat(RequantizerLane.LATENCY - 1)
            got.append(ctx.get(lane.value))

    simulate(lane, testbench)
    expected = [_expected(case, lane) for case in cases]
    assert np.array_equal(got, expected), [(c, g, e) for c, g, e in zip(cases, got, expected) if g != e][:3]


def test_requantizer_lane_refuses_a_saturation_wider_than_its_word():
    with pytest.raises(ValueError, match="saturation widths"):
        RequantizerLane(GEOMETRY, word_width=16, saturation_widths=[18])


def test_multiplier_is_its_model():
    from amaranth import signed
    unit = Multiplier(signed(18), signed(17))
    pairs = [(-(1 << 17), -(1 << 16)), ((1 << 17) - 1, (1 << 16) - 1), (-(1 << 17), (1 << 16) - 1), (0, 5), (-3, 7)]
    got = []

    async def testbench(ctx):
        for a, b in pairs:
            ctx.set(unit.a, a)
            ctx.set(unit.b, b)
            await ctx.tick().repeat(Multiplier.LATENCY)
            got.append(ctx.get(unit.p))

    simulate(unit, testbench)
    assert got == [int(Multiplier.model(a, b)) for a, b in pairs]
    assert got == [a * b for a, b in pairs]


def test_requantizer_model_is_golden_requantize():
    # the lane's model is golden.ops.requantize of word + bias (RAW: the saturated sum)
    assert RequantizerLane.model(100, 28, 1 << 14, 15, 8) == ops.requantize(np.int64(128), 1 << 14, 15, 8)
    assert RequantizerLane.model(1 << 30, 1 << 30, 1, 0, 32, raw=True) == (1 << 31) - 1


def _word(address, bits=16):
    """A memory word of `bits` that names its address."""
    return (address * 7919 + 1) % (1 << bits)


def _sequencer_commands(rng, geometry, count):
    """Plain GEMMs (M = 1 and the largest sizes among them) and 3×3 convolutions with random padding."""
    g = geometry
    every_side = {side: 1 for side in ("above", "below", "left", "right")}
    commands = [{"m": 1, "k_tiles": 1, "n_tiles": 1}, {"m": g.max_m, "k_tiles": 2, "n_tiles": g.n_tiles_max},
                {"m": 1, "conv": 1, "channel_tiles": 1, "k_tiles": 9, "n_tiles": 2, "x_base": 40, "x_above": 20,
                 "x_below": 60, "x_stride": 7, "pad": every_side},        # a new tap at every row, every 2 cycles
                {"m": 2, "conv": 1, "channel_tiles": 1, "k_tiles": 9, "n_tiles": 1, "x_base": 3, "x_above": 0,
                 "x_below": 9, "x_stride": 7, "pad": every_side}]
    while len(commands) < count:
        command = {"m": int(rng.integers(1, g.max_m + 1)), "n_tiles": int(rng.integers(1, g.n_tiles_max + 1)),
                   "w_base": int(rng.integers(0, g.w_depth)), "x_stride": int(rng.integers(0, g.x_depth)),
                   "x_base": int(rng.integers(0, g.x_depth))}
        if rng.integers(0, 2):
            channel_tiles = int(rng.integers(1, g.k_tiles_max // 9 + 1))
            command.update(conv=1, channel_tiles=channel_tiles, k_tiles=9 * channel_tiles,
                           x_above=int(rng.integers(0, g.x_depth)), x_below=int(rng.integers(0, g.x_depth)),
                           pad={side: int(rng.integers(0, 2)) for side in ("above", "below", "left", "right")})
        else:
            command["k_tiles"] = int(rng.integers(1, g.k_tiles_max + 1))
        commands.append(command)
    return commands


@pytest.mark.parametrize("load_rows", [1, 2])
def test_tile_sequencer_walks_like_its_model(load_rows):
    """Each command's weight loads and issued rows, in order, are the model's; a tile streams only after its
    last weight word entered the array, loads only once the tile two before it has streamed (the bank), an N
    tile starts only with a free accumulator bank (given back at random delays), and M = 1 rows keep a cycle
    apart."""
    from hw.compute.gemm.sequencer import TileSequencer
    rng = np.random.default_rng(3 + load_rows)
    geometry = GemmGeometry(3, 2, 5, 3 * 18, 6, load_rows=load_rows)
    sequencer = TileSequencer(geometry)
    commands = _sequencer_commands(rng, geometry, 10)
    walks = []

    async def testbench(ctx):
        for command in commands:
            loads_expected, issues_expected = TileSequencer.model(geometry, command)
            ctx.set(sequencer.command, {name: value for name, value in command.items()})
            ctx.set(sequencer.start, 1)
            await ctx.tick()
            ctx.set(sequencer.start, 0)
            ctx.set(sequencer.busy, 1)
            reads, loads, issues, drains = [], [], [], []
            loaded_at, streamed_at, cycle = {}, {}, 0
            tiles_per_n = command["k_tiles"]
            read_at = [None] * OPERAND_READ_LATENCY      # the W memory's reads, a cycle each, the oldest first
            while len(issues) < len(issues_expected) or len(loads) < len(loads_expected) or drains:
                reading = ctx.get(sequencer.w_read.en)
                if reading:
                    reads.append(ctx.get(sequencer.w_read.addr))
                if ctx.get(sequencer.load.valid):
                    load = sequencer.load.payload
                    loads.append((ctx.get(load.bank), ctx.get(load.row), ctx.get(load.data.as_value())))
                    loaded_at[len(loads) - 1] = cycle
                issue = sequencer.issue
                if ctx.get(issue.valid):
                    row = tuple(ctx.get(getattr(issue, name)) for name in ("m", "i", "j", "bank", "first", "last",
                                                                             "pad"))
                    issues.append((*row[:4], bool(row[4]), bool(row[5]), bool(row[6]), ctx.get(sequencer.tile_base)))
                    tile = row[2] * tiles_per_n + row[1]
                    streamed_at.setdefault(tile, []).append(cycle)
                    if row[5] and row[0] == command["m"] - 1:        # the N tile's last row: drained later
                        drains.append(cycle + int(rng.integers(1, 8)))
                ctx.set(sequencer.tile_drained, bool(drains) and drains[0] <= cycle)
                if drains and drains[0] <= cycle:
                    drains.pop(0)
                await ctx.tick()
                cycle += 1
                read_at = read_at[1:] + [reads[-1] if reading else None]
                if read_at[0] is not None:          # the W memory: its word OPERAND_READ_LATENCY cycles later
                    ctx.set(sequencer.w_read.data.as_value(), _word(read_at[0]))
                assert cycle < 20_000, "the sequencer stopped"
            ctx.set(sequencer.tile_drained, 0)
            ctx.set(sequencer.busy, 0)
            await ctx.tick().repeat(2)
            walks.append((command, reads, loads, issues, loaded_at, streamed_at, loads_expected, issues_expected))

    simulate(sequencer, testbench)
    beats = geometry.load_beats
    for command, reads, loads, issues, loaded_at, streamed_at, loads_expected, issues_expected in walks:
        assert [(address, bank, row) for address, (bank, row, _) in zip(reads, loads)] == loads_expected, command
        assert [data for _, _, data in loads] == [_word(address) for address, _, _ in loads_expected]
        assert issues == issues_expected, command
        for tile, cycles in streamed_at.items():
            assert min(cycles) > loaded_at[tile * beats + beats - 1], (command, tile)       # loaded, then streamed
            if tile >= 2:
                assert loaded_at[tile * beats] > max(streamed_at[tile - 2]), (command, tile)  # its bank free
        if command["m"] == 1:
            every = sorted(cycle for cycles in streamed_at.values() for cycle in cycles)
            assert all(b - a >= 2 for a, b in zip(every, every[1:])), command


def _pack(values, bits):
    """Values as one integer of `bits`-bit fields, the first lowest (a memory word of an array layout)."""
    return sum((int(value) % (1 << bits)) << (bits * index) for index, value in enumerate(values))


def test_operand_streamer_is_its_model():
    """Issued rows (the sequencer's model of plain, conv and gathering commands, with random gaps) enter the
    array as the model says, `STREAM_STAGES` cycles after their issue: X from tile_base + row or + the gather
    index, lanes past K zeroed in the last K tile, pad rows zero; extremes −128 and 127 in X."""
    from hw.compute.gemm.operands import OperandStreamer
    from hw.compute.gemm.sequencer import TileSequencer
    rng = np.random.default_rng(11)
    geometry = GemmGeometry(3, 2, 5, 3 * 18, 6)
    streamer = OperandStreamer(geometry)
    x = rng.choice([-128, 127, 0, -1, 1, *range(-128, 128)], size=(1 << geometry.address_width("x"), 3))
    index = rng.integers(0, geometry.max_m, size=1 << geometry.address_width("index"))
    commands = _sequencer_commands(rng, geometry, 8)
    for command in commands:
        command.update(gather=int(rng.integers(0, 2)), list_base=int(rng.integers(0, geometry.index_depth)),
                       k_last=int(rng.integers(1, 4)))
    runs = []

    async def testbench(ctx):
        for command in commands:
            issues = TileSequencer.model(geometry, command)[1]
            ctx.set(streamer.command, command)
            ctx.set(streamer.start, 1)
            await ctx.tick()
            ctx.set(streamer.start, 0)
            ctx.set(streamer.list_base, command["list_base"])
            pending, beats, issued_at, cycle = list(issues), [], [], 0
            x_read_at = [None] * OPERAND_READ_LATENCY       # X's reads, a cycle each, the oldest first
            while len(beats) < len(issues):
                if pending and rng.random() < 0.7:
                    m, i, j, bank, first, last, pad, tile_base = pending.pop(0)
                    ctx.set(streamer.issue, {"valid": 1, "m": m, "i": i, "j": j, "bank": bank, "first": first,
                                             "last": last, "pad": pad})
                    ctx.set(streamer.tile_base, tile_base)
                    issued_at.append(cycle)
                else:
                    ctx.set(streamer.issue.valid, 0)
                index_address, x_address = ctx.get(streamer.index_read.addr), ctx.get(streamer.x_read.addr)
                if ctx.get(streamer.to_array.valid):
                    beats.append((cycle, ctx.get(streamer.to_array.payload.bank),
                                  [ctx.get(streamer.to_array.payload.data[r]) for r in range(3)]))
                await ctx.tick()
                cycle += 1
                ctx.set(streamer.index_read.data, int(index[index_address]))      # the index: a cycle later
                x_read_at = x_read_at[1:] + [x_address]                # X: OPERAND_READ_LATENCY cycles later
                if x_read_at[0] is not None:
                    ctx.set(streamer.x_read.data.as_value(), _pack(x[x_read_at[0]], 8))
            ctx.set(streamer.issue.valid, 0)
            runs.append((command, issues, issued_at, beats))

    simulate(streamer, testbench)
    for command, issues, issued_at, beats in runs:
        expected = OperandStreamer.model(geometry, command, issues, x, index)
        assert [cycle for cycle, _, _ in beats] == [cycle + OperandStreamer.LATENCY for cycle in issued_at]
        assert [bank for _, bank, _ in beats] == [bank for bank, _ in expected], command
        assert np.array_equal(np.array([word for _, _, word in beats]), np.array([word for _, word in expected])), \
            command


DRAIN_CASES = [  # (mode flags, saturation width or None for the accumulator's, M, N tiles)
    ({}, 8, 4, 3), ({"relu": 1}, 8, 1, 2), ({"row_scaled": 1}, 8, 5, 2), ({"gelu": 1}, 16, 3, 3),
    ({"raw": 1}, None, 2, 3), ({"combine": 1}, 18, 4, 1),
]


@pytest.mark.parametrize("gelu_lanes, drain_lanes", [(1, None), (3, None), (3, 1)])
@pytest.mark.parametrize("flags, bits, rows, n_tiles", DRAIN_CASES)
def test_drain_is_its_model(flags, bits, rows, n_tiles, gelu_lanes, drain_lanes):
    """Tiles finished at random times, drained row by row through the lanes as the model says (extreme words
    and biases), each row issued only with a FIFO place (`room` at random), rows `drain_chunks` cycles apart
    (every column a cycle, or one: three chunks a row) and GELU rows at least ⌈C / gelu_lanes⌉, results
    `drain_latency` after their issue, and one `tile_drained` with each tile's last row."""
    from hw.compute.gemm.drain import Drain
    geometry = GemmGeometry(2, 3, 5, 4, 9, gelu_lanes=gelu_lanes, drain_lanes=drain_lanes)
    aw, widths = geometry.accumulator_width, geometry.saturation_widths
    bits = aw if bits is None else bits
    rng = np.random.default_rng(rows * 7 + n_tiles + gelu_lanes + 100 * geometry.drain_chunks)
    low, high = -(1 << (aw - 1)), (1 << (aw - 1)) - 1
    words = rng.choice([low, high, 0, -1, *rng.integers(low, high, 8)], size=(n_tiles, rows, 3))
    p_base = int(rng.integers(0, geometry.p_depth - n_tiles + 1))
    params = [[{"bias": int(rng.choice([low, high, 0, int(rng.integers(-1000, 1000))])),
                "multiplier": int(rng.integers(0, 1 << 16)), "shift": int(rng.integers(0, 63)),
                "fraction_bits": int(rng.integers(5, 16))} for _ in range(3)] for _ in range(n_tiles)]
    row_scales = [(int(rng.integers(0, 1 << 16)), int(rng.integers(0, 63))) for _ in range(rows)]
    drain = Drain(geometry)
    got, issued, drained_with = [], [], []

    async def testbench(ctx):
        ctx.set(drain.command, {"m": rows, "p_base": p_base})
        ctx.set(drain.single_row, rows == 1)
        ctx.set(drain.m_before_last, (rows - 2) % (1 << len(drain.m_before_last)))
        ctx.set(drain.flags, {**{name: 0 for name in ("raw", "combine", "gelu", "row_scaled", "relu")}, **flags,
                              "saturate": 1 << widths.index(bits)})
        ctx.set(drain.start, 1)
        await ctx.tick()
        ctx.set(drain.start, 0)
        ctx.set(drain.busy, 1)
        done, cycle = 0, 0
        while len(got) < n_tiles * rows:
            if done < n_tiles and rng.random() < 0.2:
                done += 1
            ctx.set(drain.tiles_done, done)
            room = bool(rng.random() < 0.7)
            ctx.set(drain.room, room)
            tile, row = ctx.get(drain.drain_tile), ctx.get(drain.drain_row)
            p_address, p_reading = ctx.get(drain.p_read.addr), ctx.get(drain.p_read.en)
            row_address, row_reading = ctx.get(drain.row_read.addr), ctx.get(drain.row_read.en)
            if ctx.get(drain.issue):
                assert room and tile < done, (cycle, room, tile, done)
                issued.append(cycle)
                if ctx.get(drain.tile_drained):
                    drained_with.append((tile, row))
            if ctx.get(drain.result.valid):
                result = drain.result
                got.append((cycle, ctx.get(result.row), ctx.get(result.tile),
                            [ctx.get(result.data[c]) for c in range(3)],
                            [ctx.get(result.fraction_bits[c]) for c in range(3)]))
            await ctx.tick()
            cycle += 1
            if tile < n_tiles and row < rows:                 # the memories: their words a cycle later
                ctx.set(drain.word, [int(value) for value in words[tile][row]])
            if p_reading and 0 <= p_address - p_base < n_tiles:
                ctx.set(drain.p_read.data, params[p_address - p_base])
            if row_reading and row_address < rows:
                ctx.set(drain.row_read.data, dict(zip(("multiplier", "shift"), row_scales[row_address])))
            assert cycle < 5_000, "the drain stopped"

    simulate(drain, testbench)
    expected = Drain.model(geometry, words, params, {**flags, "bits": bits}, row_scales)
    assert [(row, tile, values) for _, row, tile, values, _ in got] == expected
    assert [fractions for _, row, tile, _, fractions in got] == \
        [[column["fraction_bits"] for column in params[tile]] for _, tile, _ in expected]
    assert [cycle for cycle, *_ in got] == [cycle + geometry.drain_latency for cycle in issued]
    assert drained_with == [(tile, rows - 1) for tile in range(n_tiles)]
    gaps = [b - a for a, b in zip(issued, issued[1:])]
    assert min(gaps, default=geometry.drain_chunks) >= geometry.drain_chunks
    if flags.get("gelu"):
        assert min(gaps, default=geometry.gelu_chunks) >= geometry.gelu_chunks


@pytest.mark.parametrize("places", [2, 5])
def test_output_fifo_under_back_pressure(places):
    """A driver like the output path (a row promised only with `room`, arriving a fixed delay later) against
    random `ready`: every row comes out once, in order (the model), `valid`
    held and the payload stable until taken, and `room` never lets a place be promised twice."""
    from hw.compute.gemm.fifo import OutputFifo
    geometry = GemmGeometry(2, 2, 4, 4, 4)
    fifo = OutputFifo(geometry, places)
    rng = np.random.default_rng(places)
    delay, count = 4, 60
    written, taken = [], []

    async def testbench(ctx):
        in_flight, held, promised, cycle = [], None, 0, 0      # in_flight: (arrival cycle, row)
        while len(taken) < len(written) or promised < count or in_flight:
            promise = promised < count and ctx.get(fifo.room) and rng.random() < 0.8
            ctx.set(fifo.promise, promise)
            if promise:
                row = {"row": promised % 4, "tile": promised % 2,
                       "data": [int(v) for v in rng.integers(-1 << 31, 1 << 31, 2)]}
                in_flight.append((cycle + delay, row))
                promised += 1
            ctx.set(fifo.arriving, any(due == cycle + 1 for due, _ in in_flight))
            if in_flight and in_flight[0][0] == cycle:              # announced last cycle, written now
                row = in_flight.pop(0)[1]
                ctx.set(fifo.data, row)
                written.append(row)
            ready = rng.random() < 0.5
            ctx.set(fifo.out.ready, ready)
            if ctx.get(fifo.out.valid):
                payload = ctx.get(fifo.out.payload.as_value())
                assert held in (None, payload), "payload changed before it was taken"
                held = payload
                if ready:
                    taken.append(payload)
                    held = None
            else:
                assert held is None, "valid dropped before the row was taken"
            await ctx.tick()
            cycle += 1
            assert cycle < 5_000, "the FIFO stopped"

    simulate(fifo, testbench)
    layout = geometry.result
    assert taken == [int(layout.const(row).as_value().value) for row in OutputFifo.model(written)]
    assert len(written) == count
