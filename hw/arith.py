"""Small arithmetic shared by the units: field widths and the one rounding of the integer path."""

from __future__ import annotations

from amaranth import Const, Mux, Signal, Value

__all__ = ["index_bits", "half_minus_one", "rounding_sum", "round_shift", "bit_length", "tree_sum"]


def index_bits(count: int) -> int:
    """Bits of a field that holds 0 … count − 1 (at least one)."""
    return max(1, (count - 1).bit_length())


def half_minus_one(shift):
    """2^(shift−1) − 1 (0 for shift 0): with the lowest kept bit, what `golden.ops.round_shift` adds before
    the arithmetic shift so that it rounds half to even."""
    shift = Value.cast(shift)
    return Mux(shift == 0, 0, (Const(1, 64) << (shift - 1).as_unsigned()[:len(shift)]) - 1)


def rounding_sum(value, shift, half=None):
    """value + 2^(shift−1) − 1 + (bit `shift` of value): `round_shift` before its final shift, for callers that
    saturate against thresholds and keep only a few bits of the shift. `half` is 2^(shift−1) − 1 when the
    caller holds it in a register (set per command or per row), so the per-element logic is one adder and a
    bit select rather than a decoder and a barrel shifter."""
    value, shift = Value.cast(value), Value.cast(shift)
    beyond = value[-1] if value.shape().signed else 0      # the sign, for shifts past the top bit
    offset = shift[:index_bits(len(value))]
    kept = Mux(shift == 0, 0, Mux(shift >= len(value), beyond, value.bit_select(offset, 1)))
    return value + (half_minus_one(shift) if half is None else half) + kept


def round_shift(value, shift, half=None):
    """`golden.ops.round_shift` in logic: `value` / 2^`shift` rounded half to even (arithmetic for signed
    values), `shift` a signal or a constant up to 63; `half` as in `rounding_sum`."""
    return rounding_sum(value, shift, half) >> Value.cast(shift)


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
