"""The GEMM engine bit-exact against the golden requantized matrix product: random shapes on several arrays,
ragged edges, extremes, saturation, every output mode, gather, and random back-pressure."""

import numpy as np
import pytest

from golden import ops
from hw.flow.export import LintError, lint, ports, to_verilog
from hw.compute.array import SystolicArray
from hw.compute.gemm import DRAIN_STAGES, OPERAND_READ_LATENCY, STREAM_STAGES, GemmEngine, GemmMode, gemm_model
from hw.sim import simulate
from hw.sim.gemm import GemmBench, run_gemm


def _case(rng, max_m, max_k, max_n, kind):
    m, k, n = (int(rng.integers(1, top + 1)) for top in (max_m, max_k, max_n))
    x = rng.integers(-128, 128, (m, k))
    w = rng.integers(-128, 128, (k, n))
    if kind == "min":
        x[:], w[:] = -128, -128
    elif kind == "max":
        x[:], w[:] = 127, -128
    elif kind == "alternating":
        x[:] = np.where((np.arange(m)[:, None] + np.arange(k)) % 2, 127, -128)
        w[:] = np.where((np.arange(k)[:, None] + np.arange(n)) % 2, -128, 127)
    bias = rng.integers(-(1 << 20), 1 << 20, n)
    multiplier, shift = ops.quantize_multiplier(rng.uniform(1e-4, 1e-2, n))
    return x, w, bias, multiplier, shift


def _run_cases(rows, cols, cases, *, max_m, max_k, max_n, seed, ready_probability=1.0, load_rows=1,
               drain_lanes=None):
    engine = GemmEngine(rows, cols, max_m=max_m, max_k=max_k, max_n=max_n, load_rows=load_rows,
                        drain_lanes=drain_lanes)
    bench = GemmBench(engine)
    failures, cycles = [], []

    async def testbench(ctx):
        rng = np.random.default_rng(seed)
        for x, w, bias, multiplier, shift, mode, relu, gather in cases:
            expected = gemm_model(x, w, bias, multiplier, shift, mode, relu, gather)
            got, spent = await run_gemm(ctx, bench, x, w, bias, multiplier, shift, mode, relu=relu, rows=gather,
                                        rng=rng, ready_probability=ready_probability)
            cycles.append(spent)
            if not np.array_equal(got, expected):
                failures.append((x.shape, w.shape, mode, relu, gather is not None))

    simulate(bench, testbench)
    assert not failures, f"{len(failures)} of {len(cases)} cases differ: {failures[:5]}"
    return cycles


MODES = [GemmMode.INT8, GemmMode.INT16, GemmMode.INT18, GemmMode.RAW]


@pytest.mark.parametrize("rows, cols, count", [(2, 2, 40), (3, 5, 40), (4, 4, 40)])
def test_random_shapes_bit_exact(rows, cols, count):
    rng = np.random.default_rng(rows * 100 + cols)
    cases = []
    for index in range(count):
        kind = ["random", "min", "max", "alternating"][index % 4] if index < 12 else "random"
        x, w, bias, multiplier, shift = _case(rng, 12, 12, 12, kind)
        gather = None
        if index % 5 == 4:  # an expert: gather some of 16 tokens by its (ascending) token list
            tokens = np.sort(rng.choice(16, size=int(rng.integers(1, 17)), replace=False))
            x = rng.integers(-128, 128, (16, x.shape[1]))
            gather = tokens
        cases.append((x, w, bias, multiplier, shift, MODES[index % 4], index % 3 == 0, gather))
    _run_cases(rows, cols, cases, max_m=16, max_k=12, max_n=12, seed=count)


def test_shapes_smaller_than_the_array_and_single_token_experts():
    rng = np.random.default_rng(1)
    cases = []
    for m, k, n in [(1, 1, 1), (1, 3, 2), (2, 1, 4), (1, 4, 4), (3, 2, 1)]:
        x, w = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
        bias = rng.integers(-1000, 1000, n)
        multiplier, shift = ops.quantize_multiplier(np.full(n, 0.01))
        cases.append((x, w, bias, multiplier, shift, GemmMode.INT8, False, None))
    tokens = rng.integers(-128, 128, (8, 4))
    weights = rng.integers(-128, 128, (4, 3))
    multiplier, shift = ops.quantize_multiplier(np.full(3, 0.02))
    cases.append((tokens, weights, np.zeros(3, int), multiplier, shift, GemmMode.INT8, False, np.array([5])))
    cases.append((tokens, weights, np.zeros(3, int), multiplier, shift, GemmMode.INT8, False, np.arange(8)))
    _run_cases(4, 4, cases, max_m=8, max_k=8, max_n=8, seed=2)


