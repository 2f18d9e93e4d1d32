"""A registered multiplier that maps onto one DSP block with its registers absorbed.

`Multiplier(a_shape, b_shape)`: `p` = `a` · `b` of `LATENCY` = 2 cycles earlier, exactly. Both operands enter
registers (the DSP block's input registers) and the product leaves a register (its output register), so no
fabric routing sits on either side of the multiplier's combinational path. Drive `a` and `b` with what would
otherwise feed the operand registers. `en` (1 when left undriven) is every register's enable, the DSP block's
clock enable: a pipeline that stalls as a whole drives it with its advance, and `p` is then the product of the
operands of `LATENCY` cycles with `en` earlier, held while `en` is 0.

On a Lattice ECP5 platform (`platform.family == "ecp5"`) this is a MULT18X18D with REG_INPUTA, REG_INPUTB
and REG_OUTPUT on CLK0: Yosys maps a behavioural `*` to MULT18X18D without its registers, which leaves the
multiplier's 3.9 ns between two fabric routes. Elsewhere (simulation, generic Verilog) it is the same
pipeline in logic.

`WideMultiplier(a_shape, b_shape)`: the same for operands wider than one DSP block, in 17-bit slices, `LATENCY` = 4.
"""

from __future__ import annotations

from amaranth import ClockSignal, Const, Module, Shape, Signal, signed
from amaranth.hdl import Instance
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Multiplier", "WideMultiplier", "DSP_OPERAND_BITS"]

DSP_OPERAND_BITS = 18   # MULT18X18D: signed 18 × 18 → 36


class Multiplier(wiring.Component):
    LATENCY = 2

    def __init__(self, a_shape, b_shape):
        self.a_shape, self.b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        product_signed = self.a_shape.signed or self.b_shape.signed
        product = Shape(self.a_shape.width + self.b_shape.width, product_signed)
        super().__init__({"a": In(self.a_shape), "b": In(self.b_shape), "en": In(1, init=1), "p": Out(product)})

    @staticmethod
    def model(a, b):
        """What `p` becomes: the exact product."""
        return int(a) * int(b)

    def elaborate(self, platform):
        ecp5 = getattr(platform, "family", None) == "ecp5"
        for name, shape in (("a", self.a_shape), ("b", self.b_shape)):
            if ecp5 and _signed_bits(shape) > DSP_OPERAND_BITS:
                raise ValueError(f"Multiplier operand {name} {shape!r}: needs {_signed_bits(shape)} signed "
                                 f"bits, one MULT18X18D takes {DSP_OPERAND_BITS}")
        m = Module()
        if ecp5:
            pins = {}
            for port, value in (("A", self.a), ("B", self.b)):
                extended = Signal(signed(DSP_OPERAND_BITS), name=f"{port.lower()}_extended")
                m.d.comb += extended.eq(value)
                pins.update({f"i_{port}{bit}": extended[bit] for bit in range(DSP_OPERAND_BITS)})
            product = Signal(2 * DSP_OPERAND_BITS)
            pins.update({f"o_P{bit}": product[bit] for bit in range(2 * DSP_OPERAND_BITS)})
            registered = {f"p_REG_{register}_{setting}": value
                          for register in ("INPUTA", "INPUTB", "OUTPUT")
                          for setting, value in (("CLK", "CLK0"), ("CE", "CE0"), ("RST", "RST0"))}
            unused = {f"p_REG_{register}_{setting}": value
                      for register in ("INPUTC", "PIPELINE")
                      for setting, value in (("CLK", "NONE"), ("CE", "CE0"), ("RST", "RST0"))}
            m.submodules.dsp = Instance(
                "MULT18X18D", **registered, **unused,
                **{f"p_CLK{n}_DIV": "ENABLED" for n in range(4)},
                p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED", p_CAS_MATCH_REG="FALSE", p_SOURCEB_MODE="B_SHIFT",
                p_MULT_BYPASS="DISABLED", p_RESETMODE="SYNC",
                i_SIGNEDA=Const(1), i_SIGNEDB=Const(1), i_SOURCEA=Const(0), i_SOURCEB=Const(0),
                i_CLK0=ClockSignal(), i_CE0=self.en, i_RST0=Const(0),
                **{f"i_{pin}{n}": Const(0) for pin in ("CLK", "CE", "RST") for n in range(1, 4)},
                **{f"i_C{bit}": Const(0) for bit in range(DSP_OPERAND_BITS)},
                **pins)
            m.d.comb += self.p.eq(product)
        else:
            a = Signal.like(self.a, name="a_register", reset_less=True)
            b = Signal.like(self.b, name="b_register", reset_less=True)
            product = Signal.like(self.p, name="p_register", reset_less=True)
            with m.If(self.en):
                m.d.sync += [a.eq(self.a), b.eq(self.b), product.eq(a * b)]
            m.d.comb += self.p.eq(product)
        return m


class WideMultiplier(wiring.Component):
    """`p` = `a` · `b` of `LATENCY` = 4 cycles earlier, exactly, for operands wider than one DSP block takes:
    an operand of more than 18 signed bits in slices of `SLICE` = 17 unsigned bits, its top slice as the operand
    is (a signed one up to 18 bits), each pair of slices in its own `Multiplier`, each partial product into a
    register beside its DSP block, then their sum (shifted into place) into the output register. No adder sits
    at a DSP block's input or output, so the longest path is one adder of the partial products. `en` as for
    `Multiplier`: every register's enable.
    """

    LATENCY = Multiplier.LATENCY + 2
    SLICE = DSP_OPERAND_BITS - 1

    def __init__(self, a_shape, b_shape):
        self.a_shape, self.b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        product = Shape(self.a_shape.width + self.b_shape.width, self.a_shape.signed or self.b_shape.signed)
        super().__init__({"a": In(self.a_shape), "b": In(self.b_shape), "en": In(1, init=1), "p": Out(product)})

    model = staticmethod(Multiplier.model)

    @classmethod
    def slices(cls, shape: Shape) -> list[tuple[int, Shape]]:
        """(the lowest bit, the shape) of each slice of an operand of `shape`."""
        slices, low = [], 0
        while _signed_bits(Shape(shape.width - low, shape.signed)) > DSP_OPERAND_BITS:
            slices.append((low, Shape(cls.SLICE, False)))
            low += cls.SLICE
        return slices + [(low, Shape(shape.width - low, shape.signed))]

    def elaborate(self, platform):
        m = Module()
        partials = []
        for a_low, a_shape in self.slices(self.a_shape):
            for b_low, b_shape in self.slices(self.b_shape):
                name = f"slice_{a_low}_{b_low}"
                multiplier = m.submodules[name] = Multiplier(a_shape, b_shape)
                m.d.comb += [multiplier.a.eq(self.a[a_low:a_low + a_shape.width]),
                             multiplier.b.eq(self.b[b_low:b_low + b_shape.width]), multiplier.en.eq(self.en)]
                partial = Signal.like(multiplier.p, name=f"partial_{a_low}_{b_low}", reset_less=True)
                with m.If(self.en):
                    m.d.sync += partial.eq(multiplier.p)
                partials.append(partial << (a_low + b_low))
        product = Signal.like(self.p, name="sum", reset_less=True)
        with m.If(self.en):
            m.d.sync += product.eq(sum(partials))
        m.d.comb += self.p.eq(product)
        return m


def _signed_bits(shape: Shape) -> int:
    return shape.width if shape.signed else shape.width + 1
