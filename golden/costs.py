"""Analytic costs of one single-task inference: multiply-accumulates by kind, parameters, int8 weight bytes.

Counting rules: tokens include the cls token; the patch embedding runs over patches only; routers exist in
MoE blocks only; an MoE block's active-expert work is top_k expert MLPs per token. Task-head MACs count the
convolutions (the bilinear upsamplers, LayerNorm and batch norm are not multiply-accumulates of the array).
"""

from __future__ import annotations

from .config import ModelConfig

__all__ = ["backbone_macs", "head_macs", "parameter_count", "backbone_weight_bytes", "expert_weight_bytes",
           "model_info"]

BACKBONE_MAC_KINDS = ("patch_embed", "qkv", "attention", "proj", "dense_mlp", "router", "experts")


def backbone_macs(model: ModelConfig, *, all_experts: bool = False) -> dict[str, int]:
    """Multiply-accumulates of the backbone by kind (keys: `BACKBONE_MAC_KINDS`), for one image and task.

    With `all_experts`, every token goes through all E experts instead of its top_k.
    """
    t, d = model.num_tokens, model.embed_dim
    moe = len(model.moe_blocks)
    dense = model.depth - moe
    experts_per_token = model.num_experts if all_experts else model.top_k
    return {
        "patch_embed": model.num_patches * model.patch_dim * d,
        "qkv": model.depth * t * d * 3 * d,
        "attention": model.depth * 2 * t * t * d,  # Q·Kᵀ and attention·V over all heads
        "proj": model.depth * t * d * d,
        "dense_mlp": dense * 2 * t * d * model.mlp_hidden,
        "router": moe * t * d * model.num_experts,
        "experts": moe * experts_per_token * t * 2 * d * model.expert_hidden,
    }


def head_macs(model: ModelConfig, task: int | str = 0) -> int:
    """Multiply-accumulates of `task`'s head (its 3×3 convolutions and 1×1 classifier)."""
    return sum(conv.macs for conv in model.head_layers(task))


def _linear(k: int, n: int) -> int:
    return k * n + n


def parameter_count(model: ModelConfig) -> dict[str, int]:
    """Parameters (trainable, as the float model holds them) of the backbone and of all task heads."""
    d, t, e = model.embed_dim, model.num_tokens, model.num_experts
    backbone = _linear(model.patch_dim, d) + d + t * d  # patch embedding, cls token, position embedding
    for block in range(model.depth):
        backbone += 2 * d + _linear(d, 3 * d) + _linear(d, d) + 2 * d  # norm1, qkv, proj, norm2
        if model.is_moe(block):
            backbone += e * (_linear(d, model.expert_hidden) + _linear(model.expert_hidden, d))
            backbone += model.num_tasks * d * e  # one router per task, no bias
        else:
            backbone += _linear(d, model.mlp_hidden) + _linear(model.mlp_hidden, d)
    heads = 0
    for task in range(model.num_tasks):
        heads += 2 * d  # the head's LayerNorm
        for conv in model.head_layers(task):
            heads += _linear(conv.kernel ** 2 * conv.in_channels, conv.out_channels)
            if conv.kernel == 3:
                heads += 2 * conv.out_channels  # batch norm affine
    return {"backbone": backbone, "heads": heads, "total": backbone + heads}


def backbone_weight_bytes(model: ModelConfig) -> int:
    """Bytes of the backbone's int8 weight matrices: patch embedding, qkv, proj, dense MLPs, all experts and
    every task's router (biases, norms and embeddings not included)."""
    d = model.embed_dim
    total = model.patch_dim * d
    for block in range(model.depth):
        total += 4 * d * d
        if model.is_moe(block):
            total += model.num_experts * expert_weight_bytes(model) + model.num_tasks * d * model.num_experts
        else:
            total += 2 * d * model.mlp_hidden
    return total


def expert_weight_bytes(model: ModelConfig) -> int:
    """Bytes of one expert's int8 weights, both layers."""
    return 2 * model.embed_dim * model.expert_hidden


def model_info(model: ModelConfig, task: int | str = 0) -> dict:
    """Everything `m3vit info` reports, as a JSON-ready dict."""
    active = backbone_macs(model)
    every = backbone_macs(model, all_experts=True)
    params = parameter_count(model)
    return {
        "preset": model.name,
        "config": model.to_dict(),
        "tokens": model.num_tokens,
        "head_dim": model.head_dim,
        "backbone_macs": sum(active.values()),
        "backbone_macs_by_kind": active,
        "backbone_macs_all_experts": sum(every.values()),
        "head_macs": head_macs(model, task),
        "head_task": model.tasks[model.task_index(task)].name,
        "params": params["total"],
        "params_backbone": params["backbone"],
        "params_heads": params["heads"],
        "weight_bytes": backbone_weight_bytes(model),
        "expert_weight_bytes": expert_weight_bytes(model),
    }
