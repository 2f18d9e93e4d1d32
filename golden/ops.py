"""The integer operations of M³ViT, exactly as the hardware computes them (see docs/numerics.md).

Every function here takes and returns integer NumPy arrays only (a dtype guard rejects anything else), and
each is the single definition used by the whole-model golden path and by the hardware tests. Intermediate
values are int64; the docstrings give the widths the hardware needs.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = [
    "integer_only", "bit_length", "isqrt", "round_shift", "saturate", "requantize", "quantize_multiplier",
    "exact_matmul", "layernorm", "exp2_lut", "exp_neg", "softmax_rows", "row_multipliers", "gelu",
    "route", "route_winners", "gate_weights", "gate_weighted", "combine", "upsample2x", "conv3x3", "im2col3x3",
    "patches",
    "LN_FRACTION_BITS", "LN_NORM_BITS", "GELU_STEP_BITS", "GELU_TABLE", "GATE_BITS", "ATTENTION_EXP_BITS",
    "ATTENTION_P_MAX", "ATTENTION_TABLE", "ATTENTION_TABLE_SHIFT", "ROUTER_EXP_BITS", "ROUTER_TABLE",
    "COMBINE_FRACTION_BITS", "RESIDUAL_BITS", "MULTIPLIER_BITS", "SHIFT_BITS", "MAX_SHIFT", "FRACTION_FIELD_BITS",
    "MAX_FRACTION_BITS",
]

MULTIPLIER_BITS = 15          # requantization multipliers lie in [2^14, 2^15): 16-bit signed, always positive
SHIFT_BITS, MAX_SHIFT = 6, 62  # a requantization shift: 0…62 in 6 bits
FRACTION_FIELD_BITS, MAX_FRACTION_BITS = 4, 15   # GELU's input format Q.f, 5 ≤ f ≤ 15, in 4 bits
LN_FRACTION_BITS = 12         # normalised LayerNorm value x̂ in Q.12
LN_NORM_BITS = 31             # 1/sqrt(v) as r · 2^-(31 + e)
ATTENTION_EXP_BITS = 6        # fraction bits of the attention softmax's base-2 exponent (a 64-entry table)
ATTENTION_P_MAX = 127         # unnormalised attention probabilities: the row maximum is 127
ROUTER_EXP_BITS = 8           # fraction bits of the router softmax's base-2 exponent (a 256-entry table)
GATE_BITS = 15                # gate weights in unsigned Q1.15: 1.0 is 2^15
GELU_STEP_BITS = 5            # the GELU correction table has a step of 1/32
COMBINE_FRACTION_BITS = 2     # expert outputs enter the combine at a quarter of the residual's step
RESIDUAL_BITS = 16            # the residual stream, LayerNorm's input and the router's input (section 1)


def integer_only(function):
    """Reject any NumPy array argument or result whose dtype is not an integer: no float in the path."""

    def check(value, what):
        if isinstance(value, np.ndarray) and not np.issubdtype(value.dtype, np.integer):
            raise TypeError(f"{function.__name__}: {what} has dtype {value.dtype}; the integer path takes "
                            f"integer arrays only")
        if isinstance(value, (float, np.floating)):
            raise TypeError(f"{function.__name__}: {what} is a float ({value!r}); the integer path takes "
                            f"integers only")
        if isinstance(value, (tuple, list)):
            for item in value:
                check(item, what)

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        for index, value in enumerate(args):
            check(value, f"argument {index}")
        for name, value in kwargs.items():
            check(value, f"argument {name}")
        result = function(*args, **kwargs)
        check(result, "the result")
        return result

    guarded.integer_only = True
    return guarded


@integer_only
def bit_length(x: np.ndarray) -> np.ndarray:
    """Elementwise bit length of non-negative int64 values (0 for 0)."""
    x = np.asarray(x, dtype=np.int64)
    length = np.zeros(x.shape, dtype=np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        wide = (x >> (length + step)) > 0
        length += step * wide
    return length + (x > 0)


@integer_only
def isqrt(n: np.ndarray) -> np.ndarray:
    """Elementwise floor(sqrt(n)) of non-negative int64 values, by integer Newton iteration."""
    n = np.asarray(n, dtype=np.int64)
    if (n < 0).any():
        raise ValueError("isqrt of a negative value")
    x = np.left_shift(np.int64(1), (bit_length(n) + 1) // 2)  # ≥ sqrt(n)
    while True:
        y = (x + n // np.maximum(x, 1)) // 2
        if not (y < x).any():
            return np.where(n == 0, 0, x)
        x = np.minimum(x, y)


@integer_only
def round_shift(x: np.ndarray, shift) -> np.ndarray:
    """x / 2^shift rounded half to even (shift ≥ 0, a scalar or broadcast elementwise): the one rounding of
    the integer path. As hardware does it: add 2^(shift−1) − 1 plus the lowest kept bit, shift arithmetically.
    Computed in int64, or in int32 for int32 input whose magnitudes the caller keeps below 2^30."""
    x = np.asarray(x)
    if x.dtype != np.int32:
        x = x.astype(np.int64)
    if np.ndim(shift) == 0:
        shift = int(shift)
        if shift < 0:
            raise ValueError("round_shift by a negative amount")
        if shift == 0:
            return x
        return (x + ((1 << (shift - 1)) - 1) + ((x >> shift) & 1)) >> shift
    shift = np.asarray(shift, dtype=np.int64)
    if (shift < 0).any():
        raise ValueError("round_shift by a negative amount")
    if (shift == 0).any():
        return np.where(shift == 0, x, round_shift(x, np.maximum(shift, 1)))
    return (x + ((np.int64(1) << (shift - 1)) - 1) + ((x >> shift) & 1)) >> shift


@integer_only
def saturate(x: np.ndarray, bits: int, *, lower: int | None = None) -> np.ndarray:
    """Clamp to the signed `bits`-bit range (or to [lower, max]) and return the narrowest NumPy dtype."""
    high = (1 << (bits - 1)) - 1
    low = -(1 << (bits - 1)) if lower is None else lower
    dtype = np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32 if bits <= 32 else np.int64
    return np.clip(np.asarray(x), low, high).astype(dtype)


@integer_only
def requantize(acc: np.ndarray, multiplier, shift, bits: int = 8, *, lower: int | None = None) -> np.ndarray:
    """saturate(round_shift(acc · multiplier, shift), bits): the single requantization of the integer path.

    `acc` is an int32 accumulator (int64 allowed for wider sums), `multiplier` in [2^14, 2^15) and `shift`
    scalars or arrays broadcast against `acc` (per output channel: shape [N]; per row: shape [M, 1]).
    `lower` = 0 fuses ReLU. The product needs 32 + 16 = 48 bits.
    """
    product = np.asarray(acc, dtype=np.int64) * np.asarray(multiplier, dtype=np.int64)
    return saturate(round_shift(product, shift), bits, lower=lower)


def quantize_multiplier(real: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, shift) with multiplier in [2^14, 2^15) and multiplier · 2^-shift ≈ `real` > 0 (relative
    error ≤ 2^-15). Used by the quantizer, never during inference."""
    real = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real <= 0):
        raise ValueError(f"requantization scale must be finite and positive, got {real}")
    exponent = np.floor(np.log2(real)).astype(np.int64)
    shift = MULTIPLIER_BITS - 1 - exponent
    multiplier = np.round(real * np.exp2(shift.astype(np.float64))).astype(np.int64)
    carry = multiplier >= (1 << MULTIPLIER_BITS)
    multiplier = np.where(carry, multiplier >> 1, multiplier)
    shift = np.where(carry, shift - 1, shift)
    if np.any(shift < 0) or np.any(shift > MAX_SHIFT):
        raise ValueError(f"requantization scale {real} is out of the representable range")
    return multiplier, shift


