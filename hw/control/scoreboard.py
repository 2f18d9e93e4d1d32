"""The controller's scoreboard: which on-chip memories the units in flight read and write."""

from __future__ import annotations

from amaranth import Const, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .isa import Space

__all__ = ["Scoreboard", "GEMM_TOUCHES", "UNITS"]

UNITS = ("load_busy", "gemm_active", "store_busy", "norm_busy", "softmax_busy", "router_busy")

GEMM_TOUCHES = data.StructLayout({"source": Space, "stationary": Space, "destination": Space, "scores_half": 1,
                                  "params_half": 1, "row_scaled": 1, "gathers": 1})


class Scoreboard(wiring.Component):
    """`reading` / `writing` (a bit per `Space`): a unit in flight reads / writes that memory. What a LOAD, a
    STORE or a GEMM touches is registered when it issues (`load_issued` with `load_space`, `store_issued` with
    `store_space`, `gemm_issued` with `gemm`) and holds while the unit is busy (`load_busy`, `store_busy`,
    `gemm_active`: the engine or its output path); the other units always touch the
    same memories: LayerNorm reads RESIDUAL and NORMS and writes ACTIVATION, the softmax reads SCORES and writes
    ACTIVATION and ROW_SCALES, the router writes ROUTES, a GEMM always
    reads PARAMS (and ROW_SCALES when row-scaled). SCORES and PARAMS are kept per half as well (`scores_reading`,
    `scores_writing`, `params_reading`, `params_writing`, a bit per half): a GEMM into SCORES writes the half of
    its `scores_half` and reads the PARAMS half of its `params_half`, the softmax reads the SCORES half of
    `softmax_half` (registered with `softmax_issued`), a LOAD into PARAMS writes the half of `load_half`, a
    STORE from SCORES reads both; bit SCORES or PARAMS of `reading` / `writing` is either half.
    `gemm_touches`: the last GEMM's (its source and stationary operand select the engine's read ports).
    `store_waits` (a bit per `Space`): what a STORE or UPSAMPLE from that memory waits for: a unit in flight writes
    it, or (SCRATCH) a GEMM in flight reads its stationary operand there, on the port the store path reads from
    (`hw.memory.interleaved`).

    The units' busy flags are taken a cycle late: `seen` (a bit per flag of `UNITS`) is each flag, or its unit's
    `starting` (the controller's command to it is taken in that cycle), a cycle before; every output above is of
    `seen`. So a unit is seen busy from the cycle after its command is taken (from the next decision on, three
    cycles after the last) and idle a cycle after it is, and no unit's logic or net runs into the issue decision
    but a flip-flop's."""

    def __init__(self):
        super().__init__({
            **{name: In(1) for name in UNITS}, "starting": In(data.StructLayout(dict.fromkeys(UNITS, 1))),
            "seen": Out(data.StructLayout(dict.fromkeys(UNITS, 1))),
            "load_issued": In(1), "load_space": In(Space), "load_half": In(1), "store_issued": In(1),
            "store_space": In(Space),
            "gemm_issued": In(1), "gemm": In(GEMM_TOUCHES), "softmax_issued": In(1), "softmax_half": In(1),
            "reading": Out(len(Space)), "writing": Out(len(Space)), "gemm_touches": Out(GEMM_TOUCHES),
            "scores_reading": Out(2), "scores_writing": Out(2), "params_reading": Out(2), "params_writing": Out(2),
            "store_waits": Out(len(Space)),
        })

    def elaborate(self, platform):
        m = Module()
        seen = self.seen
        m.d.sync += [getattr(seen, name).eq(getattr(self, name) | getattr(self.starting, name)) for name in UNITS]
        load, store, gemm = Signal(Space), Signal(Space), self.gemm_touches
        load_half = Signal()
        with m.If(self.load_issued):
            m.d.sync += [load.eq(self.load_space), load_half.eq(self.load_half)]
        with m.If(self.store_issued):
            m.d.sync += store.eq(self.store_space)
        with m.If(self.gemm_issued):
            m.d.sync += gemm.eq(self.gemm)
        softmax_half = Signal()
        with m.If(self.softmax_issued):
            m.d.sync += softmax_half.eq(self.softmax_half)
        for half in range(2):
            m.d.comb += [
                self.scores_writing[half].eq(seen.gemm_active & (gemm.destination == Space.SCORES)
                                             & (gemm.scores_half == half)),
                self.scores_reading[half].eq((seen.softmax_busy & (softmax_half == half))
                                             | (seen.store_busy & (store == Space.SCORES))),
                self.params_writing[half].eq(seen.load_busy & (load == Space.PARAMS) & (load_half == half)),
                self.params_reading[half].eq(seen.gemm_active & (gemm.params_half == half)),
            ]
        for space in Space:
            always = lambda busy, spaces: busy & Const(space in spaces)    # noqa: E731
            m.d.comb += [
                self.writing[space.value].eq((seen.load_busy & (load == space))
                                             | (seen.gemm_active & (gemm.destination == space))
                                             | always(seen.norm_busy, (Space.ACTIVATION,))
                                             | always(seen.softmax_busy, (Space.ACTIVATION, Space.ROW_SCALES))
                                             | always(seen.router_busy, (Space.ROUTES,))),
                self.reading[space.value].eq((seen.store_busy & (store == space))
                                             | (seen.gemm_active
                                                & ((gemm.source == space) | (gemm.stationary == space)))
                                             | always(seen.gemm_active, (Space.PARAMS,))
                                             | always(seen.gemm_active & gemm.row_scaled, (Space.ROW_SCALES,))
                                             | always(seen.norm_busy, (Space.RESIDUAL, Space.NORMS))
                                             | always(seen.softmax_busy, (Space.SCORES,))),
                self.store_waits[space.value].eq(self.writing[space.value]
                                                 | (seen.gemm_active & (gemm.stationary == space)
                                                    & Const(space == Space.SCRATCH))),
            ]
        return m
