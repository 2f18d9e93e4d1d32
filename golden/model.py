"""The bit-exact integer golden model of M³ViT: vectorised NumPy, integer dtypes only.

`run(model, image, task)` runs one int8 image [C, H, W] through the backbone with `task`'s routers and then
through `task`'s head, with exactly the operations of `golden.ops` (docs/numerics.md). It returns the head's
int16 output, the backbone's int16 output, and on request every intermediate tensor by name, every MoE layer's
routing, multiply-accumulates by operation kind and the experts each MoE layer used.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from . import ops
from .quantized import QuantizedModel

__all__ = ["run", "GoldenResult", "LayerRouting", "ExpertQueues", "expert_queues", "linear"]

RESIDUAL_BITS = ops.RESIDUAL_BITS


@dataclass
class LayerRouting:
    """One MoE layer's routing: per token its k expert ids (best first) and Q1.15 gate weights, both [T, k];
    per expert its token indices in ascending order (empty for unused experts)."""

    expert_ids: np.ndarray
    gate_weights: np.ndarray
    expert_tokens: list[np.ndarray]

    @property
    def active_experts(self) -> list[int]:
        """The ascending list of non-empty experts: the loader's schedule."""
        return [e for e, tokens in enumerate(self.expert_tokens) if len(tokens)]


@dataclass
class GoldenResult:
    output: np.ndarray                         # task head output, int16 [classes, H, W]
    backbone: np.ndarray                       # last block's residual stream, int16 [T, D]
    routing: dict[int, LayerRouting]
    macs: dict[str, int]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def experts_used(self) -> dict[int, list[int]]:
        return {block: routing.active_experts for block, routing in self.routing.items()}


class _Recorder:
    def __init__(self, keep: bool):
        self.keep = keep
        self.tensors: dict[str, np.ndarray] = {}
        self.macs: dict[str, int] = defaultdict(int)

    def __call__(self, name: str, value: np.ndarray) -> np.ndarray:
        if self.keep:
            self.tensors[name] = value
        return value

    def count(self, kind: str, m: int, k: int, n: int, times: int = 1) -> None:
        self.macs[kind] += m * k * n * times


def linear(x: np.ndarray, model: QuantizedModel, prefix: str, bits: int, *, lower: int | None = None,
           experts: np.ndarray | None = None, product=ops.exact_matmul) -> np.ndarray:
    """requantize(product(x, weight) + bias) with the per-column multipliers and shifts of layer `prefix`;
    `product` is x @ weight unless given (3×3 convolutions). For batched expert weights, `experts` selects
    the experts and x is [experts, rows, K]."""
    def get(name):
        array = model[f"{prefix}.{name}"]
        return array if experts is None else array[experts][..., None, :]

    acc = product(x, model[f"{prefix}.weight"] if experts is None else model[f"{prefix}.weight"][experts])
    return ops.requantize(acc + get("bias"), get("multiplier"), get("shift"), bits, lower=lower)


def _norm(x: np.ndarray, model: QuantizedModel, *prefixes_bits: tuple[str, int]) -> list[np.ndarray]:
    outputs = [(model[f"{p}.gamma"], model[f"{p}.beta"], int(model[f"{p}.shift"]), bits) for p, bits in prefixes_bits]
    return ops.layernorm(x, int(model["norm.eps"]), outputs)


def _mlp_hidden(x, model, prefix, scalars, experts=None):
    """fc1 → int16, column c in Q.f_c → GELU → int8 hidden (for a batch of experts, x is [experts, rows, D]).
    The hidden's scale per channel is 2^-f_c times the requantization's (a power of two per channel)."""
    def get(name):
        array = model[f"{scalars}.{name}"]
        return array if experts is None else array[experts][:, None, None]

    fraction_bits = model[f"{prefix}.fraction_bits"]
    if experts is not None:
        fraction_bits = fraction_bits[experts][:, None, :]
    z = linear(x, model, prefix, 16, experts=experts)
    return ops.requantize(ops.gelu(z, fraction_bits), get("hidden_multiplier"), get("hidden_shift"), 8)


