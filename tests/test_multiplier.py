"""The registered multiplier: exact products two cycles later (cycles with `en`), and on ECP5 a MULT18X18D with its
registers."""

import numpy as np
import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.flow.export import to_rtlil
from hw.common.multiplier import Multiplier, WideMultiplier
from hw.sim import simulate
from hw.flow.synth import platform, synthesize


def _extremes(shape):
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


@pytest.mark.parametrize("component, a_shape, b_shape", [
    (Multiplier, signed(8), signed(8)), (Multiplier, unsigned(17), unsigned(17)),
    (Multiplier, signed(16), unsigned(17)), (Multiplier, signed(18), unsigned(16)),
    (WideMultiplier, unsigned(32), unsigned(16)), (WideMultiplier, signed(35), unsigned(17)),
    (WideMultiplier, signed(18), signed(18)), (WideMultiplier, unsigned(49), signed(12)),
    (WideMultiplier, unsigned(32), signed(24)), (WideMultiplier, signed(20), signed(36)),
    (WideMultiplier, signed(33), unsigned(17)),
])
@pytest.mark.parametrize("stall", [False, True])
def test_exact_products_latency_cycles_later(component, a_shape, b_shape, stall):
    rng = np.random.default_rng(a_shape.width * 100 + b_shape.width)
    a_low, a_high = _extremes(a_shape)
    b_low, b_high = _extremes(b_shape)

    def edges(low, high):            # the extremes, and a wide multiplier's slice edges
        values = (low, high, 0, -1, 1, (1 << 17) - 1, 1 << 17, -(1 << 17) - 1)
        return [value for value in values if low <= value <= high]
    pairs = [(a, b) for a in edges(a_low, a_high) for b in edges(b_low, b_high)]
    pairs += [(int(a), int(b)) for a, b in zip(rng.integers(a_low, a_high, 200, endpoint=True, dtype=np.int64),
                                                rng.integers(b_low, b_high, 200, endpoint=True, dtype=np.int64))]
    multiplier = component(a_shape, b_shape)
    seen, held = [], []

    async def testbench(ctx):
        for a, b in pairs + [(0, 0)] * component.LATENCY:
            while stall and rng.random() < 0.3:      # en low: other operands offered, the product held
                ctx.set(multiplier.en, 0)
                ctx.set(multiplier.a, int(rng.integers(a_low, a_high, endpoint=True)))
                ctx.set(multiplier.b, int(rng.integers(b_low, b_high, endpoint=True)))
                before = ctx.get(multiplier.p)
                await ctx.tick()
                held.append(ctx.get(multiplier.p) == before)
            ctx.set(multiplier.en, 1)
            ctx.set(multiplier.a, a)
            ctx.set(multiplier.b, b)
            await ctx.tick()
            seen.append(ctx.get(multiplier.p))

    simulate(multiplier, testbench)
    assert seen[component.LATENCY - 1:][:len(pairs)] == [a * b for a, b in pairs]
    assert all(held) and len(held) >= 50 * stall


class _Registered(wiring.Component):
    """Operands from registers, product into a register: the multiplier between fabric flip-flops."""
    a: In(signed(8))
    b: In(signed(8))
    p: Out(signed(16))

    def elaborate(self, platform):
        m = Module()
        m.submodules.multiplier = multiplier = Multiplier(signed(8), signed(8))
        a, b = Signal(signed(8)), Signal(signed(8))
        m.d.sync += [a.eq(self.a), b.eq(self.b), self.p.eq(multiplier.p)]
        m.d.comb += [multiplier.a.eq(a), multiplier.b.eq(b)]
        return m


def test_ecp5_uses_a_registered_mult18x18d():
    text = to_rtlil(_Registered(), "top", platform=platform("ulx3s-85f"))
    assert "MULT18X18D" in text
    for register in ("INPUTA", "INPUTB", "OUTPUT"):
        assert f'parameter \\REG_{register}_CLK "CLK0"' in text
    assert "$mul" not in text


def test_ecp5_rejects_operands_wider_than_the_dsp():
    with pytest.raises(ValueError, match="operand a signed\\(19\\): needs 19 signed bits, one MULT18X18D takes 18"):
        to_rtlil(Multiplier(signed(19), signed(8)), "top", platform=platform("ulx3s-85f"))


def test_ecp5_multiplier_is_off_the_critical_path():
    """Placed and routed: with the DSP's registers the path is flip-flop → route → DSP input register, far
    above the 125 MHz target (a bare MULT18X18D between fabric registers reaches about 150 MHz)."""
    result = synthesize(_Registered(), "top", "ulx3s-85f", 125)
    assert result.cells["MULT18X18D"] == 1 and result.cells["LUT4"] == 0
    assert result.fmax_mhz > 300


def test_wide_multiplier_maps_to_registered_dsp_slices():
    # 17-bit unsigned slices, a signed operand's top slice up to 18 bits
    for a_shape, b_shape, blocks in ((unsigned(40), unsigned(16), 3), (unsigned(32), signed(24), 4),
                                     (signed(18), unsigned(17), 1), (signed(35), unsigned(17), 2)):
        text = to_rtlil(WideMultiplier(a_shape, b_shape), "top", platform=platform("ulx3s-85f"))
        assert text.count('cell \\MULT18X18D') == blocks and "$mul" not in text
