"""The quantizer: float weights (official names, NumPy) plus calibration statistics → a `QuantizedModel`.

Weights are int8, symmetric per output channel, stored [K, N]; biases int32 at the accumulator's scale;
activations int8 symmetric per tensor; the residual stream int16 with one scale for the whole network; every
rescaling an integer multiplier in [2^14, 2^15) and a shift (`golden.ops.quantize_multiplier`). The statistics
come from `golden.float_model.calibrate` (clip values by tensor name); this module needs no torch.
"""

from __future__ import annotations

import math

import numpy as np

from . import ops
from .config import ModelConfig
from .quantized import QuantizedModel

__all__ = ["quantize", "quantize_image", "QuantizationError", "BN_EPS", "LN_EPS"]

LN_EPS = 1e-6
BN_EPS = 1e-5
INT8_MAX, INT16_MAX = 127, 32767
LOG2E = math.log2(math.e)


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
    def __init__(self, config: ModelConfig, weights: dict[str, np.ndarray], clips: dict[str, float]):
        self.config, self.weights, self.clips = config, weights, clips
        self.arrays: dict[str, np.ndarray] = {}
        self.scales: dict[str, float] = {}

    def weight(self, name: str) -> np.ndarray:
        return np.asarray(self.weights[name], dtype=np.float64)

    def clip(self, name: str) -> float:
        if name not in self.clips:
            raise QuantizationError(f"calibration has no statistics for {name}: it saw no data there")
        return self.clips[name]

    def put_linear(self, prefix: str, w: np.ndarray, b: np.ndarray, in_scale: float, out_scale: float) -> None:
        """Store one linear layer: w float [.., K, N], b float [.., N], requantizing to `out_scale`."""
        column_max = np.abs(w).max(axis=-2)
        w_scale = np.where(column_max > 0, column_max / INT8_MAX, 1.0)
        wq = np.clip(np.round(w / w_scale[..., None, :]), -INT8_MAX, INT8_MAX).astype(np.int8)
        acc_scale = in_scale * w_scale
        bias = np.round(b / acc_scale)
        k = w.shape[-2]
        room = (1 << 31) - 1 - k * (1 << 14)
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

    def mlp_scalars(self, fc1_clip: float, gelu_clip: float) -> tuple[int, float, tuple]:
        """Q-format of fc1's output (GELU's input) and the hidden int8 scale with its multiplier."""
        fraction_bits = 15 - max(0, math.ceil(math.log2(max(fc1_clip, 1e-12) * 1.0001)))
        fraction_bits = min(15, max(ops.GELU_STEP_BITS, fraction_bits))
        hidden_scale = _scale(gelu_clip, INT8_MAX, "GELU output")
        return fraction_bits, hidden_scale, _multiplier(2.0 ** -fraction_bits / hidden_scale, "GELU output")


