"""The controller's GEMM: its issue rule, its engine command and output job, and its slab buffer."""

from __future__ import annotations

from amaranth import Cat, Mux

from ..common.arith import narrow_product, times_constant
from ..compute.gemm.geometry import GemmMode
from .datapath import GEMM_DESTINATIONS
from .isa import ErrorCause, Operand, Space, Stationary

__all__ = ["gemm_products", "gemm_reaches", "predecode_gemm", "issue_gemm"]


def gemm_products(ops) -> dict:
    """The product of a GEMM's operands its predecode compares (`prepare`): the SCORES words it writes,
    n_tiles × d_stride."""
    return {"scores_words": narrow_product(ops.n_tiles, ops.d_stride)}


def gemm_reaches(ops, prepared) -> dict:
    """What a GEMM's predecode compares, summed a cycle after its `gemm_products` (`reach`): the words past the
    last it reads in PARAMS and writes in SCORES."""
    return {"params_reach": ops.p_base + ops.n_tiles, "scores_reach": ops.d_base + prepared.scores_words}


def predecode_gemm(ctrl, m, ops, reached, refuse, decoded, span_bits):
    """What a GEMM's operands decide alone (`predecode`; `reached` its `gemm_reaches`, a cycle old):
    UNSUPPORTED for a destination the output path cannot write, BAD_OPERAND for operands that contradict each
    other or leave their memories, and the halves of PARAMS and SCORES it touches."""
    combining = ops.mode == GemmMode.COMBINE
    listed = ops.gather | combining
    params_half, params_straddle = ctrl.half_of(Space.PARAMS, ops.p_base, reached.params_reach)
    scores_half, scores_straddle = ctrl.half_of(Space.SCORES, ops.d_base, reached.scores_reach)
    m.d.comb += [decoded.params_half.eq(params_half), decoded.scores_half.eq(scores_half)]
    with m.If(~Cat(*(ops.destination == space for space in GEMM_DESTINATIONS)).any()):
        refuse(ErrorCause.UNSUPPORTED)
    with m.Elif((combining & ~ops.residual)
                | (ops.residual & (ops.destination != Space.RESIDUAL))
                | (ops.transpose & ((ops.destination != Space.SCRATCH) | (ops.mode != GemmMode.INT8)))
                | ((ops.stationary == Stationary.SCRATCH) & (ops.destination == Space.SCRATCH))
                | ((ops.mode == GemmMode.RAW) != (ops.destination == Space.SCORES))
                | ((ops.stationary == Stationary.WEIGHTS) & ((ops.w_base >> span_bits) >= ctrl.buffers))
                | params_straddle | ((ops.destination == Space.SCORES) & scores_straddle)
                | (ops.im2col & listed)):
        refuse(ErrorCause.BAD_OPERAND)