def test_saturation_both_ways():
    x = np.full((3, 8), 127)
    w = np.concatenate([np.full((8, 2), 127), np.full((8, 2), -128)], axis=1)
    multiplier, shift = ops.quantize_multiplier(np.full(4, 0.5))
    cases = [(x, w, np.zeros(4, int), multiplier, shift, mode, relu, None)
             for mode in (GemmMode.INT8, GemmMode.INT16) for relu in (False, True)]
    _run_cases(2, 2, cases, max_m=4, max_k=8, max_n=4, seed=3)


def test_random_back_pressure():
    rng = np.random.default_rng(4)
    cases = [(*_case(rng, 10, 9, 9, "random"), MODES[i % 4], False, None) for i in range(12)]
    _run_cases(3, 5, cases, max_m=10, max_k=9, max_n=9, seed=5, ready_probability=0.3)


def _fill(rows, cols):
    """What a GEMM spends beyond its tiles: the first tile's load (its reads, its last word's read latency) and
    its skew through the array, the stream pipeline, the array's latency, the drain, and the command's end (two
    registered flags)."""
    return (rows + OPERAND_READ_LATENCY - 1 + (rows + cols) + STREAM_STAGES + SystolicArray.latency_of(rows, cols)
            + DRAIN_STAGES + 2)


