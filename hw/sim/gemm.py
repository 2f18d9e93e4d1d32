"""A GEMM engine with its X, W, parameter and index memories, and the testbench routine that runs one
matrix product on it: shared by the tests (many cases per elaborated design) and the benchmarks."""

from __future__ import annotations

import numpy as np
from amaranth import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from hw.compute.gemm import GemmEngine, GemmMode, pack_params, pack_w, pack_x, tiles

__all__ = ["GemmBench", "GemmModelBench", "run_gemm"]


class GemmBench(Elaboratable):
    """`engine` wired to memories the testbench fills through `ctx.set(memory.data[i], …)`; with `weights`
    (a component with a `read` port, as `hw.memory.loader.WeightPath`), W comes from it instead (`w` is None)."""

    def __init__(self, engine: GemmEngine, weights=None):
        self.engine, self.weights = engine, weights
        shape = lambda port: engine.signature.members[port].signature.members["data"].shape  # noqa: E731
        self.x = Memory(shape=shape("x_read"), depth=engine.x_depth, init=[])
        self.w = Memory(shape=shape("w_read"), depth=engine.w_depth, init=[]) if weights is None else None
        self.p = Memory(shape=shape("p_read"), depth=engine.p_depth, init=[])
        self.row = Memory(shape=shape("row_read"), depth=engine.max_m, init=[])
        self.index = Memory(shape=shape("index_read"), depth=engine.index_depth, init=[])
        self.gate = Memory(shape=shape("gate_read"), depth=engine.index_depth, init=[])
        self.combine = Memory(shape=shape("combine_read"), depth=engine.combine_depth, init=[])

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        for name, port in (("x", "x_read"), ("w", "w_read"), ("p", "p_read"), ("row", "row_read"),
                           ("index", "index_read"), ("index", "scatter_read"), ("gate", "gate_read")):
            if getattr(self, name) is not None:
                wiring.connect(m, getattr(self, name).read_port(), getattr(engine, port))
        if self.weights is not None:
            m.submodules.weights = self.weights
            wiring.connect(m, self.weights.read, engine.w_read)
        write = self.combine.write_port()
        wiring.connect(m, write, engine.combine_write)
        wiring.connect(m, self.combine.read_port(transparent_for=(write,)), engine.combine_read)
        for name in ("x", "w", "p", "row", "index", "gate", "combine"):
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
            setattr(self, name, ModelMemory(members[f"{name}_read"].signature.members["data"].shape, depth))
        self.context = VerilatorContext(Verilated(engine, "gemm"), [
            (self.x, engine.x_read), (self.w, engine.w_read), (self.p, engine.p_read), (self.row, engine.row_read),
            (self.index, engine.index_read)])


async def run_gemm(ctx, bench: GemmBench, x, w, bias, multiplier, shift, mode: GemmMode, *, relu=False,
                   rows=None, gates=None, row_scales=None, gelu=(15, 0, 0), rng=None, ready_probability=1.0,
                   w_base=0, timeout=200_000):
    """Fill the memories, issue one command, collect Y [M, N] (int64) from the output stream, holding
    `ready` low at random (probability 1 − `ready_probability`; the command then also arrives after a
    random stall). W is written to the bench's W memory at 0, or, when it has none, is already in the
    weight buffer at `w_base`. With `rows`, X rows are gathered by that
    index list (and in COMBINE mode scattered back with `gates`, which emits nothing: Y is None). With
    `row_scales` = (multipliers [M], shifts [M]) the requantization is per row (`multiplier`, `shift` unused);
    GELU mode takes `gelu` = (fraction bits, one or per column [N], hidden multiplier, hidden shift). Returns
    (Y, cycles from the command until the engine is idle again)."""
    engine = bench.engine
    r, c = engine.rows, engine.cols
    m_rows = len(rows) if rows is not None else x.shape[0]
    k, n = w.shape
    for address, word in enumerate(pack_x(x, r, engine.x_stride)):
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
        "x_base": 0, "w_base": w_base, "p_base": 0, "gather": rows is not None, "list_base": 0,
        "mode": int(mode), "relu": int(relu), "row_scaled": row_scales is not None,
        "hidden_multiplier": int(gelu[1]), "hidden_shift": int(gelu[2]),
    })
    if rng is not None and ready_probability < 1:  # the command arrives after a random stall
        for _ in range(int(rng.integers(0, 8))):
            await ctx.tick()
    ctx.set(engine.command.valid, 1)
    while not ctx.get(engine.command.ready):
        await ctx.tick()
    await ctx.tick()
    ctx.set(engine.command.valid, 0)
    result = np.zeros((m_rows, tiles(n, c) * c), dtype=np.int64)
    expected = 0 if mode == GemmMode.COMBINE else m_rows * tiles(n, c)
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
    return (None if mode == GemmMode.COMBINE else result[:, :n]), cycles
