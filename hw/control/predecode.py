"""The controller's predecode: what an instruction decides alone, worked out as it enters the fetch buffer and
kept beside it (in the fetch buffer and the EXPERTS body buffer), so that no adder or comparator of its operands
sits on the issue path. It takes three of the fetch's cycles: the products of the operands (`prepare`), the sums
on them and on the operands (`reach`), then the comparisons of those and the refusal's cause (`predecode`)."""

from __future__ import annotations

from amaranth import Const, Mux, Value
from amaranth.lib import data

from .datapath import LOADABLE, STORABLE
from .gemm_issue import gemm_products, gemm_reaches, predecode_gemm
from .isa import INSTRUCTION_BITS, ErrorCause, Opcode, Region, Space
from .upsample_issue import predecode_upsample, upsample_products, upsample_reaches

__all__ = ["PREDECODED", "prepared_layout", "prepare", "reached_layout", "reach", "predecode"]

# The cause of the instruction's refusal by its operands alone (NONE if none), the halves of PARAMS and
# SCORES it touches, and the DRAM address of a LOAD, STORE or UPSAMPLE: its region register + its offset (a LOAD
# inside EXPERTS adds the loop's offset as it issues).
PREDECODED = data.StructLayout({"cause": ErrorCause, "params_half": 1, "scores_half": 1, "dram": 32})


def _products(word) -> dict:
    return {**upsample_products(word.operands.upsample), **gemm_products(word.operands.gemm)}


def _dram(word, bases) -> Value:
    """The DRAM address of `word` if it is a LOAD, STORE or UPSAMPLE: the register of its region (`bases`: MODEL,
    IMAGE, OUTPUT; MODEL's for another, which predecode refuses) + its offset."""
    region, offset = word.operands.load.region.as_value(), word.operands.load.address
    for opcode in (Opcode.STORE, Opcode.UPSAMPLE):
        ops = getattr(word.operands, opcode.name.lower())
        region = Mux(word.opcode == opcode, ops.region.as_value(), region)
        offset = Mux(word.opcode == opcode, ops.address, offset)
    model, image, output = bases
    return (Mux(region == Region.IMAGE, image, Mux(region == Region.OUTPUT, output, model)) + offset)[:32]


def _reaches(ctrl, word, prepared, bases) -> dict:
    load, store = word.operands.load, word.operands.store
    norm, softmax = word.operands.layernorm, word.operands.softmax
    return {**{f"load_{space.name.lower()}": ctrl.reach(load, space) for space in LOADABLE},
            **{f"store_{space.name.lower()}": ctrl.reach(store, space) for space in STORABLE},
            "norm_source": norm.source + norm.rows, "norm_destination": norm.destination + norm.rows,
            "softmax_source": softmax.source + softmax.rows,
            **upsample_reaches(word.operands.upsample, prepared), **gemm_reaches(word.operands.gemm, prepared),
            "dram": _dram(word, bases)}


def _layout(values: dict) -> data.StructLayout:
    return data.StructLayout({name: value.shape() for name, value in values.items()})


def _assign(m, target, values: dict):
    m.d.comb += [getattr(target, name).eq(value) for name, value in values.items()]


def _blank(isa):
    return data.View(isa.layout, Const(0, INSTRUCTION_BITS))


def prepared_layout(isa) -> data.StructLayout:
    """What `prepare` works out for instruction set `isa`: each product, as wide as it can be."""
    return _layout(_products(_blank(isa)))


def reached_layout(ctrl) -> data.StructLayout:
    """What `reach` works out for the controller `ctrl`: each sum, as wide as it can be."""
    products = prepared_layout(ctrl.isa)
    return _layout(_reaches(ctrl, _blank(ctrl.isa), data.View(products, Const(0, products.size)),
                            (Const(0, 32),) * 3))


def prepare(m, word, prepared):
    """The products of instruction `word`'s operands that `predecode` compares, into `prepared` (`prepared_layout`),
    each whatever the opcode (only the opcode's own are used)."""
    _assign(m, prepared, _products(word))


def reach(ctrl, m, word, prepared, reached):
    """The sums on instruction `word`'s operands and on its products (`prepared`, what `prepare` made of it a cycle
    before) that `predecode` compares, into `reached` (`reached_layout`), each whatever the opcode: how far an
    operand reaches in its memory (the word after its last)."""
    _assign(m, reached, _reaches(ctrl, word, prepared, (ctrl.model_addr, ctrl.image_addr, ctrl.output_addr)))


def predecode(ctrl, m, word, reached, decoded):
    """What instruction `word` decides alone for the controller `ctrl` (its operands against the memories and the
    model's sizes; `reached` what `reach` made of it a cycle before), into `decoded` (`PREDECODED`): the cause of
    its refusal, or NONE (a refusal that depends on the run's state is the issue's), and the halves of PARAMS and
    SCORES it touches."""
    def refuse(cause):
        m.d.comb += decoded.cause.eq(cause)

    def refuse_region(ops):       # last, so that it takes precedence over the case's other causes
        with m.If(ops.region.as_value() > max(region.value for region in Region)):
            refuse(ErrorCause.BAD_OPERAND)

    m.d.comb += decoded.dram.eq(reached.dram)
    span_bits = (ctrl.buffer_span - 1).bit_length()
    with m.Switch(word.opcode):
        with m.Case(Opcode.LOAD):
            ops = word.operands.load
            buffer = ops.base >> span_bits
            params_half, straddles = ctrl.half_of(Space.PARAMS, ops.base, reached.load_params)
            m.d.comb += decoded.params_half.eq(params_half)
            with m.If(ops.memory == Space.WEIGHTS):
                with m.If((ops.base[:span_bits] != 0) | (buffer >= ctrl.buffers)):
                    refuse(ErrorCause.BAD_OPERAND)
            for space in LOADABLE:
                with m.Elif(ops.memory == space):
                    fits = ctrl.fits(ops, space, 1, getattr(reached, f"load_{space.name.lower()}"))
                    with m.If(~fits | (straddles if space == Space.PARAMS else 0)):
                        refuse(ErrorCause.BAD_OPERAND)
            with m.Else():
                refuse(ErrorCause.UNSUPPORTED)
            refuse_region(ops)
        with m.Case(Opcode.GEMM):
            predecode_gemm(ctrl, m, word.operands.gemm, reached, refuse, decoded, span_bits)
        with m.Case(Opcode.STORE):
            ops = word.operands.store
            for index, space in enumerate(STORABLE):
                with (m.If if index == 0 else m.Elif)(ops.memory == space):
                    fits = ctrl.fits(ops, space, ctrl.bus_bytes, getattr(reached, f"store_{space.name.lower()}"))
                    with m.If(~fits):
                        refuse(ErrorCause.BAD_OPERAND)
            with m.Else():
                refuse(ErrorCause.UNSUPPORTED)
            refuse_region(ops)
        with m.Case(Opcode.UPSAMPLE):
            predecode_upsample(ctrl, m, word.operands.upsample, reached, refuse)
            refuse_region(word.operands.upsample)
        with m.Case(Opcode.LAYERNORM):
            with m.If((reached.norm_source > ctrl.tokens) | (reached.norm_destination > ctrl.tokens)):
                refuse(ErrorCause.BAD_OPERAND)
        with m.Case(Opcode.SOFTMAX):
            with m.If(reached.softmax_source > ctrl.tokens):
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
