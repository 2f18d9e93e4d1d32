"""Small arithmetic shared by the units: field widths and the one rounding of the integer path."""

from __future__ import annotations

from amaranth import Cat, Const, Mux, Signal, Value, signed

__all__ = ["index_bits", "address_bits", "at_least", "at_most", "capped_power_of_two", "bits_from", "beyond",
           "half_minus_one", "kept_bit", "kept_byte", "kept_bit_of_byte", "rounding_sum", "round_shift", "shift_right",
           "times_constant", "narrow_product", "bit_length", "highest_bit", "tree_sum", "radix4_step"]


def index_bits(count: int) -> int:
    """Bits of a field that holds 0 … count − 1 (at least one)."""
    return max(1, (count - 1).bit_length())


def address_bits(depth: int) -> int:
    """Address bits of a `lib.memory.Memory` of `depth` words (0 for one word)."""
    return (depth - 1).bit_length()


def at_least(value, bound: int):
    """value ≥ `bound` (a constant) for an unsigned value, as a match against a few prefix patterns: LUTs, no
    comparator's carry chain."""
    value = Value.cast(value)
    width = len(value)
    if bound <= 0:
        return Const(1)
    if bound >= 1 << width:
        return Const(0)
    patterns, low = [], bound
    while low < 1 << width:            # [low, 2^width) as aligned blocks, each a prefix pattern
        size = low & -low if low else 1 << width
        while low + size > 1 << width:
            size >>= 1
        free = size.bit_length() - 1
        patterns.append(format(low >> free, f"0{width - free}b") + "-" * free if width > free else "-" * width)
        low += size
    return value.matches(*patterns)


def at_most(value, limit: int):
    """min(value, `limit`) for an unsigned value and a constant limit, without a comparator's carry chain."""
    return Mux(at_least(value, limit + 1), limit, value)


def capped_power_of_two(exponent, cap: int):
    """2^min(exponent, cap), `cap` + 1 bits: a threshold 2^e that, capped just past a sum's range, never fires
    there."""
    return Const(1, cap + 1) << at_most(exponent, cap)


def bits_from(exponent, width: int):
    """A `width`-bit mask of the bits at and above `exponent` (bit i: exponent ≤ i; none once exponent ≥ width),
    a thermometer code of the exponent: what `beyond` takes."""
    return Cat(*(~at_least(exponent, i + 1) for i in range(width)))


def beyond(value, mask):
    """(value ≥ 2^p, value < −2^p) for a signed `value` of W bits and `mask` = `bits_from(p, W − 1)`: the
    saturation of a value to ±2^p by an OR and an AND of its bits, no comparator's carry chain. Neither holds
    for p ≥ W − 1, where ±2^p is past the value's range."""
    value = Value.cast(value)
    body, sign = value[:-1], value[-1]
    return ~sign & (body & mask).any(), sign & ~(body | ~mask).all()


def half_minus_one(shift, width: int = 64):
    """2^(shift−1) − 1 (0 for shift 0), its low `width` bits: with the lowest kept bit, what
    `golden.ops.round_shift` adds before the arithmetic shift so that it rounds half to even. Bit i is
    shift ≥ i + 2: a thermometer code, a small function of the shift per bit."""
    shift = Value.cast(shift)
    return Cat(*(at_least(shift, i + 2) for i in range(width)))


def kept_bit(value, shift):
    """Bit `shift` of `value` (0 for shift 0; the sign past the top bit): the lowest bit `round_shift` keeps,
    which decides a tie towards even."""
    value, shift = Value.cast(value), Value.cast(shift)
    beyond = value[-1] if value.shape().signed else 0
    offset = shift[:index_bits(len(value))]
    return Mux(shift == 0, 0, Mux(shift >= len(value), beyond, value.bit_select(offset, 1)))


def kept_byte(value, shift):
    """The first of two steps of `kept_bit` for a 6-bit `shift`: the byte of `value` (sign-extended to 64 bits)
    that holds bit `shift`. `kept_bit_of_byte` picks the bit from it a register later."""
    value, shift = Value.cast(value), Value.cast(shift)
    sign = value[-1] if value.shape().signed else Const(0)
    return Cat(value, sign.replicate(max(0, 64 - len(value)))).word_select(shift[3:6], 8)


def kept_bit_of_byte(byte, shift):
    """The second step: bit `shift` of the value from its `kept_byte` (0 for shift 0), as `kept_bit` gives it."""
    shift = Value.cast(shift)
    return Mux(shift == 0, 0, Value.cast(byte).bit_select(shift[:3], 1))


def rounding_sum(value, shift, half=None):
    """value + 2^(shift−1) − 1 + (bit `shift` of value): `round_shift` before its final shift, for callers that
    saturate against thresholds and keep only a few bits of the shift. `half` is 2^(shift−1) − 1 when the
    caller holds it in a register (set per command or per row), so the per-element logic is one adder and a
    bit select rather than a decoder and a barrel shifter."""
    return value + (half_minus_one(shift) if half is None else half) + kept_bit(value, shift)


