"""The two-step kept bit against the one-step `kept_bit`: every shift 0 … 63, extreme and random values; the
adder products (`narrow_product`, `times_constant`) and the priority encoder's bit length against Python's,
extremes and random operands."""

import numpy as np
import pytest
from amaranth import Cat, Module, Signal, signed
from amaranth.sim import Simulator

from hw.common.arith import (beyond, bit_length, bits_from, capped_power_of_two, highest_bit, kept_bit,
                             kept_bit_of_byte, kept_byte, narrow_product, radix4_step, times_constant)


def test_kept_bit_in_two_steps_equals_kept_bit():
    width = 51                                         # the requantizer's product
    m = Module()
    value, shift = Signal(signed(width)), Signal(6)
    one_step, two_steps = Signal(), Signal()
    m.d.comb += [one_step.eq(kept_bit(value, shift)), two_steps.eq(kept_bit_of_byte(kept_byte(value, shift), shift))]
    rng = np.random.default_rng(0)
    values = [-(1 << (width - 1)), (1 << (width - 1)) - 1, -1, 0, 1, 0x5555555555555 - (1 << 50)]
    values += [int(v) for v in rng.integers(-(1 << (width - 1)), 1 << (width - 1), 30)]
    seen = []

    async def testbench(ctx):
        for v in values:
            for s in range(64):
                ctx.set(value, v)
                ctx.set(shift, s)
                expected = 0 if s == 0 else (v >> s) & 1       # Python's >> is arithmetic: the sign past the top
                seen.append((ctx.get(one_step), ctx.get(two_steps), expected))

    simulator = Simulator(m)                           # combinational: no clock
    simulator.add_testbench(testbench)
    simulator.run()
    assert all(one == two == expected for one, two, expected in seen)



def _evaluated(m, inputs, output, cases) -> list[int]:
    """`output` of the combinational module `m` for each case (a value per signal of `inputs`)."""
    seen = []

    async def testbench(ctx):
        for case in cases:
            for signal, value in zip(inputs, case):
                ctx.set(signal, value)
            seen.append(ctx.get(output))

    simulator = Simulator(m)
    simulator.add_testbench(testbench)
    simulator.run()
    return seen


@pytest.mark.parametrize("a_width, b_width", [(1, 1), (4, 32), (7, 7), (12, 5)])
def test_narrow_product_is_the_product(a_width, b_width):
    m = Module()
    a, b, product = Signal(a_width), Signal(b_width), Signal(a_width + b_width)
    m.d.comb += product.eq(narrow_product(a, b))
    rng = np.random.default_rng(a_width * 100 + b_width)
    pairs = [(x, y) for x in (0, 1, (1 << a_width) - 1) for y in (0, 1, (1 << b_width) - 1)]
    pairs += [(int(x), int(y)) for x, y in zip(rng.integers(0, 1 << a_width, 40), rng.integers(0, 1 << b_width, 40))]
    assert _evaluated(m, (a, b), product, pairs) == [x * y for x, y in pairs]
    assert len(narrow_product(a, b)) >= a_width + b_width


def test_narrow_product_refuses_signed_operands():
    with pytest.raises(TypeError, match="unsigned"):
        narrow_product(Signal(signed(4)), Signal(4))


@pytest.mark.parametrize("constant", [0, 1, 17, 129, 255])
def test_times_constant_is_the_product(constant):
    m = Module()
    value, product = Signal(9), Signal(17)
    m.d.comb += product.eq(times_constant(value, constant))
    values = [0, 1, 2, 255, 511, 300]
    assert _evaluated(m, (value,), product, [(x,) for x in values]) == [x * constant for x in values]


@pytest.mark.parametrize("width", [1, 2, 5, 8, 48, 67])
def test_bit_length_and_highest_bit_are_pythons(width):
    m = Module()
    value, length, highest = Signal(width), Signal(range(width + 1)), Signal(range(max(width, 2)))
    m.d.comb += [length.eq(bit_length(m, value, "length")), highest.eq(highest_bit(m, value, "highest"))]
    rng = np.random.default_rng(width)
    values = [0, 1, (1 << width) - 1] + [1 << b for b in range(width)] + [(1 << b) - 1 for b in range(1, width)]
    values += [int(v) >> int(s) for v, s in zip(rng.integers(0, 1 << min(width, 62), 40), rng.integers(0, width, 40))]
    assert _evaluated(m, (value,), length, [(x,) for x in values]) == [x.bit_length() for x in values]
    assert _evaluated(m, (value,), highest, [(x,) for x in values]) == [max(x.bit_length() - 1, 0) for x in values]


def test_radix4_step_is_two_steps_of_long_division():
    """Every divisor of 6 bits and every remainder below twice it: the two bits ⌊2R / d⌋, what is left after them
    and after the high bit alone, against Python's divmod."""
    width = 6
    m = Module()
    remainder, divisor, triple = Signal(width + 1), Signal(width), Signal(width + 2)
    high, low, rest, half_rest = radix4_step(m, remainder, divisor, triple, "step")
    out = Signal(2 + (width + 1) + (width + 2))
    m.d.comb += out.eq(Cat(high, low, rest[:width + 1], half_rest[:width + 2]))
    cases = [(r, d, 3 * d) for d in range(1, 1 << width) for r in range(2 * d)]
    got = _evaluated(m, (remainder, divisor, triple), out, cases)
    expected = []
    for r, d, _ in cases:
        q, left = divmod(2 * r, d)
        first = r >= d
        expected.append(first | (q & 1) << 1 | left << 2 | 2 * (r - first * d) << (width + 3))
    assert got == expected


@pytest.mark.parametrize("cap", [1, 4, 21])
def test_capped_power_of_two(cap):
    m = Module()
    exponent, power = Signal(6), Signal(cap + 1)
    m.d.comb += power.eq(capped_power_of_two(exponent, cap))
    assert _evaluated(m, (exponent,), power, [(e,) for e in range(64)]) == [1 << min(e, cap) for e in range(64)]


@pytest.mark.parametrize("width, values", [(6, range(-32, 32)),
                                           (40, [-(1 << 39), -(1 << 39) + 1, -(1 << 20) - 1, -(1 << 20), -1, 0, 1,
                                                 (1 << 20) - 1, 1 << 20, (1 << 39) - 1])])
def test_beyond_is_the_saturation_at_plus_and_minus_a_power_of_two(width, values):
    """`beyond(v, bits_from(p, W − 1))` is (v ≥ 2^p, v < −2^p) for every exponent up to past the value's width
    (the LayerNorm's saturation, its exponent sh + b − 1 from the command)."""
    m = Module()
    value, exponent, flags = Signal(signed(width)), Signal(7), Signal(2)
    m.d.comb += flags.eq(Cat(*beyond(value, bits_from(exponent, width - 1))))
    cases = [(v, p) for v in values for p in range(width + 3)]
    assert _evaluated(m, (value, exponent), flags, cases) == [(v >= 1 << p) | (v < -(1 << p)) << 1 for v, p in cases]