def _attention(x8, model, p, config, record):
    t, d, heads = x8.shape[0], config.embed_dim, config.num_heads
    qkv = record(f"{p}.qkv", linear(x8, model, f"{p}.qkv", 8))
    q, k, v = (qkv[:, i * d:(i + 1) * d].reshape(t, heads, -1).transpose(1, 0, 2) for i in range(3))
    scores = record(f"{p}.scores", ops.exact_matmul(q, k.transpose(0, 2, 1)))          # [heads, T, T]
    probabilities, sums = ops.softmax_rows(scores, int(model[f"{p}.attn.exp_multiplier"]),
                                           int(model[f"{p}.attn.exp_shift"]))
    record(f"{p}.probabilities", probabilities)
    multipliers, shifts = ops.row_multipliers(sums, int(model[f"{p}.attn.out_multiplier"]),
                                              int(model[f"{p}.attn.out_shift"]))
    acc = ops.exact_matmul(probabilities, v)                                               # [heads, T, hd]
    out = ops.requantize(acc, multipliers[..., None], shifts[..., None], 8)
    record.count("attention", t, config.head_dim, t, 2 * heads)
    return record(f"{p}.attn_out", out.transpose(1, 0, 2).reshape(t, d))


@dataclass
class ExpertQueues:
    """The (token, slot) pairs of a layer's routing grouped expert by expert, tokens ascending within each
    expert: what the router's queues hold and the GEMM engine gathers. Entry i is token `tokens[i]`'s slot
    `slots[i]`, the `row[i]`-th entry of expert `active[batch[i]]`."""

    counts: np.ndarray        # tokens per expert [E]
    active: np.ndarray        # the ascending non-empty experts
    tokens: np.ndarray
    slots: np.ndarray
    batch: np.ndarray
    row: np.ndarray

    @property
    def expert_tokens(self) -> list[np.ndarray]:
        return np.split(self.tokens.astype(np.int32), np.cumsum(self.counts)[:-1])


def expert_queues(ids: np.ndarray, num_experts: int) -> ExpertQueues:
    """Group the expert ids [T, k] of one layer expert by expert (a stable counting sort)."""
    k = ids.shape[-1]
    order = np.argsort(ids.ravel(), kind="stable")
    expert_of = ids.ravel()[order]
    counts = np.bincount(expert_of, minlength=num_experts)
    active = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    return ExpertQueues(counts, active, order // k, order % k, np.searchsorted(active, expert_of),
                        np.arange(len(order)) - starts[expert_of])


def _moe(x, x8, x16, model, p, config, task, record) -> tuple[np.ndarray, LayerRouting]:
    """MoE block `p`'s experts on the residual rows x (their LayerNorm₂ outputs x8, and x16 for the router):
    the residual after each token's gate-weighted expert terms are added into it, and the layer's routing."""
    t, k, d = x8.shape[0], config.top_k, config.embed_dim
    router = model[f"{p}.router.weight"][task]
    logits = record(f"{p}.router_logits", ops.exact_matmul(x16, router))
    record.count("router", t, d, config.num_experts)
    ids, weights = ops.route(logits, k, config.gate, int(model[f"{p}.router.exp_multiplier"][task]),
                             int(model[f"{p}.router.exp_shift"][task]))
    queues = expert_queues(ids, config.num_experts)
    active = queues.active
    gathered = np.zeros((len(active), queues.counts.max(), d), dtype=np.int8)
    gathered[queues.batch, queues.row] = x8[queues.tokens]
    hidden = _mlp_hidden(gathered, model, f"{p}.experts.fc1", f"{p}.experts", active)
    y = linear(hidden, model, f"{p}.experts.fc2", RESIDUAL_BITS + ops.COMBINE_FRACTION_BITS, experts=active)
    outputs = np.zeros((t, k, d), dtype=np.int32)
    outputs[queues.tokens, queues.slots] = y[queues.batch, queues.row]
    record.count("experts", t * k, d, config.expert_hidden, 2)
    routing = LayerRouting(ids, weights, queues.expert_tokens)
    return ops.combine(x, outputs, weights, ids, RESIDUAL_BITS), routing


