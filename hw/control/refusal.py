"""The controller's refusal check: why the instruction about to enter its issue stage is refused (an
`ErrorCause`, NONE if it is not), worked out a cycle before the decision looks at it and registered beside it.

It combines what `predecode` made of the instruction with the run's state that only the controller's own moves
change: the EXPERTS loop (`active`, the pass's `offset`), the last CONFIG_CONV and TASK. Each of those moves
(an instruction issued, a pass's jump, the loop's end) keeps the decision off for the cycle after it, so the
registered cause is always that of the state the decision sees. The one refusal that depends on a unit (a
LAYERNORM with `route` and no ROUTE waiting: the router's `busy`) stays in the decision.
"""

from __future__ import annotations

from amaranth import Signal

from ..common.arith import times_constant
from ..compute.gemm.geometry import GemmMode
from .isa import ErrorCause, Opcode

__all__ = ["check_refusal"]


def check_refusal(ctrl, m, word, decoded, loop, conv, aligned):
    """The cause the controller `ctrl` refuses instruction `word` for (`decoded`: its predecode; `loop` the
    EXPERTS loop, `conv` the last CONFIG_CONV, `aligned` whether its DRAM address (`Controller.dram_address`) is
    good), or NONE; the run-dependent rules are the controller's docstring's."""
    cause = Signal(ErrorCause, name="refusal_cause")
    refused = decoded.cause != ErrorCause.NONE

    def refuse(reason):
        m.d.comb += cause.eq(reason)

    with m.Switch(word.opcode):
        with m.Case(Opcode.LOAD):
            ops = word.operands.load
            with m.If((ops.per_expert & ~loop.active) | ~aligned):
                refuse(ErrorCause.BAD_OPERAND)
            with m.Elif(refused):
                refuse(decoded.cause)
        with m.Case(Opcode.STORE, Opcode.UPSAMPLE):
            with m.If(~aligned):
                refuse(ErrorCause.BAD_OPERAND)
            with m.Elif(refused):
                refuse(decoded.cause)
        with m.Case(Opcode.GEMM):
            ops = word.operands.gemm
            listed = ops.gather | (ops.mode == GemmMode.COMBINE)
            with m.If(decoded.cause == ErrorCause.UNSUPPORTED):
                refuse(ErrorCause.UNSUPPORTED)
            with m.Elif(refused | (listed & ~loop.active)
                        | (ops.im2col & conv.kernel & (ops.k_tiles != times_constant(conv.channel_tiles, 9)))):
                refuse(ErrorCause.BAD_OPERAND)
        with m.Case(Opcode.LAYERNORM):
            with m.If(refused):
                refuse(ErrorCause.BAD_OPERAND)
        with m.Case(Opcode.ROUTE):
            with m.If(ctrl.task >= ctrl.tasks):
                refuse(ErrorCause.BAD_TASK)
            with m.Elif(refused):
                refuse(decoded.cause)
        with m.Case(Opcode.EXPERTS):
            with m.If(loop.active | refused):
                refuse(ErrorCause.BAD_OPERAND)
        with m.Default():       # SOFTMAX, SYNC, HALT, the CONFIGs: their operands alone; an unknown opcode
            refuse(decoded.cause)
    return cause