def issue_gemm(ctrl, m, front, ops, decoded, refuse, go, reading, writing, touched, hidden, slab, span_bits, loop,
               conv):
    """The GEMM at the head of the controller `ctrl` (`Controller`; its issue rule in the controller's docstring;
    `decoded` what `predecode_gemm` made of it): its engine command, output job and slab buffer (into `front`, the
    issue stage's), issued when the rule allows, refused when an operand is bad, and what it touches for the
    scoreboard. With `im2col`, X is the band of `conv` (the last CONFIG_CONV); otherwise K-tile-major with a tile
    the model's tokens."""
    buffer = ops.w_base >> span_bits
    command = front.gemm.payload
    combining = ops.mode == GemmMode.COMBINE
    listed = ops.gather | combining         # rows by the current expert's token list
    m.d.comb += [command.m.eq(Mux(listed, loop.count, ops.m)), command.k_tiles.eq(ops.k_tiles),
                 command.k_last.eq(Mux(ops.k_last == 0, ctrl.isa.accel.array_rows, ops.k_last)),
                 command.n_tiles.eq(ops.n_tiles), command.x_base.eq(ops.x_base), command.w_base.eq(ops.w_base),
                 command.p_base.eq(ops.p_base), command.mode.eq(ops.mode), command.relu.eq(ops.relu),
                 command.gather.eq(ops.gather), command.list_base.eq(Mux(listed, loop.base, 0)),
                 command.row_scaled.eq(ops.row_scaled),
                 command.x_stride.eq(Mux(ops.im2col, conv.stride, ctrl.tokens)),
                 command.conv.eq(ops.im2col & conv.kernel), command.channel_tiles.eq(conv.channel_tiles),
                 command.x_above.eq(conv.above), command.x_below.eq(conv.below),
                 command.pad.eq(Cat(conv.pad_above, conv.pad_below, conv.pad_left, conv.pad_right)),
                 command.hidden_multiplier.eq(hidden.multiplier), command.hidden_shift.eq(hidden.shift),
                 front.take.payload.eq(buffer),
                 front.output_job.destination.eq(ops.destination), front.output_job.d_base.eq(ops.d_base),
                 front.output_job.d_stride.eq(ops.d_stride), front.output_job.residual.eq(ops.residual),
                 front.output_job.transpose.eq(ops.transpose), front.output_job.rows.eq(ops.m)]
    source = Mux(ops.source == Operand.SCRATCH, Space.SCRATCH, Space.ACTIVATION)
    from_slab = ops.stationary == Stationary.WEIGHTS
    stationary = Mux(from_slab, Space.WEIGHTS, Space.SCRATCH)
    params_half, scores_half = decoded.params_half, decoded.scores_half
    # into SCORES: the half of d_base, which the softmax of the head before may still read
    into_scores = ops.destination == Space.SCORES
    with m.If(decoded.cause == ErrorCause.UNSUPPORTED):
        refuse(ErrorCause.UNSUPPORTED)
    with m.Elif((decoded.cause != ErrorCause.NONE) | (listed & ~loop.active)
                | (ops.im2col & conv.kernel & (ops.k_tiles != times_constant(conv.channel_tiles, 9)))):
        refuse(ErrorCause.BAD_OPERAND)
    with m.Else():
        # The slab buffer: the one a previous GEMM kept, or taken now once it is full (a kept buffer that
        # is not this one is released first). A GEMM with W in SCRATCH (Kᵀ, V) takes none.
        reuse = slab.holding & (slab.held == buffer)
        m.d.comb += slab.other_wanted.eq(slab.holding & ~(reuse & from_slab))
        destination_used = Mux(into_scores, touched.scores_writing.bit_select(scores_half, 1)
                               | touched.scores_reading.bit_select(scores_half, 1),
                               writing.bit_select(ops.destination.as_value(), 1)
                               | reading.bit_select(ops.destination.as_value(), 1))
        free = ~touched.seen.gemm_active & ~writing.bit_select(source, 1) & ~writing.bit_select(stationary, 1) \
            & ~(ops.row_scaled & writing[Space.ROW_SCALES.value]) \
            & ~(~from_slab & reading[Space.SCRATCH.value]) \
            & ~touched.params_writing.bit_select(params_half, 1) & ~destination_used \
            & ~(listed & touched.seen.router_busy) \
            & ~((ops.mode == GemmMode.GELU) & writing[Space.HIDDEN.value])
        slab_ready = Mux(from_slab, reuse | (~slab.holding & front.take.ready), ~slab.holding)
        issue = go(free & front.gemm.ready & slab_ready)
        m.d.comb += [front.gemm.valid.eq(issue), front.take.valid.eq(issue & from_slab & ~reuse),
                     front.output_start.eq(issue), touched.gemm_issued.eq(issue),
                     touched.gemm.source.eq(source), touched.gemm.stationary.eq(stationary),
                     touched.gemm.destination.eq(ops.destination), touched.gemm.scores_half.eq(scores_half),
                     touched.gemm.params_half.eq(params_half),
                     touched.gemm.row_scaled.eq(ops.row_scaled),
                     touched.gemm.gathers.eq(ops.gather)]
        with m.If(issue & from_slab):
            m.d.sync += [slab.holding.eq(1), slab.held.eq(buffer), slab.releasing.eq(~ops.keep)]