def quantize(config: ModelConfig, weights: dict[str, np.ndarray], clips: dict[str, float]) -> QuantizedModel:
    """Quantize float `weights` (official names, as `M3ViT.state_dict()` in NumPy) with calibration `clips`
    (tensor name → clipping magnitude, from `golden.float_model.calibrate`)."""
    for name, value in weights.items():
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.all(np.isfinite(value)):
            raise QuantizationError(f"weight {name} contains NaN or inf")
    q = _Builder(config, weights, clips)
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
        s_ln1 = _scale(q.clip(f"{p}.norm1"), INT8_MAX, f"{p}.norm1")
        q.put_norm(f"{p}.norm1", q.weight(f"{p}.norm1.weight"), q.weight(f"{p}.norm1.bias"), s_ln1)
        s_q, s_k, s_v = (_scale(q.clip(f"{p}.{n}"), INT8_MAX, f"{p}.{n}") for n in "qkv")
        out_scales = np.repeat([s_q * hd ** 0.5, s_k, s_v], d)  # the head scale is folded into Q's
        q.put_linear(f"{p}.qkv", q.weight(f"{p}.attn.qkv.weight").T, q.weight(f"{p}.attn.qkv.bias"), s_ln1,
                     out_scales)
        s_attn = _scale(q.clip(f"{p}.attn_out"), INT8_MAX, f"{p}.attn_out")
        exp_m, exp_s = _multiplier(s_q * s_k * LOG2E * 2 ** ops.ATTENTION_EXP_BITS, f"{p} softmax")
        out_m, out_s = _multiplier(s_v / s_attn, f"{p} attention output")
        q.put_scalars(f"{p}.attn", exp_multiplier=exp_m, exp_shift=exp_s, out_multiplier=out_m, out_shift=out_s)
        q.put_linear(f"{p}.proj", q.weight(f"{p}.attn.proj.weight").T, q.weight(f"{p}.attn.proj.bias"), s_attn, s_res)
        s_ln2 = _scale(q.clip(f"{p}.norm2"), INT8_MAX, f"{p}.norm2")
        gamma2, beta2 = q.weight(f"{p}.norm2.weight"), q.weight(f"{p}.norm2.bias")
        q.put_norm(f"{p}.norm2", gamma2, beta2, s_ln2)
        if config.is_moe(b):
            s_router = _scale(q.clip(f"{p}.norm2_router"), INT16_MAX, f"{p} router input")
            q.put_norm(f"{p}.norm2_router", gamma2, beta2, s_router)
            _quantize_moe(q, p, config, s_ln2, s_router, s_res)
        else:
            fraction_bits, s_hidden, (hm, hs) = q.mlp_scalars(q.clip(f"{p}.fc1"), q.clip(f"{p}.gelu"))
            q.put_linear(f"{p}.fc1", q.weight(f"{p}.mlp.fc1.weight").T, q.weight(f"{p}.mlp.fc1.bias"), s_ln2,
                         2.0 ** -fraction_bits)
            q.put_scalars(f"{p}.mlp", gelu_fraction_bits=fraction_bits, hidden_multiplier=hm, hidden_shift=hs)
            q.put_linear(f"{p}.fc2", q.weight(f"{p}.mlp.fc2.weight").T, q.weight(f"{p}.mlp.fc2.bias"), s_hidden,
                         s_res)

    for task in range(config.num_tasks):
        _quantize_head(q, task, config, s_res)
    return QuantizedModel(config, q.arrays, q.scales)


def _quantize_moe(q: _Builder, p: str, config: ModelConfig, s_in: float, s_router: float, s_res: float) -> None:
    e_count = config.num_experts
    gates = np.stack([q.weight(f"{p}.mlp.gate.{task}.w_gate") for task in range(config.num_tasks)])
    router_scales = np.maximum(np.abs(gates).max(axis=(1, 2)), 1e-12) / INT8_MAX  # one scale per task
    q.arrays[f"{p}.router.weight"] = np.clip(np.round(gates / router_scales[:, None, None]), -127, 127).astype(np.int8)
    exp_m, exp_s = _multiplier(s_router * router_scales * LOG2E * 2 ** ops.ROUTER_EXP_BITS, f"{p} router")
    q.put_scalars(f"{p}.router", exp_multiplier=exp_m, exp_shift=exp_s)
    scalars = [q.mlp_scalars(q.clip(f"{p}.experts.{e}.fc1"), q.clip(f"{p}.experts.{e}.gelu")) for e in range(e_count)]
    fraction_bits = np.array([s[0] for s in scalars])
    hidden_scales = np.array([s[1] for s in scalars])
    q.put_scalars(f"{p}.experts", gelu_fraction_bits=fraction_bits,
                  hidden_multiplier=[s[2][0] for s in scalars], hidden_shift=[s[2][1] for s in scalars])
    fc1_w = q.weight(f"{p}.mlp.experts.htoh4.weight").transpose(0, 2, 1)   # [E, d, h]
    fc2_w = q.weight(f"{p}.mlp.experts.h4toh.weight").transpose(0, 2, 1)   # [E, h, d]
    q.put_linear(f"{p}.experts.fc1", fc1_w, q.weight(f"{p}.mlp.experts.htoh4.bias"), s_in,
                 (2.0 ** -fraction_bits)[:, None])
    q.put_linear(f"{p}.experts.fc2", fc2_w, q.weight(f"{p}.mlp.experts.h4toh.bias"), hidden_scales[:, None],
                 s_res / 2 ** ops.COMBINE_FRACTION_BITS)


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
