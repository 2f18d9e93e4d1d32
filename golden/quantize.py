"""The quantizer: float weights (official names, NumPy) plus calibration statistics → a `QuantizedModel`.

Weights are int8, symmetric per output channel, stored [K, N], rounded by GPTQ against the calibration's
second moments of each layer's input where calibration gives them (`rounded_weights`); biases int32 at the
accumulator's scale;
activations int8 symmetric per tensor; the residual stream int16 with one scale for the whole network; every
rescaling an integer multiplier in [2^14, 2^15) and a shift (`golden.ops.quantize_multiplier`). The statistics
come from `golden.float_model.calibrate` (clip values by tensor name); this module needs no torch.
"""

from __future__ import annotations

import math

import numpy as np

from . import ops
from .config import ModelConfig
from .quantized import QuantizedModel, bias_room

__all__ = ["quantize", "quantize_image", "rounded_weights", "QuantizationError", "BN_EPS", "LN_EPS"]

LN_EPS = 1e-6
BN_EPS = 1e-5
INT8_MAX, INT16_MAX = 127, 32767
SMOOTHING = (0.9, 0.9)    # SmoothQuant's α for LayerNorm₁ → qkv and LayerNorm₂ → fc1 (None: off)
LOG2E = math.log2(math.e)
GPTQ_DAMPING = 0.01       # added to the Gram matrix's diagonal, times its mean (GPTQ's default)
GPTQ_BLOCK = 64           # rows whose errors reach the rows below them in one matrix product


class QuantizationError(ValueError):
    """The weights or the calibration cannot be quantized (NaN/inf, no calibration data, an overflow)."""


def _scale(clip: float, top: int, what: str) -> float:
    if not math.isfinite(clip):
        raise QuantizationError(f"calibration of {what}: range is {clip} (NaN or inf in the float model)")
    return max(clip, 1e-12) / top


def _multiplier(real, what: str):
    try:
        return ops.quantize_multiplier(real)
    except ValueError as error:
        raise QuantizationError(f"{what}: {error}") from error


