"""The weight loader, its AXI4 port and the expert schedule, against a DRAM model: buffer contents exact under
latency and stalls, the buffer handshake, each active expert read once, and the double-buffered timing."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.config import accelerator_preset, model_preset
from hw.flow.export import lint, to_verilog
from hw.memory.layout import expert_layer_layout
from hw.memory.loader import WeightLoader, WeightPath
from hw.sim import simulate
from hw.sim.dram import AXI4ReadModel, AXIProtocolError
from hw.sim.loader import ideal_cycles, run_loads


def _descriptor(address, length, buffer):
    return {"address": address, "length": length, "buffer": buffer}


def _random_descriptors(rng, loader, image_bytes, count):
    """Random bus-aligned loads, some across 4 KiB boundaries, lengths of any byte count up to a buffer."""
    bus = loader.bus_bytes
    loads = []
    for i in range(count):
        length = int(rng.choice([1, bus - 1, bus + 3, loader.buffer_bytes, int(rng.integers(1, loader.buffer_bytes))]))
        if i % 4 == 0:   # just below a 4 KiB boundary
            address = 4096 * int(rng.integers(1, image_bytes // 4096 - 1)) - bus * int(rng.integers(1, 5))
        else:
            address = bus * int(rng.integers(0, (image_bytes - length) // bus))
        loads.append((address, length, i % loader.buffers))
    return loads


@pytest.mark.parametrize("bus_bytes, cols, load_rows, buffers", [(8, 4, 1, 2), (16, 4, 2, 3), (8, 4, 4, 2),
                                                                 (32, 4, 2, 2), (8, 3, 1, 2)])
@pytest.mark.parametrize("stall", [0.0, 0.3, 0.9])
def test_buffers_hold_the_dram_bytes(bus_bytes, cols, load_rows, buffers, stall):
    """Feed words of 4, 8, 16 and 3 bytes (3 padded to 4) on 8-, 16- and 32-byte buses."""
    rng = np.random.default_rng(bus_bytes * 1000 + cols * 100 + load_rows * 10 + int(stall * 10))
    loader = WeightLoader(cols=cols, load_rows=load_rows, buffers=buffers, buffer_bytes=200, bus_bytes=bus_bytes,
                          max_burst=4, outstanding=3)
    image = rng.integers(0, 256, 4 * 4096, dtype=np.uint8)
    dram = AXI4ReadModel(image, bus_bytes, latency=int(rng.integers(1, 12)), ar_stall=stall, r_stall=stall,
                         seed=int(rng.integers(1 << 30)))
    loads = _random_descriptors(rng, loader, len(image), 12)
    stride = loader.word_stride
    words = [-(-length // stride) for _, length, _ in loads]
    result = {}

    async def testbench(ctx):
        result["run"] = await run_loads(ctx, loader, dram, [(loader.descriptor, [_descriptor(*d) for d in loads])],
                                        [b for _, _, b in loads], [int(rng.integers(1, 20)) for _ in loads],
                                        read_words=words, rng=rng, feed_gaps=stall, timeout=40_000)
        assert not ctx.get(loader.error) and ctx.get(loader.idle)

    simulate(loader, testbench)
    for (address, length, _), read in zip(loads, result["run"].words):
        # the bytes of the load; a feed word's bytes past its length are undefined
        defined = np.arange(len(read) * stride).reshape(-1, stride)[:, :loader.feed_bytes] < length
        assert np.array_equal(read[defined], loader.model(image, address, length)[defined])
    assert dram.bytes_read == sum(-(-length // bus_bytes) * bus_bytes for _, length, _ in loads)
    assert dram.max_in_flight >= 2


def test_bad_descriptors_raise_error_and_empty_loads_are_full_at_once():
    loader = WeightLoader(cols=4, buffers=2, buffer_bytes=64, bus_bytes=8, max_burst=4)
    image = np.arange(4096, dtype=np.uint64).astype(np.uint8)
    dram = AXI4ReadModel(image, 8, latency=3)

    async def testbench(ctx):
        ctx.set(loader.read.en, 0)     # a read port's enable is high unless driven
        for descriptor in (_descriptor(4, 16, 0), _descriptor(0, 65, 0)):    # misaligned; too long
            ctx.set(loader.descriptor.payload, descriptor)
            ctx.set(loader.descriptor.valid, 1)
            assert ctx.get(loader.descriptor.ready)
            await ctx.tick()
            ctx.set(loader.descriptor.valid, 0)
            assert ctx.get(loader.error) and ctx.get(loader.full) == 0 and ctx.get(loader.idle)
        run = await run_loads(ctx, loader, dram, [(loader.descriptor, [_descriptor(0, 0, 1), _descriptor(64, 64, 0)])],
                              [1, 0], [1, 1], read_words=[0, 16], timeout=1000)
        assert np.array_equal(run.words[1].reshape(-1), image[64:128])
        assert dram.bytes_read == 64

    simulate(loader, testbench)


def test_consumer_and_loader_rules_are_asserted():
    """Releasing a buffer not held, and reading a buffer not held, fail the simulation."""
    for misuse in ("release", "read"):
        loader = WeightLoader(cols=4, buffers=2, buffer_bytes=64, bus_bytes=8)

        async def testbench(ctx):
            if misuse == "release":
                ctx.set(loader.release.valid, 1)
                ctx.set(loader.release.payload, 1)
            else:
                ctx.set(loader.read.en, 1)
                ctx.set(loader.read.addr, 3)
            await ctx.tick()

        with pytest.raises(AssertionError, match="release of a buffer not held|reads a slab buffer it does not hold"):
            simulate(loader, testbench)


def test_dram_model_catches_a_burst_across_4k():
    dram = AXI4ReadModel(np.zeros(8192, np.uint8), 16)
    with pytest.raises(AXIProtocolError, match="crosses a 4 KiB boundary"):
        dram._check((4096 - 32, 3, 4, 1))
    with pytest.raises(AXIProtocolError, match="ARSIZE 3"):
        dram._check((0, 0, 3, 1))


def _expert_run(model, accel, active, computes, *, latency, beats_per_cycle, stall=0.0, dense=(), read_back=False):
    """The layer's active experts (and dense slabs first) through a `WeightPath`, each buffer read back whole
    with `read_back`; returns (run, dram, loads, the buffers' words by the path's model)."""
    path = WeightPath.for_config(model, accel)
    layout = expert_layer_layout(model, accel)
    base = 4096
    image = np.random.default_rng(5).integers(0, 256, base + layout.bytes + 4096, dtype=np.uint8)
    dram = AXI4ReadModel(image, accel.dram_bytes_per_beat, latency=latency, beats_per_cycle=beats_per_cycle,
                         ar_stall=stall, r_stall=stall, seed=3)
    loads = list(dense) + path.schedule.model(active, base)
    expected = path.model(image, active, base, dense)
    buffers = [i % accel.weight_buffers for i in range(len(loads))]
    result = {}

    async def testbench(ctx):
        ctx.set(path.layer_base, base)
        feeds = [(path.dense, [{"address": a, "length": n} for a, n in dense]), (path.experts, list(active))]
        result["run"] = await run_loads(ctx, path, dram, feeds, buffers, computes, timeout=200_000,
                                        read_words=[len(words) for words in expected] if read_back else None)

    simulate(path, testbench)
    return result["run"], dram, loads, expected


@pytest.mark.parametrize("active", [[0, 2, 3], [1], [0, 1, 2, 3], []])
def test_only_active_experts_are_read_once_each(active):
    model, accel = model_preset("tiny"), accelerator_preset("4x4")
    layout = expert_layer_layout(model, accel)
    dense = [(0, 200)]
    computes = [60] * (1 + 2 * len(active))
    run, dram, _, expected = _expert_run(model, accel, active, computes, latency=6, beats_per_cycle=1.0,
                                         stall=0.3, dense=dense, read_back=True)
    assert dram.bytes_read == 200 + len(active) * (layout.fc1.slab_bytes + layout.fc2.slab_bytes)
    assert len(run.released) == len(expected)
    for load, (read, words) in enumerate(zip(run.words, expected)):     # every buffer as its model says
        assert np.array_equal(read, words), load


@pytest.mark.parametrize("compute, beats_per_cycle", [(300, 1.0), (40, 1.0), (150, 0.5)])
def test_double_buffered_timing_is_within_3_percent_of_ideal(compute, beats_per_cycle):
    """Compute-bound, load-bound and balanced: total cycles against L₁ + Σ max(Cᵢ, Lᵢ₊₁)."""
    model, accel = model_preset("tiny"), accelerator_preset("4x4").replace(dram_outstanding=4)
    active = [0, 1, 3]
    rng = np.random.default_rng(compute)
    computes = [int(compute * rng.uniform(0.7, 1.3)) for _ in range(2 * len(active))]
    run, dram, loads, _ = _expert_run(model, accel, active, computes, latency=10, beats_per_cycle=beats_per_cycle)
    bus = accel.dram_bytes_per_beat
    load_cycles = [int(np.ceil(length / bus / beats_per_cycle)) for _, length in loads]
    ideal = ideal_cycles(load_cycles, computes)
    assert ideal <= run.cycles <= 1.03 * ideal, (run.cycles, ideal)


def test_loader_verilog_passes_lint():
    path = WeightPath.for_config(model_preset("tiny"), accelerator_preset("4x4"))
    lint(to_verilog(path, "weight_path"), "weight_path")


def test_loader_feeds_the_gemm_engine_bit_exact():
    """Two active experts of a tiny layer: each slab, as the loader leaves it in a buffer, is the stationary
    operand of a gathered GEMM on a 4×4 engine; every result equals the golden model's."""
    from hw.compute.gemm import GemmEngine, GemmMode, gemm_model
    from hw.sim.gemm import GemmBench, run_gemm

    model, accel = model_preset("tiny"), accelerator_preset("4x4")
    layout = expert_layer_layout(model, accel)
    path = WeightPath.for_config(model, accel)
    engine = GemmEngine(4, 4, max_m=8, max_k=model.expert_hidden, max_n=model.expert_hidden, x_stride=8,
                        w_depth=accel.weight_buffers * path.buffer_span)
    bench = GemmBench(engine, weights=path)
    rng = np.random.default_rng(11)
    base, active = 256, [1, 3]
    image = np.zeros(base + layout.bytes, dtype=np.uint8)
    matrices = {}
    for expert in range(model.num_experts):
        for matrix, offset in ((layout.fc1, 0), (layout.fc2, layout.fc2_offset)):
            w = rng.integers(-128, 128, (matrix.k, matrix.n))
            w[0, :2] = [-128, 127]
            params = (rng.integers(-5000, 5000, matrix.n), rng.integers(1 << 14, 1 << 15, matrix.n),
                      rng.integers(8, 16, matrix.n))
            start = base + expert * layout.expert_bytes + offset
            image[start:start + matrix.bytes] = matrix.pack(w, *params)
            matrices[expert, matrix.name] = (w, params)
    dram = AXI4ReadModel(image, accel.dram_bytes_per_beat, latency=7, ar_stall=0.3, r_stall=0.3, seed=2)
    loads = layout.loads(active, base)
    checked = []

    async def memory(ctx):
        while True:
            dram.drive(ctx, path.axi)
            await ctx.tick()
            dram.advance()

    async def router(ctx):
        ctx.set(path.layer_base, base)
        for expert in active:
            ctx.set(path.experts.payload, expert)
            ctx.set(path.experts.valid, 1)
            await ctx.tick().until(path.experts.ready)
        ctx.set(path.experts.valid, 0)

    async def consumer(ctx):
        for i, load in enumerate(loads):
            buffer = i % accel.weight_buffers
            ctx.set(path.take.payload, buffer)
            ctx.set(path.take.valid, 1)
            await ctx.tick().until(path.take.ready)
            ctx.set(path.take.valid, 0)
            w, (bias, multiplier, shift) = matrices[load.expert, load.matrix.name]
            tokens = sorted(rng.choice(8, size=int(rng.integers(1, 8)), replace=False))
            x = rng.integers(-128, 128, (8, load.matrix.k))
            y, _ = await run_gemm(ctx, bench, x, w, bias, multiplier, shift, GemmMode.INT8, rows=tokens, rng=rng,
                                  ready_probability=0.7, w_base=buffer * path.buffer_span)
            assert np.array_equal(y, gemm_model(x, w, bias, multiplier, shift, GemmMode.INT8, rows=tokens))
            ctx.set(path.release.payload, buffer)
            ctx.set(path.release.valid, 1)
            await ctx.tick()
            ctx.set(path.release.valid, 0)
            checked.append((load.expert, load.matrix.name))

    simulator = Simulator(bench)
    simulator.add_clock(1e-8)
    simulator.add_testbench(memory, background=True)
    simulator.add_testbench(router, background=True)
    simulator.add_testbench(consumer)
    simulator.run()
    assert checked == [(e, name) for e in active for name in ("expert fc1", "expert fc2")]
    assert dram.bytes_read == len(active) * (layout.fc1.slab_bytes + layout.fc2.slab_bytes)