def round_shift(value, shift, half=None):
    """`golden.ops.round_shift` in logic: `value` / 2^`shift` rounded half to even (arithmetic for signed
    values), `shift` a signal or a constant up to 63; `half` as in `rounding_sum`."""
    return rounding_sum(value, shift, half) >> Value.cast(shift)


def _highest(bits):
    """(any bit of `bits` set, the index of the highest set bit): a priority encoder as a tree (log₂ of the width
    levels of 2:1 multiplexers beside the OR tree that says which half holds the top bit), not a chain."""
    if len(bits) == 1:
        return bits[0], Const(0, 1)
    half = 1 << ((len(bits) - 1).bit_length() - 1)
    (low_any, low_top), (high_any, high_top) = _highest(bits[:half]), _highest(bits[half:])
    return low_any | high_any, Mux(high_any, half | high_top, low_top)


def bit_length(m, value, name: str) -> Signal:
    """The bit length of an unsigned `value` (0 for 0), `golden.ops.bit_length` in logic, added to `m`'s
    combinational domain under its current conditions (`_highest`'s tree, then one adder)."""
    value = Value.cast(value)
    length = Signal(range(len(value) + 1), name=name)
    found, index = _highest(value)
    m.d.comb += length.eq(Mux(found, index + 1, 0))
    return length


def highest_bit(m, value, name: str) -> Signal:
    """bit_length(`value`) − 1 for a `value` other than 0 (0 for 0): `_highest`'s tree alone, no adder."""
    value = Value.cast(value)
    index = Signal(range(max(len(value), 2)), name=name)
    m.d.comb += index.eq(_highest(value)[1])
    return index


def radix4_step(m, remainder, divisor, triple, name: str):
    """One cycle of a restoring division, two quotient bits one subtraction deep (radix 4), its differences added
    to `m`'s combinational domain: with the unsigned remainder R < 2·`divisor`, the bits (high, low) are
    ⌊2R / divisor⌋, from 2R − divisor, 2R − 2·divisor and 2R − `triple` (3·divisor, best from a register) side by
    side. Returns (high, low, rest, half_rest): rest = 2R − (2·high + low)·divisor < divisor, the next cycle's
    R being 2·rest; half_rest = 2·(R − high·divisor), the next R after the high bit alone."""
    doubled = Cat(Const(0, 1), remainder)
    rests = [Signal(signed(len(doubled) + 1), name=f"{name}_rest{j}") for j in (1, 2, 3)]
    m.d.comb += [rest.eq(doubled - subtrahend)
                 for rest, subtrahend in zip(rests, (divisor, Cat(Const(0, 1), divisor), triple))]
    fit1, fit2, fit3 = (~rest[-1] for rest in rests)          # 2R ≥ j · divisor
    high, low = fit2, fit3 | (fit1 & ~fit2)
    rest = Mux(fit3, rests[2], Mux(fit2, rests[1], Mux(fit1, rests[0], doubled)))
    return high, low, rest, Mux(high, rests[1], doubled)


def tree_sum(values):
    """The sum of `values` as a balanced adder tree (log depth, where `sum()` would chain them)."""
    values = list(values)
    while len(values) > 1:
        values = [a + b for a, b in zip(values[::2], values[1::2])] + ([values[-1]] if len(values) % 2 else [])
    return values[0]


def shift_right(value, amount, width: int):
    """The low `width` bits of `value` >> `amount` (arithmetic for a signed value), as a logarithmic shifter
    that carries only the bits the output can still reach: after the stage of amount bit k, `width` + 2^k − 1
    bits. About 6·width + 63 two-input multiplexers for a 6-bit amount, where Yosys's own shifter of a wide
    value builds the whole width at every stage. Each stage is a shift by 0 or 2^k (one use of the stage
    before: a `Mux` of two would copy the expression of `value` into the netlist twice a stage, 2^6 times)."""
    value, amount = Value.cast(value), Value.cast(amount)
    current = value
    for k in reversed(range(len(amount))):
        step = 1 << k
        current = (current >> Cat(Const(0, k), amount[k]))[:width + step - 1]
        if value.shape().signed:
            current = current.as_signed()
    return current[:width]


def times_constant(value, constant: int):
    """`value` · `constant` (a non-negative integer) as a sum of shifted copies: adders, not a multiplier."""
    value = Value.cast(value)
    terms = [value << bit for bit in range(constant.bit_length()) if constant >> bit & 1]
    return tree_sum(terms) if terms else Const(0)


def narrow_product(a, b):
    """`a` · `b` of two unsigned values as a sum of the wider one shifted by each set bit of the narrower: adders,
    not a multiplier block. For address and length arithmetic on instruction fields, so that the multiplier
    blocks stay with the arithmetic the fit plan counts them for (docs/architecture.md, section 9)."""
    a, b = Value.cast(a), Value.cast(b)
    if a.shape().signed or b.shape().signed:
        raise TypeError("narrow_product takes unsigned operands")
    if len(a) > len(b):
        a, b = b, a
    terms = [Mux(a[bit], b << bit, 0) for bit in range(len(a))]
    return tree_sum(terms) if terms else Const(0)