def test_cycles_follow_the_dataflow_bound():
    # Back to back, a tile costs max(M, R): KT·NT tiles plus the pipeline and the drain of the last tile.
    rng = np.random.default_rng(6)
    rows = cols = 4
    cases = []
    for m, k, n in [(12, 16, 16), (3, 16, 8)]:
        x, w = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
        multiplier, shift = ops.quantize_multiplier(np.full(n, 0.01))
        cases.append((x, w, np.zeros(n, int), multiplier, shift, GemmMode.INT8, False, None))
    cycles = _run_cases(rows, cols, cases, max_m=12, max_k=16, max_n=16, seed=7)
    for (x, w, *_), spent in zip(cases, cycles):
        m, (k, n) = len(x), w.shape
        bound = (k // rows) * (n // cols) * max(m, rows)
        assert bound <= spent <= bound + _fill(rows, cols) + m


@pytest.mark.parametrize("drain_lanes", [2, 1])
def test_narrow_drain(drain_lanes):
    """A drain of fewer lanes than columns (a row in C / lanes chunks): bit-exact in every mode, extremes and
    back-pressure included; a GEMM of one K tile is then the drain's: its N tiles' M rows, C / lanes cycles each."""
    rng = np.random.default_rng(20 + drain_lanes)
    cases = [(*_case(rng, 9, 10, 9, ["random", "min", "max", "alternating"][i % 4]), MODES[i % 4], i % 3 == 0, None)
             for i in range(12)]
    chunks = 4 // drain_lanes
    for m in (1, 6):                                # one K tile, three N tiles
        x, w = rng.integers(-128, 128, (m, 4)), rng.integers(-128, 128, (4, 12))
        multiplier, shift = ops.quantize_multiplier(np.full(12, 0.01))
        cases.append((x, w, np.zeros(12, int), multiplier, shift, GemmMode.INT8, False, None))
    cycles = _run_cases(4, 4, cases, max_m=9, max_k=10, max_n=12, seed=21, drain_lanes=drain_lanes)
    _run_cases(4, 4, cases[:12], max_m=9, max_k=10, max_n=12, seed=22, ready_probability=0.4,
               drain_lanes=drain_lanes)
    for (x, *_), spent in zip(cases[-2:], cycles[-2:]):
        drained = 3 * len(x) * chunks
        assert drained <= spent <= drained + 3 * (chunks + 2) + _fill(4, 4) + chunks


@pytest.mark.parametrize("load_rows", [2, 4])
def test_wider_weight_feed(load_rows):
    """load_rows array rows enter per cycle: bit-exact, and a tile with M rows (M = 1 counting 2) costs
    max(M, b, (b + L + M) / 2), b = R / load_rows the cycles of its load and L = `OPERAND_READ_LATENCY` those
    of a weight word's read (a tile loads once the tile two before it has streamed)."""
    rng = np.random.default_rng(load_rows)
    cases = []
    for index in range(10):
        x, w, bias, multiplier, shift = _case(rng, 10, 12, 9, ["random", "min"][index % 2])
        cases.append((x, w, bias, multiplier, shift, MODES[index % 4], False, None))
    for m in (1, 2, 3):  # short tiles: the feed rate sets their cost
        x, w = rng.integers(-128, 128, (m, 16)), rng.integers(-128, 128, (16, 8))
        multiplier, shift = ops.quantize_multiplier(np.full(8, 0.01))
        cases.append((x, w, np.zeros(8, int), multiplier, shift, GemmMode.INT8, False, None))
    cycles = _run_cases(4, 4, cases, max_m=10, max_k=16, max_n=9, seed=9, load_rows=load_rows)
    for (x, w, *_), spent in zip(cases[-3:], cycles[-3:]):
        tiles_count, rows, load = (16 // 4) * (8 // 4), max(len(x), 2), 4 // load_rows
        assert spent <= tiles_count * max(rows, load, (load + OPERAND_READ_LATENCY + rows) / 2) + _fill(4, 4)


def test_verilog_of_the_4x4_engine_lints():
    engine = GemmEngine(4, 4, max_m=40, max_k=40, max_n=40)
    text = to_verilog(engine, "gemm_engine")
    header = text[text.index("module gemm_engine("):].split(")", 1)[0]
    for port in ("command__payload", "x_read__data", "w_read__data", "p_read__data", "out__payload", "out__valid"):
        assert port in header, f"{port} is not a port of the exported engine"
    assert len(ports(engine)) + 2 == header.count(",") + 1  # and clk, rst
    lint(text, "gemm_engine")


def test_lint_fails_on_broken_verilog():
    with pytest.raises(LintError, match="failed on broken"):
        lint("module broken(input a); assign b = a; endmodule", "broken")


@pytest.mark.parametrize("experts, k, tokens, n, drain_lanes", [(4, 2, 9, 6, None), (6, 1, 7, 9, None),
                                                                (3, 3, 5, 4, None), (4, 2, 9, 6, 2)])
def test_experts_gather_and_emit_gate_weighted_rows_like_the_golden_combine(experts, k, tokens, n, drain_lanes):
    """A whole MoE layer's fc2 expert by expert in COMBINE mode (experts with no token skipped, one token,
    many; odd experts in two commands, N tile 0 then the rest, as a matrix over two slab buffers runs; `ready`
    low at random): each command's rows are its tokens' y·g rounded to the residual's step (`CombineTerms`),
    and added into a residual near its limits as the output path does, expert by expert, they give
    `golden.ops.combine` bit for bit; with a drain of fewer lanes too."""
    from hw.compute.gemm import combine_model
    from hw.compute.gemm.combine import CombineTerms
    from hw.vector.residual import ResidualAdd
    rng = np.random.default_rng(experts * 10 + k)
    hidden = 7
    x = rng.integers(-128, 128, (tokens, hidden))
    spare = k <= experts - 2                                # then expert E−1 gets no token, E−2 exactly one
    ids = np.array([rng.permutation(experts - 2 if spare else experts)[:k] for _ in range(tokens)])
    if spare:
        ids[0, -1] = experts - 2
    gates = rng.integers(0, (1 << 15) // k, (tokens, k))
    gates[1] = [1 << 15] + [0] * (k - 1)                    # one expert takes it all
    largest = (1 << 15) + k // 2                            # the largest sum gate weights can have
    gates[2] = largest // k
    gates[2, :largest % k] += 1
    gates[3] = 0
    gates[3, :2] = 1 << 14                                  # y·g / 2^17 = y/8: ties
    residual = rng.integers(-(1 << 15), 1 << 15, (tokens, n))
    residual[1] = 32767                                     # saturates with any positive term
    layers = []
    for e in range(experts):
        w = rng.integers(-128, 128, (hidden, n))
        bias = rng.integers(-4000, 4000, n)
        multiplier, shift = ops.quantize_multiplier(rng.uniform(0.5, 4.0, n))
        layers.append((w, bias, multiplier, shift, np.nonzero((ids == e).any(-1))[0]))
    engine = GemmEngine(3, 4, max_m=tokens, max_k=hidden, max_n=n, drain_lanes=drain_lanes)
    bench = GemmBench(engine)
    emitted = []

    async def testbench(ctx):
        for e, (w, bias, multiplier, shift, members) in enumerate(layers):
            slots = np.argmax(ids[members] == e, axis=1)
            splits = [0, 4, n] if e % 2 and n > 4 else [0, n]
            rows = np.zeros((tokens, n), np.int64)
            for first, end in zip(splits, splits[1:]):
                columns = slice(first, end)
                y, _ = await run_gemm(ctx, bench, x, w[:, columns], bias[columns], multiplier[columns],
                                      shift[columns], GemmMode.COMBINE, rows=members, gates=gates[members, slots],
                                      rng=rng, ready_probability=0.6)
                rows[:, columns] = y
            emitted.append(rows)

    simulate(bench, testbench)
    outputs = np.zeros((tokens, k, n), dtype=np.int64)
    for e, ((w, bias, multiplier, shift, members), rows) in enumerate(zip(layers, emitted)):
        if not len(members):
            assert not rows.any()
            continue
        slots = np.argmax(ids[members] == e, axis=1)
        y = gemm_model(x, w, bias, multiplier, shift, GemmMode.INT18, rows=members)
        outputs[members, slots] = y
        terms = CombineTerms.model(y, gates[members, slots], members)
        assert np.array_equal(rows[members], np.array([row for _, row in terms]))
        assert not np.delete(rows, members, axis=0).any()
    if spare:
        assert len(layers[-1][-1]) == 0 and len(layers[-2][-1]) == 1
    # Added into the residual expert by expert, as the output path does: the golden model's combine.
    before = residual.copy()
    for rows, (*_, members) in zip(emitted, layers):
        residual[members] = ResidualAdd.model(residual[members], rows[members])
    assert np.array_equal(residual, combine_model(x, layers, ids, gates, before))
    assert np.array_equal(residual, ops.combine(before, outputs, gates, ids, 16))
    assert not np.array_equal(residual, before + sum(emitted)), "no sum saturated"


@pytest.mark.parametrize("drain_lanes", [None, 1])
def test_per_row_scales_like_attention_times_v(drain_lanes):
    """`row_scaled`: each row requantized with its own multiplier and shift (the softmax unit's row scales),
    shifts from 0 to 63 included, with back-pressure; through a drain of every column a cycle, or of one."""
    rng = np.random.default_rng(8)
    engine = GemmEngine(3, 5, max_m=12, max_k=14, max_n=9, drain_lanes=drain_lanes)
    bench = GemmBench(engine)
    failures = []

    async def testbench(ctx):
        for case in range(8):
            m, k, n = int(rng.integers(1, 13)), int(rng.integers(1, 15)), int(rng.integers(1, 10))
            x, w = rng.integers(0, 128, (m, k)), rng.integers(-128, 128, (k, n))
            if case == 0:
                x[:], w[:] = 127, -128
            multipliers = rng.integers(1 << 14, 1 << 15, m)
            shifts = rng.integers(0, 64, m) if case % 2 else rng.integers(8, 20, m)
            expected = gemm_model(x, w, np.zeros(n, int), multipliers[:, None], shifts[:, None], GemmMode.INT8)
            zeros = np.zeros(n, int)
            got, _ = await run_gemm(ctx, bench, x, w, zeros, zeros, zeros, GemmMode.INT8,
                                    row_scales=(multipliers, shifts), rng=rng, ready_probability=0.5)
            if not np.array_equal(got, expected):
                failures.append((m, k, n))

    simulate(bench, testbench)
    assert not failures


@pytest.mark.parametrize("gelu_lanes, drain_lanes", [(3, None), (2, None), (1, None), (3, 1)])
def test_gelu_mode_like_fc1(gelu_lanes, drain_lanes):
    """GELU: requantize to int16, each column in its own Q.f, GELU, requantize to int8 with the command's hidden
    multiplier and shift, exactly as the golden MLP; f from 5 to 15 changing column by column (and tile by tile
    while rows are in flight), saturation of the hidden activation both ways, and back-pressure, with the GELU
    path as wide as the array or narrower (rows serialized through it), behind a drain as wide or of one lane; a
    column's fraction-bit count below 5 sets the error."""
    rng = np.random.default_rng(9 + gelu_lanes)
    engine = GemmEngine(4, 3, max_m=10, max_k=12, max_n=8, gelu_lanes=gelu_lanes, drain_lanes=drain_lanes)
    bench = GemmBench(engine)
    failures = []

    async def testbench(ctx):
        for case in range(10):
            m, k, n = int(rng.integers(1, 11)), int(rng.integers(1, 13)), int(rng.integers(1, 9))
            x, w = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
            bias = rng.integers(-(1 << 16), 1 << 16, n)
            multiplier, shift = ops.quantize_multiplier(rng.uniform(1e-3, 3e-1, n))
            fraction_bits = (5 + case + np.arange(n)) % 11 + 5 if case % 3 else np.full(n, 5 + case % 11)
            gelu = (fraction_bits, int(rng.integers(1 << 14, 1 << 15)), int(rng.integers(4, 20)) if case else 2)
            expected = gemm_model(x, w, bias, multiplier, shift, GemmMode.GELU, gelu=gelu)
            got, _ = await run_gemm(ctx, bench, x, w, bias, multiplier, shift, GemmMode.GELU, gelu=gelu, rng=rng,
                                    ready_probability=0.6 if case % 2 else 1.0)
            if not np.array_equal(got, expected):
                failures.append((case, m, k, n, gelu))
        assert not ctx.get(engine.error)
        x = np.ones((1, 2), int)
        await run_gemm(ctx, bench, x, np.ones((2, 2), int), np.zeros(2, int), np.full(2, 1 << 14), np.full(2, 14),
                       GemmMode.GELU, gelu=(np.array([9, 4]), 1 << 14, 14))
        assert ctx.get(engine.error)

    simulate(bench, testbench)
    assert not failures


# 3×3 convolutions by im2col over a band of input rows: (array, channels, height, width, output pixels,
# kind); each case runs every output row's blocks of `block` pixels, edges and interior alike.
CONV_CASES = [(2, 2, 3, 4, 5, 3, "random"), (3, 5, 4, 3, 4, 4, "random"), (4, 4, 8, 2, 6, 6, "extremes"),
              (4, 4, 5, 1, 1, 1, "random")]


@pytest.mark.parametrize("rows, cols, channels, height, width, block, kind", CONV_CASES)
def test_conv3x3_by_im2col_like_the_golden_convolution(rows, cols, channels, height, width, block, kind):
    from hw.memory.layout import conv_weight
    from hw.sim.gemm import conv_operand
    rng = np.random.default_rng(rows * 1000 + channels * 10 + width)
    n = cols + 1
    feature_map = rng.integers(-128, 128, (channels, height, width))
    weight = rng.integers(-128, 128, (channels * 9, n))
    if kind == "extremes":
        feature_map[:] = np.where(rng.random(feature_map.shape) < 0.5, -128, 127)
        weight[:] = -128
    bias = rng.integers(-(1 << 20), 1 << 20, n)
    multiplier, shift = ops.quantize_multiplier(rng.uniform(1e-4, 1e-2, n))
    expected = ops.requantize(ops.conv3x3(feature_map, weight) + bias, multiplier, shift, 8, lower=0)
    expected = expected.reshape(height, width, n)
    k = 9 * -(-channels // rows) * rows
    engine = GemmEngine(rows, cols, max_m=block, max_k=k, max_n=n, x_depth=4096)
    bench = GemmBench(engine)
    failures = []

    async def testbench(ctx):
        tap_weight = conv_weight(weight, rows)
        for y in range(height):
            for first in range(0, width, block):
                m = min(block, width - first)
                operand = conv_operand(feature_map, y, first, m, rows)
                got, _ = await run_gemm(ctx, bench, operand, tap_weight, bias, multiplier, shift, GemmMode.INT8,
                                        relu=True, rng=rng, ready_probability=0.7)
                if not np.array_equal(got, expected[y, first:first + m]):
                    failures.append((y, first))

    simulate(bench, testbench)
    assert not failures, f"output blocks (row, first pixel) that differ: {failures}"
