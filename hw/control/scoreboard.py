"""The controller's scoreboard: which on-chip memories the units in flight read and write."""

from __future__ import annotations

from amaranth import Const, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .isa import Space

__all__ = ["Scoreboard", "GEMM_TOUCHES"]

GEMM_TOUCHES = data.StructLayout({"source": Space, "stationary": Space, "destination": Space, "row_scaled": 1,
                                  "gathers": 1})


class Scoreboard(wiring.Component):
    """`reading` / `writing` (a bit per `Space`): a unit in flight reads / writes that memory. What a LOAD, a
    STORE or a GEMM touches is registered when it issues (`load_issued` with `load_space`, `store_issued` with
    `store_space`, `gemm_issued` with `gemm`) and holds while the unit is busy (`load_busy`, `store_busy`,
    `gemm_active`: the engine or its output path, a COMBINE's drain included); the other units always touch the
    same memories: LayerNorm reads RESIDUAL and NORMS and writes ACTIVATION, the softmax reads SCORES and writes
    SCRATCH and ROW_SCALES, the router writes ROUTES, the combine drain reads and writes RESIDUAL, a GEMM always
    reads PARAMS (and ROW_SCALES when row-scaled). `gemm_touches`: the last GEMM's (its source and stationary
    operand select the engine's read ports)."""

    def __init__(self):
        super().__init__({
            "load_busy": In(1), "gemm_active": In(1), "store_busy": In(1), "norm_busy": In(1),
            "softmax_busy": In(1), "router_busy": In(1), "combine_busy": In(1),
            "load_issued": In(1), "load_space": In(Space), "store_issued": In(1), "store_space": In(Space),
            "gemm_issued": In(1), "gemm": In(GEMM_TOUCHES),
            "reading": Out(len(Space)), "writing": Out(len(Space)), "gemm_touches": Out(GEMM_TOUCHES),
        })

    def elaborate(self, platform):
        m = Module()
        load, store, gemm = Signal(Space), Signal(Space), self.gemm_touches
        with m.If(self.load_issued):
            m.d.sync += load.eq(self.load_space)
        with m.If(self.store_issued):
            m.d.sync += store.eq(self.store_space)
        with m.If(self.gemm_issued):
            m.d.sync += gemm.eq(self.gemm)
        for space in Space:
            always = lambda busy, spaces: busy & Const(space in spaces)    # noqa: E731
            m.d.comb += [
                self.writing[space.value].eq((self.load_busy & (load == space))
                                             | (self.gemm_active & (gemm.destination == space))
                                             | always(self.norm_busy, (Space.ACTIVATION,))
                                             | always(self.softmax_busy, (Space.SCRATCH, Space.ROW_SCALES))
                                             | always(self.router_busy, (Space.ROUTES,))
                                             | always(self.combine_busy, (Space.RESIDUAL,))),
                self.reading[space.value].eq((self.store_busy & (store == space))
                                             | (self.gemm_active & ((gemm.source == space) | (gemm.stationary == space)))
                                             | always(self.gemm_active, (Space.PARAMS,))
                                             | always(self.gemm_active & gemm.row_scaled, (Space.ROW_SCALES,))
                                             | always(self.norm_busy, (Space.RESIDUAL, Space.NORMS))
                                             | always(self.softmax_busy, (Space.SCORES,))
                                             | always(self.combine_busy, (Space.RESIDUAL,))),
            ]
        return m