def _head(tokens, model, task, config, record) -> np.ndarray:
    rows, cols = config.grid
    (x,) = _norm(tokens[1:], model, (f"heads.{task}.norm", 8))
    x = x.T.reshape(config.embed_dim, rows, cols)
    between, after = config.head_upsamples()
    layers = config.head_layers(task)
    for index, conv in enumerate(layers[:-1]):
        h, w = x.shape[1:]
        y = linear(x, model, f"heads.{task}.{conv.name}", 8, lower=0, product=ops.conv3x3)
        record.count("head", h * w, conv.kernel ** 2 * conv.in_channels, conv.out_channels)
        x = record(f"heads.{task}.{conv.name}", y.T.reshape(conv.out_channels, h, w))
        if index < between:
            x = ops.upsample2x(x, 8)
    classifier = layers[-1]
    h, w = x.shape[1:]
    y = linear(x.reshape(classifier.in_channels, -1).T, model, f"heads.{task}.{classifier.name}", 16)
    record.count("head", h * w, classifier.in_channels, classifier.out_channels)
    x = y.T.reshape(classifier.out_channels, h, w)
    for _ in range(after):
        x = ops.upsample2x(x, 16)
    return x


def run(model: QuantizedModel, image: np.ndarray, task: int | str = 0, *, intermediates: bool = False) -> GoldenResult:
    """Integer inference of one int8 image [C, H, W] for `task` (index or name)."""
    config = model.config
    task = config.task_index(task)
    expected = (config.in_channels, *config.image_size)
    if not isinstance(image, np.ndarray) or image.dtype != np.int8 or image.shape != expected:
        got = (image.shape, image.dtype) if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be int8 of shape {expected}, got {got}")
    record = _Recorder(intermediates)
    patch_rows = ops.patches(image, config.patch_size)
    embedded = linear(patch_rows, model, "patch", RESIDUAL_BITS)
    record.count("patch_embed", config.num_patches, config.patch_dim, config.embed_dim)
    x = np.concatenate([np.zeros((1, config.embed_dim), np.int16), embedded])
    x = record("embed", ops.saturate(x.astype(np.int64) + model["embed.position"], RESIDUAL_BITS))
    routing = {}
    t, d = config.num_tokens, config.embed_dim
    for b in range(config.depth):
        p = f"blocks.{b}"
        (x8,) = _norm(x, model, (f"{p}.norm1", 8))
        record(f"{p}.norm1", x8)
        record.count("qkv", t, d, 3 * d)
        attention = _attention(x8, model, p, config, record)
        projected = linear(attention, model, f"{p}.proj", RESIDUAL_BITS)
        record.count("proj", t, d, d)
        x = record(f"{p}.mid", ops.saturate(x.astype(np.int64) + projected, RESIDUAL_BITS))
        if config.is_moe(b):
            x8, x16 = _norm(x, model, (f"{p}.norm2", 8), (f"{p}.norm2_router", RESIDUAL_BITS))
            x, routing[b] = _moe(x, x8, x16, model, p, config, task, record)
        else:
            (x8,) = _norm(x, model, (f"{p}.norm2", 8))
            hidden = _mlp_hidden(x8, model, f"{p}.fc1", f"{p}.mlp")
            mlp = linear(hidden, model, f"{p}.fc2", RESIDUAL_BITS)
            record.count("dense_mlp", t, d, config.mlp_hidden, 2)
            x = ops.saturate(x.astype(np.int64) + mlp, RESIDUAL_BITS)
        record(f"{p}.norm2", x8)
        x = record(f"{p}.out", x)
    output = _head(x, model, task, config, record)
    return GoldenResult(output, x, routing, dict(record.macs), record.tensors)