class _Builder:
    def __init__(self, config: ModelConfig, weights: dict[str, np.ndarray], clips: dict[str, float],
                 rounding: dict | None = None):
        self.config, self.weights, self.clips, self.rounding = config, weights, clips, rounding
        self.arrays: dict[str, np.ndarray] = {}
        self.scales: dict[str, float] = {}

    def weight(self, name: str) -> np.ndarray:
        return np.asarray(self.weights[name], dtype=np.float64)

    def clip(self, name: str) -> float:
        if name not in self.clips:
            raise QuantizationError(f"calibration has no statistics for {name}: it saw no data there")
        return self.clips[name]

    def channel_clip(self, name: str) -> np.ndarray:
        """max |x| per channel of tensor `name` (calibration's `{name}.channels`)."""
        return np.asarray(self.clip(f"{name}.channels"), dtype=np.float64)

    def gram(self, name: str, factors=1.0) -> np.ndarray | None:
        """Σ x xᵀ of tensor `name` over the calibration tokens (None if calibration gave none) for the input
        x / `factors` that weights with rows multiplied by `factors` take."""
        names = [name] if isinstance(name, str) else name
        if any(f"{n}.gram" not in self.clips for n in names):
            return None
        grams = np.stack([np.asarray(self.clips[f"{n}.gram"], dtype=np.float64) for n in names])
        for n, gram in zip(names, grams):
            if not np.all(np.isfinite(gram)):
                raise QuantizationError(f"calibration of {n}: its Gram matrix holds NaN or inf (NaN or inf in the "
                                        "float model)")
        factors = np.broadcast_to(np.asarray(factors, dtype=np.float64), grams.shape[:-1])
        rescaled = grams / (factors[..., :, None] * factors[..., None, :])
        return rescaled if not isinstance(name, str) else rescaled[0]

    def rounded(self, prefix: str, w, scale, gram) -> np.ndarray:
        """`rounded_weights`, a failure named by the layer; recorded in `rounding` if there is one."""
        try:
            result = rounded_weights(w, scale, gram)
        except np.linalg.LinAlgError as error:
            raise QuantizationError(f"{prefix}: GPTQ rounding failed on its input's Gram matrix ({error})") from None
        if self.rounding is not None:
            self.rounding[prefix] = (result, np.asarray(scale, np.float64), np.abs(w).sum(axis=-1))
        return result

    def put_linear(self, prefix: str, w: np.ndarray, b: np.ndarray, in_scale: float, out_scale: float,
                   gram: np.ndarray | None = None) -> None:
        """Store one linear layer: w float [.., K, N], b float [.., N], requantizing to `out_scale`; `gram` the
        input's second moments for `rounded_weights`."""
        column_max = np.abs(w).max(axis=-2)
        w_scale = np.where(column_max > 0, column_max / INT8_MAX, 1.0)
        wq = self.rounded(prefix, w, w_scale, gram)
        acc_scale = in_scale * w_scale
        bias = np.round(b / acc_scale)
        k = w.shape[-2]
        room = bias_room(k)
        if np.abs(bias).max(initial=0) > room:
            raise QuantizationError(f"{prefix}: a bias of {np.abs(bias).max():.0f} accumulator steps overflows "
                                    f"int32 together with K = {k} products")
        multiplier, shift = _multiplier(acc_scale / out_scale, prefix)
        self.arrays[f"{prefix}.weight"] = wq
        self.arrays[f"{prefix}.bias"] = bias.astype(np.int32)
        self.arrays[f"{prefix}.multiplier"] = multiplier.astype(np.int32)
        self.arrays[f"{prefix}.shift"] = shift.astype(np.int32)

    def put_norm(self, prefix: str, gamma: np.ndarray, beta: np.ndarray, out_scale: float) -> None:
        g = gamma / out_scale
        largest = np.abs(g).max(initial=0)
        shift = ops.LN_FRACTION_BITS + (15 if largest == 0 else int(math.floor(math.log2((2 ** 15 - 1) / largest))))
        shift = max(shift, 0)
        self.arrays[f"{prefix}.gamma"] = np.round(g * 2.0 ** (shift - ops.LN_FRACTION_BITS)).astype(np.int32)
        self.arrays[f"{prefix}.beta"] = np.round(beta / out_scale * 2.0 ** shift).astype(np.int64)
        self.arrays[f"{prefix}.shift"] = np.array(shift, np.int32)

    def put_scalars(self, prefix: str, **values) -> None:
        for name, value in values.items():
            self.arrays[f"{prefix}.{name}"] = np.asarray(value, dtype=np.int32)

    def mlp_scalars(self, fc1_max: np.ndarray, gelu_max: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
        """fc1's output (GELU's input) column by column in Q.f_c, f_c as large as keeps the column's range in
        int16; the hidden's requantization (one multiplier per MLP, over the last axis) to int8 and its scale per
        channel, 2^-f_c times one factor: a power of two per channel, folded into fc2's rows. Returns
        (f [..., h], hidden scales [..., h], (multipliers [...], shifts [...]))."""
        fraction_bits = 15 - np.maximum(0, np.ceil(np.log2(np.maximum(fc1_max, 1e-12) * 1.0001)))
        fraction_bits = np.clip(fraction_bits, ops.GELU_STEP_BITS, 15).astype(np.int64)
        largest = (gelu_max * 2.0 ** fraction_bits).max(axis=-1)
        factor = np.array([_scale(float(v), INT8_MAX, "GELU output") for v in np.ravel(largest)]).reshape(largest.shape)
        return fraction_bits, 2.0 ** -fraction_bits * factor[..., None], _multiplier(1 / factor, "GELU output")

    def put_mlp(self, fc1: str, fc2: str, scalars: str, fc1_w, fc1_b, fc2_w, fc2_b, fc1_max, gelu_max,
                in_scale: float, out_scale: float, fc1_gram=None, hidden=None) -> None:
        """An MLP (or a layer's experts, with a leading axis): fc1 into Q.f_c per column, the hidden's
        requantization, fc2 with the hidden's per-channel scales folded into its rows. `fc1_gram` is fc1's
        input's, `hidden` names the hidden tensor (one per expert) whose Gram fc2's rounding takes."""
        fraction_bits, hidden_scales, (multiplier, shift) = self.mlp_scalars(fc1_max, gelu_max)
        self.put_linear(fc1, fc1_w, fc1_b, in_scale, 2.0 ** -fraction_bits, fc1_gram)
        self.arrays[f"{fc1}.fraction_bits"] = fraction_bits.astype(np.int32)
        self.put_scalars(scalars, hidden_multiplier=multiplier, hidden_shift=shift)
        self.put_linear(fc2, fc2_w * hidden_scales[..., :, None], fc2_b, 1.0, out_scale,
                        None if hidden is None else self.gram(hidden, hidden_scales))

    def put_smoothed_norm(self, prefix: str, gamma, beta, weight_row_max: np.ndarray, alpha) -> np.ndarray:
        """A LayerNorm output feeding a matrix product, smoothed per channel (`smoothing`) and quantized to
        int8 per tensor; returns the factors s the next weights' rows take."""
        activation_max = self.channel_clip(prefix)
        factors = smoothing(activation_max, weight_row_max, alpha)
        scale = _scale(float((activation_max / factors).max()), INT8_MAX, prefix)
        self.put_norm(prefix, gamma / factors, beta / factors, scale)
        self.scales[prefix] = scale
        return factors


def rounded_weights(w: np.ndarray, scale: np.ndarray, gram: np.ndarray | None = None,
                    damping: float = GPTQ_DAMPING) -> np.ndarray:
    """int8 weights [.., K, N] for float `w` at column scales `scale` [.., N]: each rounded to nearest, or,
    given `gram` [.., K, K] (Σ x xᵀ of the layer's input over the calibration tokens, in w's row coordinates),
    by GPTQ (Frantar et al., ICLR 2023): rows rounded one at a time, the input channel with the most energy
    first, each row's rounding error passed on to the rows not yet rounded so that the calibration tokens'
    outputs change least (‖X(W − s·Ŵ)‖ over X's columns). Channels that were always 0 pass nothing on."""
    if gram is None:
        return np.clip(np.round(w / scale[..., None, :]), -INT8_MAX, INT8_MAX).astype(np.int8)
    k = w.shape[-2]
    lead = np.broadcast_shapes(w.shape[:-2], gram.shape[:-2])
    w = np.broadcast_to(w, lead + w.shape[-2:]).copy()
    scale = np.broadcast_to(scale, lead + scale.shape[-1:])
    gram = np.array(gram, dtype=np.float64)            # factored once when shared by a leading axis of w
    diagonal = np.diagonal(gram, axis1=-2, axis2=-1).copy()
    order = np.argsort(-diagonal, axis=-1, kind="stable")
    channels = np.arange(k)
    gram[..., channels, channels] = np.where(diagonal > 0, diagonal, 1.0) + damping * diagonal.mean(-1, keepdims=True)
    gram = np.take_along_axis(np.take_along_axis(gram, order[..., :, None], -2), order[..., None, :], -1)
    upper = np.swapaxes(np.linalg.cholesky(np.linalg.inv(gram)), -1, -2)    # inverse Gram = Uᵀ U
    order, upper = np.broadcast_to(order, lead + (k,)), np.broadcast_to(upper, lead + (k, k))
    w = np.take_along_axis(w, order[..., :, None], -2)
    rounded = np.empty_like(w)
    for start in range(0, k, GPTQ_BLOCK):     # within a block row by row, then the rows below in one product
        stop = min(start + GPTQ_BLOCK, k)
        errors = np.empty(lead + (stop - start, w.shape[-1]))
        for row in range(start, stop):
            rounded[..., row, :] = np.clip(np.round(w[..., row, :] / scale), -INT8_MAX, INT8_MAX)
            errors[..., row - start, :] = (w[..., row, :] - rounded[..., row, :] * scale) / upper[..., row, row, None]
            w[..., row + 1:stop, :] -= upper[..., row, row + 1:stop, None] * errors[..., row - start, None, :]
        w[..., stop:, :] -= np.swapaxes(upper[..., start:stop, stop:], -1, -2) @ errors
    result = np.empty_like(rounded)
    np.put_along_axis(result, order[..., :, None], rounded, -2)
    return result.astype(np.int8)


def smoothing(activation_max: np.ndarray, weight_row_max: np.ndarray, alpha: float | None) -> np.ndarray:
    """Per-channel factors s of a LayerNorm output feeding a matrix product: the output is divided by s (γ and
    β are) and the weight rows multiplied by it, which changes nothing in float and moves the activation's
    outlier channels into the per-column-scaled int8 weights (SmoothQuant: s = max|x|^α / max|w|^(1−α),
    normalised to a geometric mean of 1). `alpha` None: no smoothing (s = 1)."""
    if alpha is None:
        return np.ones_like(activation_max)
    a, w = np.maximum(activation_max, 1e-12), np.maximum(weight_row_max, 1e-12)
    factors = a ** alpha / w ** (1 - alpha)
    return factors / np.exp(np.log(factors).mean())


def quantize(config: ModelConfig, weights: dict[str, np.ndarray], clips: dict[str, float],
             rounding: dict | None = None) -> QuantizedModel:
    """Quantize float `weights` (official names, as `M3ViT.state_dict()` in NumPy) with calibration `clips`
    (tensor name → clipping magnitude, from `golden.float_model.calibrate`). A `rounding` dict receives, by the
    layer's name in the quantized model (`blocks.0.qkv`, `blocks.1.router`, …), (its int8 weights [.., K, N], their
    column scales [.., N], Σ|w| over each row of the float weights it rounded [.., K]: those rows carry the
    smoothing's and scales' factors)."""
    for name, value in weights.items():
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.all(np.isfinite(value)):
            raise QuantizationError(f"weight {name} contains NaN or inf")
    q = _Builder(config, weights, clips, rounding)
    d, hd = config.embed_dim, config.head_dim
    s_img = _scale(q.clip("image"), INT8_MAX, "image")
    s_res = _scale(q.clip("residual"), INT16_MAX, "residual stream")
    q.scales.update(image=s_img, residual=s_res)
    q.arrays["norm.eps"] = np.array(max(1, round(LN_EPS * d * d / s_res ** 2)), np.int64)

    patch_w = q.weight("patch_embed.proj.weight").reshape(d, -1).T
    q.put_linear("patch", patch_w, q.weight("patch_embed.proj.bias"), s_img, s_res)
    position = q.weight("pos_embed")[0].copy()
    position[0] += q.weight("cls_token")[0, 0]
    q.arrays["embed.position"] = np.clip(np.round(position / s_res), -INT16_MAX - 1, INT16_MAX).astype(np.int16)

    for b in range(config.depth):
        p = f"blocks.{b}"
        # LayerNorm₁ → qkv, smoothed per channel
        qkv_w = q.weight(f"{p}.attn.qkv.weight").T                                        # [D, 3D]
        s1 = q.put_smoothed_norm(f"{p}.norm1", q.weight(f"{p}.norm1.weight"), q.weight(f"{p}.norm1.bias"),
                                 np.abs(qkv_w).max(axis=1), SMOOTHING[0])
        s_q, s_k = (_scale(q.clip(f"{p}.{n}"), INT8_MAX, f"{p}.{n}") for n in "qk")
        # V per channel; the attention output per channel at V's scales times one factor (what attention·V's
        # per-row requantization can give), folded into proj's rows
        v_max, attention_max = q.channel_clip(f"{p}.v"), q.channel_clip(f"{p}.attn_out")
        s_v = np.maximum(v_max, 1e-12) / INT8_MAX
        ratio = max(float((attention_max / np.maximum(v_max, 1e-12)).max()), 1e-12)
        out_scales = np.concatenate([np.full(d, s_q * hd ** 0.5), np.full(d, s_k), s_v])  # head scale in Q's
        q.put_linear(f"{p}.qkv", qkv_w * s1[:, None], q.weight(f"{p}.attn.qkv.bias"), q.scales[f"{p}.norm1"],
                     out_scales, q.gram(f"{p}.norm1", s1))
        exp_m, exp_s = _multiplier(s_q * s_k * LOG2E * 2 ** ops.ATTENTION_EXP_BITS, f"{p} softmax")
        out_m, out_s = _multiplier(1 / ratio, f"{p} attention output")
        q.put_scalars(f"{p}.attn", exp_multiplier=exp_m, exp_shift=exp_s, out_multiplier=out_m, out_shift=out_s)
        q.put_linear(f"{p}.proj", q.weight(f"{p}.attn.proj.weight").T * (s_v * ratio)[:, None],
                     q.weight(f"{p}.attn.proj.bias"), 1.0, s_res, q.gram(f"{p}.attn_out", s_v * ratio))
        # LayerNorm₂ → fc1 (every expert), smoothed per channel; the router's output of the same LayerNorm not
        gamma2, beta2 = q.weight(f"{p}.norm2.weight"), q.weight(f"{p}.norm2.bias")
        moe = config.is_moe(b)
        mlp = "mlp.experts" if moe else "mlp"
        fc1 = ("htoh4", "h4toh") if moe else ("fc1", "fc2")
        fc1_w = np.swapaxes(q.weight(f"{p}.{mlp}.{fc1[0]}.weight"), -1, -2)           # [(E,) d, h]
        fc2_w = np.swapaxes(q.weight(f"{p}.{mlp}.{fc1[1]}.weight"), -1, -2)           # [(E,) h, d]
        s2 = q.put_smoothed_norm(f"{p}.norm2", gamma2, beta2, np.abs(fc1_w).reshape(-1, d, fc1_w.shape[-1])
                                 .max(axis=(0, 2)), SMOOTHING[1])
        if moe:
            s_router = _scale(q.clip(f"{p}.norm2_router"), INT16_MAX, f"{p} router input")
            q.put_norm(f"{p}.norm2_router", gamma2, beta2, s_router)
            _quantize_router(q, p, config, s_router)
            experts = range(config.num_experts)
            fc1_max = np.stack([q.channel_clip(f"{p}.experts.{e}.fc1") for e in experts])
            gelu_max = np.stack([q.channel_clip(f"{p}.experts.{e}.gelu") for e in experts])
            names, out_scale = (f"{p}.experts.fc1", f"{p}.experts.fc2", f"{p}.experts"), \
                s_res / 2 ** ops.COMBINE_FRACTION_BITS
            hidden = [f"{p}.experts.{e}.gelu" for e in experts]
        else:
            fc1_max, gelu_max = q.channel_clip(f"{p}.fc1"), q.channel_clip(f"{p}.gelu")
            names, out_scale, hidden = (f"{p}.fc1", f"{p}.fc2", f"{p}.mlp"), s_res, f"{p}.gelu"
        q.put_mlp(*names, fc1_w * s2[:, None], q.weight(f"{p}.{mlp}.{fc1[0]}.bias"), fc2_w,
                  q.weight(f"{p}.{mlp}.{fc1[1]}.bias"), fc1_max, gelu_max, q.scales[f"{p}.norm2"], out_scale,
                  q.gram(f"{p}.norm2", s2), hidden)

    for task in range(config.num_tasks):
        _quantize_head(q, task, config, s_res)
    return QuantizedModel(config, q.arrays, q.scales)


def _quantize_router(q: _Builder, p: str, config: ModelConfig, s_router: float) -> None:
    gates = np.stack([q.weight(f"{p}.mlp.gate.{task}.w_gate") for task in range(config.num_tasks)])
    router_scales = np.maximum(np.abs(gates).max(axis=(1, 2)), 1e-12) / INT8_MAX  # one scale per task
    column_scales = np.repeat(router_scales[:, None], config.num_experts, axis=1)                 # [tasks, E]
    q.arrays[f"{p}.router.weight"] = q.rounded(f"{p}.router", gates, column_scales, q.gram(f"{p}.norm2"))
    exp_m, exp_s = _multiplier(s_router * router_scales * LOG2E * 2 ** ops.ROUTER_EXP_BITS, f"{p} router")
    q.put_scalars(f"{p}.router", exp_multiplier=exp_m, exp_shift=exp_s)


def _quantize_head(q: _Builder, task: int, config: ModelConfig, s_res: float) -> None:
    prefix = f"heads.{task}"
    s_norm = _scale(q.clip(f"{prefix}.norm"), INT8_MAX, f"{prefix}.norm")
    q.put_norm(f"{prefix}.norm", q.weight(f"{prefix}.norm.weight"), q.weight(f"{prefix}.norm.bias"), s_norm)
    s_in = s_norm
    layers = config.head_layers(task)
    for index, conv in enumerate(layers):
        name = f"{prefix}.{conv.name}"
        w, b = q.weight(f"{name}.weight"), q.weight(f"{name}.bias")
        if index < len(layers) - 1:  # fold batch norm into the 3×3 convolution
            bn = f"{prefix}.syncbn_fc_{index}"
            factor = q.weight(f"{bn}.weight") / np.sqrt(q.weight(f"{bn}.running_var") + BN_EPS)
            w = w * factor[:, None, None, None]
            b = (b - q.weight(f"{bn}.running_mean")) * factor + q.weight(f"{bn}.bias")
            s_out = _scale(q.clip(name), INT8_MAX, name)
        else:
            s_out = _scale(q.clip(name), INT16_MAX, name)
            q.scales[f"{prefix}.output"] = s_out
        q.put_linear(name, w.reshape(conv.out_channels, -1).T, b, s_in, s_out)
        s_in = s_out


def quantize_image(model: QuantizedModel, image: np.ndarray) -> np.ndarray:
    """A float image [C, H, W] (normalised as the float model takes it) → the int8 image `run` takes."""
    image = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(image)):
        raise QuantizationError("image contains NaN or inf")
    return np.clip(np.round(image / model.scales["image"]), -INT8_MAX, INT8_MAX).astype(np.int8)
