"""Every integer operation: exact semantics (hypothesis against Python's exact rationals), extremes, and its
error against the float operation within the bound docs/numerics.md derives."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golden import ops
from golden.config import MODEL_PRESETS, largest_dot_product

OPERATIONS = ["bit_length", "isqrt", "round_shift", "saturate", "requantize", "exact_matmul", "layernorm",
              "exp_neg", "softmax_rows", "row_multipliers", "gelu", "route", "combine", "upsample2x", "conv3x3",
              "im2col3x3", "patches"]


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_is_dtype_guarded(name):
    function = getattr(ops, name)
    assert getattr(function, "integer_only", False), f"{name} has no integer-only guard"
    with pytest.raises(TypeError, match="integer"):
        function(np.zeros((2, 2), dtype=np.float32), *([1] * (function.__code__.co_argcount - 1)))


def test_guard_rejects_float_scalars_and_nested_arrays():
    with pytest.raises(TypeError, match="float"):
        ops.requantize(np.zeros(3, np.int32), 0.5, 3)
    with pytest.raises(TypeError, match="dtype float64"):
        ops.layernorm(np.zeros((1, 4), np.int16), 1, [(np.ones(4), np.zeros(4, np.int64), 12, 8)])


def _round_half_even(value: Fraction) -> int:
    return round(value)  # Python rounds Fractions half to even


@settings(max_examples=400, deadline=None)
@given(st.integers(-(1 << 56), 1 << 56), st.integers(0, 40))
def test_round_shift_is_round_half_even(x, shift):
    assert int(ops.round_shift(np.int64(x), shift)) == _round_half_even(Fraction(x, 1 << shift))
    assert int(ops.round_shift(np.array([x]), np.array([shift]))[0]) == _round_half_even(Fraction(x, 1 << shift))


def test_round_shift_ties():
    x = np.array([1, 3, 5, -1, -3, -5, 2, -2])
    assert ops.round_shift(x, 1).tolist() == [0, 2, 2, 0, -2, -2, 1, -1]


@settings(max_examples=400, deadline=None)
@given(st.integers(-(1 << 31), (1 << 31) - 1), st.integers(1 << 14, (1 << 15) - 1), st.integers(1, 46),
       st.sampled_from([8, 16, 18]))
def test_requantize_exact_with_saturation(acc, multiplier, shift, bits):
    expected = _round_half_even(Fraction(acc * multiplier, 1 << shift))
    expected = max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, expected))
    assert int(ops.requantize(np.array([acc]), multiplier, shift, bits)[0]) == expected


def test_requantize_saturates_and_relu():
    acc = np.array([-(1 << 31), -1000, -1, 0, 1, 1000, (1 << 31) - 1])
    out = ops.requantize(acc, 1 << 14, 14, 8)
    assert out.dtype == np.int8 and out.tolist() == [-128, -128, -1, 0, 1, 127, 127]
    assert ops.requantize(acc, 1 << 14, 14, 8, lower=0).tolist() == [0, 0, 0, 0, 1, 127, 127]


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-12, 32767.0))
def test_quantize_multiplier_precision(real):
    multiplier, shift = ops.quantize_multiplier(real)
    assert (1 << 14) <= multiplier < (1 << 15)
    assert abs(multiplier * 2.0 ** -int(shift) / real - 1) <= 2 ** -15


def test_quantize_multiplier_rejects_bad_scales():
    for bad in (0.0, -1.0, float("nan"), float("inf"), 32768.0):
        with pytest.raises(ValueError):
            ops.quantize_multiplier(bad)


@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_exact_matmul_at_the_largest_k_of_every_preset(name):
    k, _ = largest_dot_product(MODEL_PRESETS[name])
    rng = np.random.default_rng(k)
    for a, b in [(np.full((3, k), -128, np.int8), np.full((k, 5), -128, np.int8)),       # the largest sum
                 (np.full((3, k), 127, np.int8), np.full((k, 5), -128, np.int8)),
                 (rng.integers(-128, 128, (7, k), dtype=np.int8), rng.integers(-128, 128, (k, 9), dtype=np.int8))]:
        assert np.array_equal(ops.exact_matmul(a, b), a.astype(np.int64) @ b.astype(np.int64))


def test_exact_matmul_wide_and_batched_operands():
    rng = np.random.default_rng(0)
    a = rng.integers(-32768, 32768, (2, 5, 384), dtype=np.int16)   # the router's int16 input
    b = rng.integers(-128, 128, (2, 384, 16), dtype=np.int8)
    assert np.array_equal(ops.exact_matmul(a, b), a.astype(np.int64) @ b.astype(np.int64))
    p = rng.integers(0, 128, (3, 1201, 1201), dtype=np.int8)        # attention·V at m3vit-small's T
    v = np.full((3, 1201, 32), -128, np.int8)
    assert np.array_equal(ops.exact_matmul(p, v), p.astype(np.int64) @ v.astype(np.int64))


@pytest.mark.parametrize("c, h, w, n, low", [(3, 6, 7, 4, -128), (256, 8, 16, 32, 0), (384, 4, 5, 8, -128)])
def test_conv3x3_equals_im2col_product(c, h, w, n, low):
    rng = np.random.default_rng(c)
    x = rng.integers(low, 128, (c, h, w), dtype=np.int8)
    weight = rng.integers(-128, 128, (c * 9, n), dtype=np.int8)
    assert np.array_equal(ops.conv3x3(x, weight), ops.im2col3x3(x).astype(np.int64) @ weight.astype(np.int64))


def test_im2col_and_patches_by_hand():
    x = np.arange(2 * 3 * 3, dtype=np.int16).reshape(2, 3, 3)
    rows = ops.im2col3x3(x)
    assert rows.shape == (9, 18)
    centre = rows[4].reshape(2, 3, 3)                     # the centre pixel sees the whole map
    assert np.array_equal(centre, x)
    corner = rows[0].reshape(2, 3, 3)                     # top-left: zero padding above and left
    assert corner[0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 3, 4]]
    image = np.arange(2 * 4 * 4, dtype=np.int8).reshape(2, 4, 4)
    patch = ops.patches(image, 2)
    assert patch.shape == (4, 8) and patch[1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]


def test_isqrt_and_bit_length():
    values = np.array([0, 1, 2, 3, 4, 15, 16, 17, (1 << 62) - 1, 1 << 61, 10 ** 18])
    assert ops.isqrt(values).tolist() == [math.isqrt(int(v)) for v in values]
    assert ops.bit_length(values).tolist() == [int(v).bit_length() for v in values]


def _layernorm_params(out_scale, gamma, beta):
    """As the quantizer sets them: the largest shift that keeps every γ multiplier within 16 bits."""
    g = gamma / out_scale
    shift = ops.LN_FRACTION_BITS + int(math.floor(math.log2((2 ** 15 - 1) / np.abs(g).max())))
    return (np.round(g * 2.0 ** (shift - ops.LN_FRACTION_BITS)).astype(np.int32),
            np.round(beta / out_scale * 2.0 ** shift).astype(np.int64), shift)


@pytest.mark.parametrize("d, spread", [(32, 30), (192, 3000), (384, 30000), (192, 2)])
def test_layernorm_against_float(d, spread):
    rng = np.random.default_rng(d)
    x = np.clip(rng.normal(0, spread, (64, d)) + rng.normal(0, spread, (64, 1)), -32768, 32767).astype(np.int16)
    x[0] = 32767                                           # a constant row: variance 0, only eps
    x[1, :] = -32768
    x[1, 0] = 32767                                        # one huge value
    gamma, beta = rng.uniform(0.5, 1.5, d), rng.uniform(-0.5, 0.5, d)
    scale = 6 / 127
    g, b, shift = _layernorm_params(scale, gamma, beta)
    (y,) = ops.layernorm(x, 1, [(g, b, shift, 8)])
    xf = x.astype(np.float64)
    mean, var = xf.mean(-1, keepdims=True), xf.var(-1, keepdims=True)
    normalised = (xf - mean) / np.sqrt(var + 1 / d ** 2)
    reference = (normalised * gamma + beta) / scale
    inside = np.abs(reference) < 127
    # docs/numerics.md: x̂ to 2^-13 plus 2^-15 relative (1/σ), γ and β multipliers to half a step, then the
    # final rounding to half an output step.
    a = np.abs(normalised)
    bound = 0.5 + (0.5 + a / 8) * gamma / scale * 2.0 ** -12 + a * 2.0 ** (11 - shift) + 2.0 ** -(shift + 1)
    assert np.all(np.abs(y - reference)[inside] <= bound[inside])
    assert np.all(np.abs(y[~inside].astype(int) - np.clip(np.round(reference[~inside]), -128, 127)) <= 1)


def _gelu_float(x):
    return x * 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2))


@pytest.mark.parametrize("fraction_bits", [5, 10, 12, 15])
def test_gelu_against_float(fraction_bits):
    z = np.arange(-32768, 32768, 3 if fraction_bits > 5 else 1, dtype=np.int64)
    z = np.concatenate([z, [-32768, 32767]])
    y = ops.gelu(z, fraction_bits)
    error = np.abs(y / 2 ** fraction_bits - _gelu_float(z / 2 ** fraction_bits))
    # Table step 1/32 with linear interpolation: ≤ 1.1e-4; table entries 2^-16; two roundings to Q.f.
    assert error.max() <= 1.1e-4 + 2 ** -16 + 2 ** -fraction_bits


def test_gelu_per_expert_fraction_bits_broadcast():
    z = np.arange(-2000, 2000, 7).reshape(1, 1, -1).repeat(3, 0)
    bits = np.array([6, 10, 14])[:, None, None]
    together = ops.gelu(z, bits)
    for i, b in enumerate([6, 10, 14]):
        assert np.array_equal(together[i], ops.gelu(z[i], b))


def test_softmax_rows_against_float():
    rng = np.random.default_rng(5)
    scale = 1 / 800
    scores = rng.integers(-20000, 20000, (50, 129))
    scores[0] = 7                                          # equal values: all 127
    scores[1, 3] = 2 ** 31 - 1                             # one huge value: only it survives
    multiplier, shift = ops.quantize_multiplier(scale * math.log2(math.e) * 2 ** ops.ATTENTION_EXP_BITS)
    p, sums = ops.softmax_rows(scores, int(multiplier), int(shift))
    assert p.dtype == np.int8 and sums.dtype == np.int32
    assert (p.max(-1) == 127).all() and np.array_equal(sums, p.astype(np.int64).sum(-1))
    assert p[0].tolist() == [127] * 129 and p[1].sum() == 127
    exact = 127 * np.exp((scores - scores.max(-1, keepdims=True)) * scale)
    # Bound: exponent rounded to 2^-7 of a base-2 unit → ≤ 0.55 % relative, then rounding to an integer.
    assert np.all(np.abs(p - exact) <= 0.5 + exact * (2 ** (2 ** -7) - 1) + 1e-9)


def test_row_multipliers_divide_by_the_row_sum():
    sums = np.array([127, 128, 1000, 16383, 1201 * 127])
    multiplier, shift = 20000, 20
    m, s = ops.row_multipliers(sums, multiplier, shift)
    assert ((m >= 1 << 14) & (m < 1 << 15)).all()
    real = m * 2.0 ** -s.astype(float)
    assert np.allclose(real, multiplier * 2.0 ** -shift / sums, rtol=2 ** -14)


def _float_gates(logits, k, gate):
    order = np.argsort(-logits, kind="stable")[:k]
    e = np.exp(logits - logits.max())
    return order, (e[order] / (e.sum() if gate == "vmoe" else e[order].sum()))


@pytest.mark.parametrize("gate", ["vmoe", "noisy"])
@pytest.mark.parametrize("experts, k", [(2, 1), (4, 2), (16, 2), (16, 4), (64, 4), (4, 4)])
def test_route_against_float(gate, experts, k):
    rng = np.random.default_rng(experts * 10 + k)
    scale = 1 / 3000
    logits = rng.integers(-30000, 30000, (40, experts))
    logits[0] = 5                                          # all equal: experts 0..k−1
    logits[1] = 0
    logits[1, -1] = 1 << 40                                # one expert far ahead
    multiplier, shift = ops.quantize_multiplier(scale * math.log2(math.e) * 2 ** ops.ROUTER_EXP_BITS)
    ids, weights = ops.route(logits, k, gate, int(multiplier), int(shift))
    assert ids.shape == weights.shape == (40, k)
    assert ids[0].tolist() == list(range(k))
    assert ids[1, 0] == experts - 1 and weights[1, 0] == 1 << 15
    for row, token_ids, token_weights in zip(logits, ids, weights):
        order, reference = _float_gates(row * scale, k, gate)
        assert token_ids.tolist() == order.tolist()
        # Bound: exponent rounded to 2^-9 of a base-2 unit → ≤ 0.14 % on each e and on their sum S, so
        # ≤ 0.28 % on e/S, plus the Q1.15 rounding.
        assert np.all(np.abs(token_weights / 2 ** 15 - reference) <= 0.0028 * reference + 2 ** -15)
    if gate == "noisy":
        assert np.all(np.abs(weights.sum(-1) - (1 << 15)) <= k)


def test_route_ties_go_to_the_lower_index():
    logits = np.array([[3, 9, 9, 1, 9], [0, 0, 0, 0, 0], [-5, -5, 2, 2, -5]])
    ids, _ = ops.route(logits, 2, "vmoe", 1 << 14, 14)
    assert ids.tolist() == [[1, 2], [0, 1], [2, 3]]


def test_combine_adds_each_term_saturated_in_ascending_expert_order():
    """Each y·g rounded half to even to the residual's step (y at a quarter of it) and saturated, added into the
    residual expert by expert in ascending expert order, each sum saturated; without saturation within k/2 steps
    of x + Σ g·y / 2^17 and the same in any order."""
    rng = np.random.default_rng(3)
    k, tokens, experts = 4, 40, 9
    y = rng.integers(-(1 << 17), 1 << 17, (tokens, k, 16))
    g = rng.integers(0, (1 << 15) // k + 1, (tokens, k))
    ids = np.array([rng.permutation(experts)[:k] for _ in range(tokens)])
    x = rng.integers(-(1 << 14), 1 << 14, (tokens, 16))
    g[0], y[0], x[0] = 1 << 15, (1 << 17) - 1, 1 << 14          # a term of 2^15 saturates to 32767 on its own
    g[1], y[1, :2], x[1], ids[1] = [1 << 15, 1 << 15, 0, 0], [[(1 << 17) - 1], [-(1 << 17)]], 0, [0, 1, 2, 3]
    g[2] = 1 << 14                                              # y·g / 2^17 = y/8: ties for y ≡ 4 mod 8
    y[2] = rng.integers(-(1 << 14), 1 << 14, (k, 16)) * 8 + 4
    out = ops.combine(x, y, g, ids, 16)

    def term(t, j, c):
        return min(max(_round_half_even(Fraction(int(y[t, j, c] * g[t, j]), 1 << 17)), -32768), 32767)

    expected = np.zeros_like(x)
    for t in range(tokens):
        for c in range(16):
            value = int(x[t, c])
            for j in np.argsort(ids[t], kind="stable"):
                value = min(max(value + term(t, j, c), -32768), 32767)
            expected[t, c] = value
    assert out.dtype == np.int16 and np.array_equal(out, expected)
    assert (out[0] == 32767).all()
    assert (ops.gate_weighted(y[0, :1], g[0, :1]) == 32767).all()
    assert (out[1] == 32767 - 32768).all()                      # the first term saturated on its own
    ideal = x + (y * g[..., None]).sum(1) / (1 << 17)
    inside = (np.abs(x) + np.abs(ops.gate_weighted(y, g)).sum(1)).max(1) < 32767     # no order saturates
    inside[:2] = False
    assert inside.sum() > tokens // 2 and np.abs(out[inside] - ideal[inside]).max() <= k / 2
    permutation = rng.permutation(k)
    assert np.array_equal(ops.combine(x, y[:, permutation], g[:, permutation], ids[:, permutation], 16)[inside],
                          out[inside])


def test_combine_order_decides_under_saturation():
    """From 30000, +5000 then −5000 saturates first (32767 − 5000); −5000 first never does (30000): the
    lower expert's term goes first."""
    y = np.array([[[5000 * 4], [-5000 * 4]]])
    g = np.full((1, 2), 1 << 15)
    x = np.array([[30000]])
    assert ops.combine(x, y, g, np.array([[3, 7]]), 16).tolist() == [[27767]]
    assert ops.combine(x, y, g, np.array([[7, 3]]), 16).tolist() == [[30000]]


def test_upsample_against_bilinear():
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (3, 5, 7))
    x[0] = 127
    y = ops.upsample2x(x, 8)
    assert y.shape == (3, 10, 14) and (y[0] == 127).all()

    def reference_axis(v, axis):
        n = v.shape[axis]
        source = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, n - 1)
        t = source - low
        shape = [1] * v.ndim
        shape[axis] = -1
        return np.take(v, low, axis) * (1 - t).reshape(shape) + np.take(v, high, axis) * t.reshape(shape)

    reference = reference_axis(reference_axis(x.astype(float), 1), 2)
    assert np.abs(y - reference).max() <= 0.5
    assert np.array_equal(ops.upsample2x(np.full((1, 2, 2), -32768), 16), np.full((1, 4, 4), -32768))
