"""A GEMM engine with its X, W, parameter and index memories, and the testbench routine that runs one
matrix product on it: shared by the tests (many cases per elaborated design) and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from hw.common.pipeline import delay_line
from hw.compute.gemm import OPERAND_READ_LATENCY, GemmEngine, GemmMode, pack_params, pack_w, pack_x, tiles

__all__ = ["GemmBench", "GemmModelBench", "ConvOperand", "conv_operand", "run_gemm"]


class GemmBench(Elaboratable):
    """`engine` wired to memories the testbench fills through `ctx.set(memory.data[i], …)`, X's and W's outputs
    registered (`OPERAND_READ_LATENCY`); with `weights` (a component with a `read` port, as
    `hw.memory.loader.WeightPath`), W comes from it instead (`w` is None)."""

    def __init__(self, engine: GemmEngine, weights=None):
        self.engine, self.weights = engine, weights
        shape = lambda port: engine.signature.members[port].signature.members["data"].shape  # noqa: E731
        self.x = Memory(shape=shape("x_read"), depth=engine.x_depth, init=[])
        self.w = Memory(shape=shape("w_read"), depth=engine.w_depth, init=[]) if weights is None else None
        self.p = Memory(shape=shape("p_read"), depth=engine.p_depth, init=[])
        self.row = Memory(shape=shape("row_read"), depth=engine.max_m, init=[])
        self.index = Memory(shape=shape("index_read"), depth=engine.index_depth, init=[])
        self.gate = Memory(shape=shape("gate_read"), depth=engine.index_depth, init=[])

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        for name, port in (("x", "x_read"), ("w", "w_read"), ("p", "p_read"), ("row", "row_read"),
                           ("index", "index_read"), ("index", "scatter_read"), ("gate", "gate_read")):
            if getattr(self, name) is None:
                continue
            read, port = getattr(self, name).read_port(), getattr(engine, port)
            if name in ("x", "w"):
                m.d.comb += [read.addr.eq(port.addr), read.en.eq(port.en)]
                m.d.comb += port.data.eq(delay_line(m, read.data, OPERAND_READ_LATENCY - 1, f"{name}_word")[-1])
            else:
                wiring.connect(m, read, port)
        if self.weights is not None:
            m.submodules.weights = self.weights
            wiring.connect(m, self.weights.read, engine.w_read)
        for name in ("x", "w", "p", "row", "index", "gate"):
            if getattr(self, name) is not None:
                m.submodules[name] = getattr(self, name)
        return m


class GemmModelBench:
    """The same memories as `GemmBench`, in Python, for the verilated engine (`hw.sim.verilator`)."""

    def __init__(self, engine: GemmEngine):
        from hw.sim.verilator import ModelMemory, Verilated, VerilatorContext
        self.engine = engine
        members = engine.signature.members
        for name, depth in (("x", engine.x_depth), ("w", engine.w_depth), ("p", engine.p_depth),
                            ("row", engine.max_m), ("index", engine.index_depth)):
            setattr(self, name, ModelMemory(members[f"{name}_read"].signature.members["data"].shape, depth,
                                            latency=OPERAND_READ_LATENCY if name in ("x", "w") else 1))
        self.context = VerilatorContext(Verilated(engine, "gemm"), [
            (self.x, engine.x_read), (self.w, engine.w_read), (self.p, engine.p_read), (self.row, engine.row_read),
            (self.index, engine.index_read)])


@dataclass(frozen=True)
class ConvOperand:
    """A conv's X for `run_gemm`: the X memory's words from 0, the block's M pixels and the command's conv
    fields (`x_base`, `x_stride`, `conv`, `channel_tiles`, `x_above`, `x_below`, `pad`)."""
    words: list
    m: int
    fields: dict


def conv_operand(feature_map: np.ndarray, row: int, first: int, m: int, rows: int, *, kernel: int = 3,
                 spare: int = 3) -> ConvOperand:
    """The band of `feature_map` [C, H, W] (every input row, `spare` words between rows and channel tiles,
    which hold garbage) for output pixels `first` … `first` + m − 1 of output row `row`, C padded to whole
    channel tiles of `rows` lanes; a 1×1 (`kernel` 1) reads the row itself as a plain GEMM."""
    c, h, w = feature_map.shape
    channel_tiles = tiles(c, rows)
    padded = np.zeros((channel_tiles * rows, h, w), np.int64)
    padded[:c] = feature_map
    row_words = w + spare
    stride = h * row_words + spare
    words = np.full((channel_tiles * stride, rows), 99, np.int64)      # garbage wherever no pixel lies
    for tile in range(channel_tiles):
        for y in range(h):
            start = tile * stride + y * row_words
            words[start:start + w] = padded[tile * rows:(tile + 1) * rows, y].T
    at = lambda y: min(max(y, 0), h - 1) * row_words + first     # noqa: E731: outside: any row (padding)
    fields = {"x_base": at(row), "x_stride": stride, "conv": kernel == 3, "channel_tiles": channel_tiles,
              "x_above": at(row - 1), "x_below": at(row + 1),
              "pad": {"above": row == 0, "below": row == h - 1, "left": first == 0, "right": first + m == w}}
    return ConvOperand(list(words), m, fields)


async def run_gemm(ctx, bench: GemmBench, x, w, bias, multiplier, shift, mode: GemmMode, *, relu=False,
                   rows=None, gates=None, row_scales=None, gelu=(15, 0, 0), rng=None, ready_probability=1.0,
                   w_base=0, timeout=200_000):
    """Fill the memories, issue one command, collect Y [M, N] (int64) from the output stream, holding
    `ready` low at random (probability 1 − `ready_probability`; the command then also arrives after a
    random stall). W is written to the bench's W memory at 0, or, when it has none, is already in the
    weight buffer at `w_base`. With `rows`, X rows are gathered by that
    index list (and in COMBINE mode weighted by `gates` and returned at their tokens: Y [len(x), N], the rows
    of tokens not in the list zero). With
    `row_scales` = (multipliers [M], shifts [M]) the requantization is per row (`multiplier`, `shift` unused);
    GELU mode takes `gelu` = (fraction bits, one or per column [N], hidden multiplier, hidden shift). `x` may
    be a `ConvOperand` (a conv's band; W then in (ky, kx, channel) order, channels padded per tap). Returns
    (Y, cycles from the command until the engine is idle again)."""
    engine = bench.engine
    r, c = engine.rows, engine.cols
    k, n = w.shape
    if isinstance(x, ConvOperand):
        m_rows, words, fields = x.m, x.words, x.fields
    else:
        m_rows = len(rows) if rows is not None else x.shape[0]
        words, fields = pack_x(x, r, engine.x_stride), {"x_base": 0, "x_stride": engine.x_stride}
    for address, word in enumerate(words):
        ctx.set(bench.x.data[address], [int(v) for v in word])
    if bench.w is not None:
        for address, word in enumerate(pack_w(w, r, c, engine.load_rows)):
            ctx.set(bench.w.data[address], [[int(v) for v in row] for row in word])
    for address, word in enumerate(pack_params(bias, multiplier, shift, c, gelu[0])):
        ctx.set(bench.p.data[address], word)
    if rows is not None:
        for address, row in enumerate(rows):
            ctx.set(bench.index.data[address], int(row))
    if gates is not None:
        for address, gate in enumerate(gates):
            ctx.set(bench.gate.data[address], int(gate))
    if row_scales is not None:
        for address, (row_multiplier, row_shift) in enumerate(zip(*row_scales)):
            ctx.set(bench.row.data[address], {"multiplier": int(row_multiplier), "shift": int(row_shift)})
    k_tiles = tiles(k, r)
    ctx.set(engine.command.payload, {
        "m": m_rows, "k_tiles": k_tiles, "k_last": k - (k_tiles - 1) * r, "n_tiles": tiles(n, c),
        "w_base": w_base, "p_base": 0, "gather": rows is not None, "list_base": 0,
        "mode": int(mode), "relu": int(relu), "row_scaled": row_scales is not None,
        "hidden_multiplier": int(gelu[1]), "hidden_shift": int(gelu[2]), **fields,
    })
    if rng is not None and ready_probability < 1:  # the command arrives after a random stall
        for _ in range(int(rng.integers(0, 8))):
            await ctx.tick()
    ctx.set(engine.command.valid, 1)
    while not ctx.get(engine.command.ready):
        await ctx.tick()
    await ctx.tick()
    ctx.set(engine.command.valid, 0)
    result = np.zeros((len(x) if mode == GemmMode.COMBINE else m_rows, tiles(n, c) * c), dtype=np.int64)
    expected = m_rows * tiles(n, c)
    seen, cycles = 0, 1
    while seen < expected:
        ready = rng is None or rng.random() < ready_probability
        ctx.set(engine.out.ready, ready)
        if ready and ctx.get(engine.out.valid):
            beat = ctx.get(engine.out.payload)
            result[beat.row, beat.tile * c:(beat.tile + 1) * c] = [int(v) for v in beat.data]
            seen += 1
        await ctx.tick()
        cycles += 1
        if cycles > timeout:
            raise TimeoutError(f"GEMM {m_rows}×{k}×{n}: {seen} of {expected} results after {timeout} cycles")
    ctx.set(engine.out.ready, 0)
    while ctx.get(engine.busy):
        await ctx.tick()
        cycles += 1
    return result[:, :n], cycles
