"""The controller's predecode: what an instruction decides alone, worked out as it enters the fetch buffer and
kept beside it (in the fetch buffer and the EXPERTS body buffer), so that no adder or comparator of its operands
sits on the issue path."""

from __future__ import annotations

from amaranth.lib import data

from .datapath import LOADABLE, STORABLE
from .gemm_issue import predecode_gemm
from .isa import ErrorCause, Opcode, Space
from .upsample_issue import predecode_upsample

__all__ = ["PREDECODED", "predecode"]

# The cause of the instruction's refusal by its operands alone (NONE if none), and the halves of PARAMS and
# SCORES it touches.
PREDECODED = data.StructLayout({"cause": ErrorCause, "params_half": 1, "scores_half": 1})


def predecode(ctrl, m, word, decoded):
    """What instruction `word` decides alone for the controller `ctrl` (its operands against the memories and the
    model's sizes), into `decoded` (`PREDECODED`): the cause of its refusal, or NONE (a refusal that depends on
    the run's state is the issue's), and the halves of PARAMS and SCORES it touches."""
    def refuse(cause):
        m.d.comb += decoded.cause.eq(cause)

    span_bits = (ctrl.buffer_span - 1).bit_length()
    with m.Switch(word.opcode):
        with m.Case(Opcode.LOAD):
            ops = word.operands.load
            buffer = ops.base >> span_bits
            params_half, straddles = ctrl.half_of(
                Space.PARAMS, ops.base, ops.bytes >> (ctrl.spaces[Space.PARAMS].word_bytes - 1).bit_length())
            m.d.comb += decoded.params_half.eq(params_half)
            with m.If(ops.memory == Space.WEIGHTS):
                with m.If((ops.base[:span_bits] != 0) | (buffer >= ctrl.buffers)):
                    refuse(ErrorCause.BAD_OPERAND)
            for space in LOADABLE:
                with m.Elif(ops.memory == space):
                    with m.If(~ctrl.fits(m, ops, space, 1) | (straddles if space == Space.PARAMS else 0)):
                        refuse(ErrorCause.BAD_OPERAND)
            with m.Else():
                refuse(ErrorCause.UNSUPPORTED)
        with m.Case(Opcode.GEMM):
            predecode_gemm(ctrl, m, word.operands.gemm, refuse, decoded, span_bits)
        with m.Case(Opcode.STORE):
            ops = word.operands.store
            for index, space in enumerate(STORABLE):
                with (m.If if index == 0 else m.Elif)(ops.memory == space):
                    with m.If(~ctrl.fits(m, ops, space, ctrl.bus_bytes)):
                        refuse(ErrorCause.BAD_OPERAND)
            with m.Else():
                refuse(ErrorCause.UNSUPPORTED)
        with m.Case(Opcode.UPSAMPLE):
            predecode_upsample(ctrl, m, word.operands.upsample, refuse)
        with m.Case(Opcode.LAYERNORM):
            ops = word.operands.layernorm
            with m.If((ops.source + ops.rows > ctrl.tokens) | (ops.destination + ops.rows > ctrl.tokens)):
                refuse(ErrorCause.BAD_OPERAND)
        with m.Case(Opcode.SOFTMAX):
            ops = word.operands.softmax
            with m.If(ops.source + ops.rows > ctrl.tokens):
                refuse(ErrorCause.BAD_OPERAND)
        with m.Case(Opcode.ROUTE):
            with m.If((word.operands.route.tokens > ctrl.tokens)
                      | (word.operands.route.layer >= max(1, len(ctrl.isa.model.moe_blocks)))):
                refuse(ErrorCause.BAD_OPERAND)
        with m.Case(Opcode.EXPERTS):
            with m.If(word.operands.experts.body > ctrl.body_depth):
                refuse(ErrorCause.BAD_OPERAND)
        with m.Case(Opcode.COMBINE):
            with m.If(word.operands.combine.rows > ctrl.tokens):
                refuse(ErrorCause.BAD_OPERAND)
        with m.Case(Opcode.SYNC, Opcode.HALT, Opcode.CONFIG_GELU, Opcode.CONFIG_NORM, Opcode.CONFIG_SOFTMAX,
                    Opcode.CONFIG_CONV):
            pass
        with m.Default():
            refuse(ErrorCause.BAD_OPCODE)