def test_fast_harness_matches_the_python_simulator():
    """The same weight-path run, with DRAM stalls, in both simulators: same words read back, same cycles."""
    from hw.sim.verilator import Verilated, VerilatorContext, run

    model, accel = model_preset("tiny"), accelerator_preset("4x4").replace(dram_data_width=128)
    layout = expert_layer_layout(model, accel)
    image = np.random.default_rng(4).integers(0, 256, 4096 + layout.bytes, dtype=np.uint8)
    active = [0, 2, 3]
    loads = layout.loads(active, 4096)
    words = [-(-load.length // 4) for load in loads]
    runs = []
    for simulator in ("python", "verilator"):
        path = WeightPath.for_config(model, accel)
        dram = AXI4ReadModel(image, 16, latency=9, ar_stall=0.3, r_stall=0.3, seed=8)

        async def testbench(ctx, path=path, dram=dram):
            ctx.set(path.layer_base, 4096)
            runs.append(await run_loads(ctx, path, dram, [(path.experts, active)],
                                        [i % 2 for i in range(len(loads))], [30] * len(loads), read_words=words))

        if simulator == "python":
            simulate(path, testbench)
        else:
            run(VerilatorContext(Verilated(path, "weight_path")), testbench)
    python, fast = runs
    assert (python.cycles, python.taken, python.released) == (fast.cycles, fast.taken, fast.released)
    for load, a, b in zip(loads, python.words, fast.words):
        assert np.array_equal(a, b) and np.array_equal(a.reshape(-1)[:load.length],
                                                       image[load.address:load.address + load.length])
