"""The controller's predecode: what an instruction decides alone, worked out as it enters the fetch buffer and
kept beside it (in the fetch buffer and the EXPERTS body buffer), so that no adder or comparator of its operands
sits on the issue path. It takes two of the fetch's cycles: the products of the operands and the sums that need
no product (`prepare`), then the sums and comparisons on them (`predecode`)."""

from __future__ import annotations

from amaranth import Const
from amaranth.lib import data

from .datapath import LOADABLE, STORABLE
from .gemm_issue import gemm_products, predecode_gemm
from .isa import INSTRUCTION_BITS, ErrorCause, Opcode, Space
from .upsample_issue import predecode_upsample, upsample_products

__all__ = ["PREDECODED", "prepared_layout", "prepare", "predecode"]

# The cause of the instruction's refusal by its operands alone (NONE if none), and the halves of PARAMS and
# SCORES it touches.
PREDECODED = data.StructLayout({"cause": ErrorCause, "params_half": 1, "scores_half": 1})


def _products(word) -> dict:
    return {**upsample_products(word.operands.upsample), **gemm_products(word.operands.gemm)}


def prepared_layout(isa) -> data.StructLayout:
    """What `prepare` works out for instruction set `isa`: each product, as wide as it can be."""
    return data.StructLayout({name: value.shape() for name, value in
                              _products(data.View(isa.layout, Const(0, INSTRUCTION_BITS))).items()})


def prepare(m, word, prepared):
    """The products of instruction `word`'s operands that `predecode` compares, into `prepared` (`prepared_layout`),
    each whatever the opcode (only the opcode's own are used)."""
    m.d.comb += [getattr(prepared, name).eq(value) for name, value in _products(word).items()]


def predecode(ctrl, m, word, prepared, decoded):
    """What instruction `word` decides alone for the controller `ctrl` (its operands against the memories and the
    model's sizes; `prepared` what `prepare` made of it), into `decoded` (`PREDECODED`): the cause of its refusal,
    or NONE (a refusal that depends on the run's state is the issue's), and the halves of PARAMS and SCORES it
    touches."""
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
            predecode_gemm(ctrl, m, word.operands.gemm, prepared, refuse, decoded, span_bits)
        with m.Case(Opcode.STORE):
            ops = word.operands.store
            for index, space in enumerate(STORABLE):
                with (m.If if index == 0 else m.Elif)(ops.memory == space):
                    with m.If(~ctrl.fits(m, ops, space, ctrl.bus_bytes)):
                        refuse(ErrorCause.BAD_OPERAND)
            with m.Else():
                refuse(ErrorCause.UNSUPPORTED)
        with m.Case(Opcode.UPSAMPLE):
            predecode_upsample(ctrl, m, word.operands.upsample, prepared, refuse)
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
        with m.Case(Opcode.SYNC, Opcode.HALT, Opcode.CONFIG_GELU, Opcode.CONFIG_NORM, Opcode.CONFIG_SOFTMAX,
                    Opcode.CONFIG_CONV):
            pass
        with m.Default():
            refuse(ErrorCause.BAD_OPCODE)
