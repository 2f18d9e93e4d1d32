"""Small arithmetic shared by the units: field widths and the one rounding of the integer path."""

from __future__ import annotations

from amaranth import Const, Mux, Signal, Value

__all__ = ["index_bits", "half_minus_one", "round_shift", "bit_length", "tree_sum"]


def index_bits(count: int) -> int:
    """Bits of a field that holds 0 … count − 1 (at least one)."""
    return max(1, (count - 1).bit_length())


def half_minus_one(shift):
    """2^(shift−1) − 1 (0 for shift 0): with the lowest kept bit, what `golden.ops.round_shift` adds before
    the arithmetic shift so that it rounds half to even."""
    shift = Value.cast(shift)
    return Mux(shift == 0, 0, (Const(1, 64) << (shift - 1).as_unsigned()[:len(shift)]) - 1)


def round_shift(value, shift):
    """`golden.ops.round_shift` in logic: `value` / 2^`shift` rounded half to even (arithmetic for signed
    values), `shift` a signal or a constant up to 63."""
    shift = Value.cast(shift)
    kept = Mux(shift == 0, 0, (value >> shift)[0])
    return (value + half_minus_one(shift) + kept) >> shift


def bit_length(m, value, name: str) -> Signal:
    """The bit length of an unsigned `value` (0 for 0), `golden.ops.bit_length` in logic: a priority encoder
    added to `m`'s combinational domain under its current conditions."""
    length = Signal(range(len(value) + 1), name=name)
    for bit in range(len(value)):
        with m.If(value[bit]):
            m.d.comb += length.eq(bit + 1)
    return length


def tree_sum(values):
    """The sum of `values` as a balanced adder tree (log depth, where `sum()` would chain them)."""
    values = list(values)
    while len(values) > 1:
        values = [a + b for a, b in zip(values[::2], values[1::2])] + ([values[-1]] if len(values) % 2 else [])
    return values[0]