_FLOAT32_EXACT = 1 << 24


def _magnitude(array: np.ndarray) -> int:
    """max |x| of an integer array, as a Python int (no widened copy)."""
    return max(-int(array.min()), int(array.max())) if array.size else 0


@integer_only
def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact integer product a @ b (batched like np.matmul) as int64.

    NumPy has no fast integer matrix product, so this runs float32 BLAS on slices of K short enough that
    every partial sum is an integer below 2^24 in magnitude (exactly representable, whatever the summation
    order), then adds the slices in int64. The bound is asserted from the operands' actual maxima.
    """
    a, b = np.asarray(a), np.asarray(b)
    k = a.shape[-1]
    if b.shape[-2] != k:
        raise ValueError(f"exact_matmul: shapes {a.shape} and {b.shape} do not chain")
    largest = _magnitude(a) * _magnitude(b)
    if largest == 0:
        return np.zeros(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]), np.int64)
    step = max(1, (_FLOAT32_EXACT - 1) // largest)
    assert step * largest < _FLOAT32_EXACT
    af, bf = a.astype(np.float32), b.astype(np.float32)
    total = None
    for start in range(0, k, step):
        part = np.matmul(af[..., start:start + step], bf[..., start:start + step, :]).astype(np.int64)
        total = part if total is None else total + part
    return total


@integer_only
def layernorm(x: np.ndarray, eps: int, outputs) -> list[np.ndarray]:
    """Integer LayerNorm over the last axis of int16 rows `x` [..., D].

    S = Σx, Q = Σx², v = D·Q − S² + eps (= D²·(variance + ε) in the input's units; eps ≥ 1);
    e = max(0, ⌈(bitlen(v) − 32)/2⌉), r = isqrt(2^62 // (v >> 2e)) so 1/sqrt(v) ≈ r · 2^-(31+e);
    x̂ = round_shift((D·x − S) · r, 31 + e − 12) in Q.12 (|x̂| ≤ sqrt(D)·2^12, 18 bits signed);
    then for each output (gamma, beta, shift, bits): saturate(round_shift(x̂ · gamma + beta, shift), bits),
    with gamma the per-channel γ/s_out · 2^(shift−12) and beta β/s_out · 2^shift (int64).
    Returns one array per output: the array operand (int8) and, for the router, a wider copy.
    """
    x = np.asarray(x, dtype=np.int64)
    d = x.shape[-1]
    total = x.sum(-1, keepdims=True)
    squares = (x * x).sum(-1, keepdims=True)
    v = d * squares - total * total + eps
    e = np.maximum(0, (bit_length(v) - 32 + 1) // 2)
    r = isqrt(np.left_shift(np.int64(1), 62) // (v >> (2 * e)))
    normalised = round_shift((d * x - total) * r, LN_NORM_BITS + e - LN_FRACTION_BITS)
    return [saturate(round_shift(normalised * np.asarray(gamma, np.int64) + np.asarray(beta, np.int64), shift),
                     bits)
            for gamma, beta, shift, bits in outputs]


def exp2_lut(fraction_bits: int, amplitude: int) -> np.ndarray:
    """The table round(amplitude · 2^(−f / 2^fraction_bits)) for f in [0, 2^fraction_bits): a ROM constant."""
    steps = 1 << fraction_bits
    return np.array([round(amplitude * 2.0 ** (-f / steps)) for f in range(steps)], dtype=np.int64)


@integer_only
def exp_neg(d: np.ndarray, multiplier: int, shift: int, table: np.ndarray, fraction_bits: int,
            out_shift: int) -> np.ndarray:
    """amplitude · exp(−d · s) for d ≥ 0, as integers: u = round_shift(d · multiplier, shift) is d·s·log2(e)
    in Q.fraction_bits; the result is round_shift(table[u mod 2^F], out_shift + u // 2^F) (0 once the
    shift passes 62)."""
    u = round_shift(np.asarray(d, dtype=np.int64) * multiplier, shift)
    whole = u >> fraction_bits
    fraction = u & ((1 << fraction_bits) - 1)
    amount = np.minimum(out_shift + whole, 62)
    return np.where(out_shift + whole > 62, 0, round_shift(table[fraction], amount))


ATTENTION_TABLE_SHIFT = 15
ATTENTION_TABLE = exp2_lut(ATTENTION_EXP_BITS, ATTENTION_P_MAX << ATTENTION_TABLE_SHIFT)   # P before its shift: a ROM
_ROUTER_LUT_SHIFT = 15
ROUTER_TABLE = exp2_lut(ROUTER_EXP_BITS, 1 << (GATE_BITS + _ROUTER_LUT_SHIFT))   # e of the router, a ROM


@integer_only
def softmax_rows(scores: np.ndarray, multiplier: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised integer softmax of int32 score rows [..., N]: P = 127 · exp(s·(x − max)) rounded, in
    [0, 127] (int8; the row maximum is exactly 127), and the row sums S = ΣP (int32, ≥ 127). Normalisation is
    deferred to the attention·V requantization (`row_multipliers`). `multiplier`/`shift` turn a score
    difference into base-2 exponent units in Q.6 (the head scale and log2(e) folded in)."""
    scores = np.asarray(scores, dtype=np.int64)
    d = scores.max(-1, keepdims=True) - scores
    p = exp_neg(d, multiplier, shift, ATTENTION_TABLE, ATTENTION_EXP_BITS, ATTENTION_TABLE_SHIFT)
    return p.astype(np.int8), p.sum(-1).astype(np.int32)


@integer_only
def row_multipliers(sums: np.ndarray, multiplier: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row requantization (multiplier, shift) for attention·V: the static multiplier · 2^-shift (s_v/s_out)
    divided by the row's sum S: recip = 2^32 // S, p = multiplier · recip, normalised to [2^14, 2^15)."""
    sums = np.asarray(sums, dtype=np.int64)
    recip = np.left_shift(np.int64(1), 32) // sums
    product = multiplier * recip
    k = np.maximum(0, bit_length(product) - MULTIPLIER_BITS)
    rounded = round_shift(product, k)
    carry = rounded >= (1 << MULTIPLIER_BITS)
    return np.where(carry, rounded >> 1, rounded), shift + 32 - k - carry


def _gelu_table() -> np.ndarray:
    """δ(a) = ReLU(a) − GELU(a) = a·Φ(−a) at a = i/32, i in [0, 177], in Q.15 (a ROM constant)."""
    values = [i / 32 * 0.5 * math.erfc(i / 32 / math.sqrt(2)) for i in range(178)]
    return np.array([round(v * (1 << 15)) for v in values], dtype=np.int64)


GELU_TABLE = _gelu_table()


@integer_only
def gelu(z: np.ndarray, fraction_bits) -> np.ndarray:
    """GELU of int16 z in Q.fraction_bits (5 ≤ fraction_bits ≤ 15; a scalar or broadcast), same format:
    ReLU(z) − δ(|z|), δ from a 1/32-step table with linear interpolation (Edge-MoE's form), zero past 5.5."""
    z = np.asarray(z, dtype=np.int64)
    a = np.abs(z)
    step = np.asarray(fraction_bits, dtype=np.int64) - GELU_STEP_BITS
    whole = a >> step
    last = len(GELU_TABLE) - 2
    index = np.minimum(whole, last)
    fraction = np.where(whole >= last, 0, a & ((np.int64(1) << step) - 1))
    low = GELU_TABLE[index]
    delta15 = low + round_shift((GELU_TABLE[index + 1] - low) * fraction, step)
    return np.maximum(z, 0) - round_shift(delta15, 15 - np.asarray(fraction_bits, dtype=np.int64))


@integer_only
def route_winners(logits: np.ndarray, top_k: int, multiplier: int, shift: int) -> tuple[np.ndarray, ...]:
    """The first half of `route`: (expert ids [T, k] int32 best first, the winners' exponentials e [T, k], the sum
    of all E exponentials [T, 1]). Selection is on the integer logits [T, E], equal logits going to the lower
    expert index; e_j = 2^30 · exp(−(l_max − l_j)·s) (`exp_neg` with a 256-entry table)."""
    logits = np.asarray(logits, dtype=np.int64)
    ids = np.argsort(-logits, axis=-1, kind="stable")[..., :top_k]
    e = exp_neg(logits.max(-1, keepdims=True) - logits, multiplier, shift, ROUTER_TABLE, ROUTER_EXP_BITS, 0)
    return ids.astype(np.int32), np.take_along_axis(e, ids, -1), e.sum(-1, keepdims=True)


@integer_only
def gate_weights(winners: np.ndarray, total: np.ndarray, gate: str) -> np.ndarray:
    """The second half of `route`: Q1.15 gate weights [T, k] int32 of the winners' exponentials [T, k], with
    S = `total` (the sum of all E, [T, 1]) for `vmoe` or the winners' own sum for `noisy`;
    recip = 2^62 // S, g_j = round_shift(e_j · recip, 47)."""
    winners = np.asarray(winners, dtype=np.int64)
    if gate == "vmoe":
        total = np.asarray(total, dtype=np.int64)
    elif gate == "noisy":
        total = winners.sum(-1, keepdims=True)
    else:
        raise ValueError(f"gate = {gate!r}: must be 'vmoe' or 'noisy'")
    recip = np.left_shift(np.int64(1), 62) // total
    return round_shift(winners * recip, 62 - GATE_BITS).astype(np.int32)


@integer_only
def route(logits: np.ndarray, top_k: int, gate: str, multiplier: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k routing of integer logits [T, E] → (expert ids [T, k] int32 best first, gate weights [T, k] int32
    in Q1.15): `route_winners`, then `gate_weights`."""
    ids, winners, total = route_winners(logits, top_k, multiplier, shift)
    return ids, gate_weights(winners, total, gate)


@integer_only
def gate_weighted(expert_outputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One expert's term of the combine: y·g rounded to the residual's step and saturated to its format,
    sat(round_shift(y·g, 17)), for expert outputs y [..., D] at a quarter of the residual's step
    (`COMBINE_FRACTION_BITS`) and Q1.15 gate weights g [...] (one per row of y); int64."""
    products = np.asarray(expert_outputs, np.int64) * np.asarray(weights, np.int64)[..., None]
    return saturate(round_shift(products, GATE_BITS + COMBINE_FRACTION_BITS), RESIDUAL_BITS).astype(np.int64)


@integer_only
def combine(residual: np.ndarray, expert_outputs: np.ndarray, weights: np.ndarray, experts: np.ndarray,
            residual_bits: int) -> np.ndarray:
    """Each token's k expert terms added into its residual row, one at a time in ascending expert order (the
    order the accelerator runs the experts in), each addition saturated: x ← sat(x + `gate_weighted`(y, g)) for
    residual rows [T, D], expert outputs [T, k, D], Q1.15 weights [T, k] and the experts' ids [T, k]. Without
    saturation the order does not matter and the result is within k/2 residual steps of x + Σ g·y / 2^17."""
    experts = np.asarray(experts)
    terms = gate_weighted(expert_outputs, weights)
    x = np.asarray(residual, np.int64)
    tokens = np.arange(x.shape[0])
    for slot in np.argsort(experts, axis=-1, kind="stable").T:
        x = saturate(x + terms[tokens, slot], residual_bits)
    return x


@integer_only
def upsample2x(x: np.ndarray, bits: int) -> np.ndarray:
    """Bilinear ×2 of feature maps [..., H, W] (align_corners=False): each output is (9a + 3b + 3c + d)/16 of
    its four nearest inputs (edges replicated), rounded half to even once; exact integer weights."""
    x = np.asarray(x, dtype=np.int32)  # 16 · 2^15 stays far below 2^30

    def axis_taps(v, axis):
        v = np.moveaxis(v, axis, 0)
        out = np.empty((2 * v.shape[0],) + v.shape[1:], dtype=np.int32)
        np.multiply(v, 3, out=out[0::2])
        out[1::2] = out[0::2]
        out[0:1] += v[:1]
        out[2::2] += v[:-1]
        out[1:-1:2] += v[1:]
        out[-1:] += v[-1:]
        return np.moveaxis(out, 0, axis)

    if bits > 16:
        raise ValueError(f"upsample2x: bits = {bits}, at most 16")
    both = axis_taps(axis_taps(x, x.ndim - 2), x.ndim - 1)
    return saturate(round_shift(both, 4), bits)


@integer_only
def conv3x3(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The exact 3×3, stride-1, zero-padded convolution of x [C, H, W] with weight [C·9, N] (K in (channel,
    ky, kx) order, as `im2col3x3` makes the rows): int64 [H·W, N], equal to im2col3x3(x) @ weight.

    Computed tap by tap: float32 products with K = C, summed in float32 over as many taps as keep every
    partial sum below 2^24 (from the operands' actual maxima, asserted), then in float64, exact far beyond
    these sums. The hardware does the im2col product instead; the integers are the same."""
    c, h, w = x.shape
    n = weight.shape[1]
    largest = _magnitude(x) * _magnitude(weight)
    per_tap = c * largest
    assert per_tap < _FLOAT32_EXACT, "conv3x3: a tap's partial sums could exceed 2^24"
    group = max(1, (_FLOAT32_EXACT - 1) // max(per_tap, 1))  # taps summed in float32, exactly
    row = w + 2
    padded = np.zeros(((h + 2) * row + 2, c), np.float32)
    padded[:(h + 2) * row].reshape(h + 2, row, c)[1:-1, 1:-1] = x.transpose(1, 2, 0)
    taps = np.asarray(weight, np.float32).reshape(c, 9, n)
    total = np.zeros((h * row, n), dtype=np.float64)
    for first in range(0, 9, group):
        partial = None
        for tap in range(first, min(first + group, 9)):
            start = (tap // 3) * row + tap % 3
            product = padded[start:start + h * row] @ taps[:, tap]
            partial = product if partial is None else np.add(partial, product, out=partial)
        total += partial
    return total.reshape(h, row, n)[:, :w].reshape(h * w, n).astype(np.int64)


@integer_only
def im2col3x3(x: np.ndarray) -> np.ndarray:
    """Rows of a 3×3, stride-1, zero-padded convolution's matrix product: x [C, H, W] → [H·W, C·9] with K in
    (channel, ky, kx) order, matching a [C_out, C_in, 3, 3] weight reshaped to [C_out, C_in·9]."""
    c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # [C, H, W, 3, 3]
    return windows.transpose(1, 2, 0, 3, 4).reshape(h * w, c * 9)


@integer_only
def patches(image: np.ndarray, patch: int) -> np.ndarray:
    """Flattened non-overlapping patches of image [C, H, W] → [H/p · W/p, C·p·p] in (channel, y, x) order,
    row-major over the patch grid: the patch embedding's streamed operand."""
    c, h, w = image.shape
    grid = image.reshape(c, h // patch, patch, w // patch, patch)
    return grid.transpose(1, 3, 0, 2, 4).reshape((h // patch) * (w // patch), c * patch * patch)
