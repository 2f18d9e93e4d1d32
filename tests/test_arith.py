"""The two-step kept bit against the one-step `kept_bit`: every shift 0 … 63, extreme and random values."""

import numpy as np
from amaranth import Module, Signal, signed
from amaranth.sim import Simulator

from hw.common.arith import kept_bit, kept_bit_of_byte, kept_byte


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
