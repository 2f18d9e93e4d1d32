"""The float M³ViT in PyTorch (CPU): the reference the quantizer and the fidelity measurements start from.

Parameter names follow the official M³ViT code for the backbone (`patch_embed.proj`, `cls_token`,
`pos_embed`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2}`, dense `blocks.{i}.mlp.{fc1,fc2}`, MoE
`blocks.{i}.mlp.experts.{htoh4,h4toh}.{weight,bias}` with weights [E, h, d] and [E, d, h], and
`blocks.{i}.mlp.gate.{task}.w_gate` [d, E]) and SETR's PUP head for the task heads
(`heads.{task}.norm`, `heads.{task}.conv_{j}`, `heads.{task}.syncbn_fc_{j}`).

This is the only module of `golden` that imports torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

__all__ = ["M3ViT", "M3ViTOutput", "Routing", "CheckpointError", "route", "time_inference", "LN_EPS",
           "CHECKPOINT_FORMAT"]

LN_EPS = 1e-6
CHECKPOINT_FORMAT = "m3vit-float-1"


class CheckpointError(ValueError):
    """A checkpoint or state dict does not match the model; the message lists every problem at once."""


@dataclass
class Routing:
    """The routing of one MoE layer: per token (batch × tokens) its k expert ids, best first, and gate
    weights, both [B, T, k]."""

    expert_ids: torch.Tensor
    gate_weights: torch.Tensor


@dataclass
class M3ViTOutput:
    """`output` of the task head [B, classes, H, W]; with intermediates, every block's output [B, T, D]
    and every MoE layer's routing by block index."""

    output: torch.Tensor
    blocks: list[torch.Tensor] | None = None
    routing: dict[int, Routing] | None = None


def route(logits: torch.Tensor, top_k: int, gate: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing of router logits [..., E]: (expert ids [..., k], gate weights [..., k]).

    Experts are selected on the logits (softmax is monotone), best first, equal logits going to the lower
    expert index. `vmoe`: weights are the winners' softmax probabilities over all E experts (not
    renormalised); `noisy`: the softmax over the k winning logits.
    """
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    ids = order[..., :top_k]
    if gate == "vmoe":
        weights = torch.gather(torch.softmax(logits, dim=-1), -1, ids)
    elif gate == "noisy":
        weights = torch.softmax(torch.gather(logits, -1, ids), dim=-1)
    else:
        raise ValueError(f"gate = {gate!r}: must be 'vmoe' or 'noisy'")
    return ids, weights


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.scale = config.head_dim ** -0.5
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, task=None):
        return self.fc2(F.gelu(self.fc1(x))), None


class Experts(nn.Module):
    """E expert MLPs held as batched weights: htoh4 [E, h, d] and h4toh [E, d, h]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        e, d, h = config.num_experts, config.embed_dim, config.expert_hidden
        self.htoh4 = nn.Module()
        self.htoh4.weight = nn.Parameter(torch.empty(e, h, d))
        self.htoh4.bias = nn.Parameter(torch.empty(e, h))
        self.h4toh = nn.Module()
        self.h4toh.weight = nn.Parameter(torch.empty(e, d, h))
        self.h4toh.bias = nn.Parameter(torch.empty(e, d))

    def expert(self, index: int, x):
        hidden = F.gelu(x @ self.htoh4.weight[index].T + self.htoh4.bias[index])
        return hidden @ self.h4toh.weight[index].T + self.h4toh.bias[index]


class Gate(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(config.embed_dim, config.num_experts))


class MoE(nn.Module):
    """Mixture of experts with one router per task; each token is the gate-weighted sum of its k experts."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k, self.gate_variant = config.top_k, config.gate
        self.experts = Experts(config)
        self.gate = nn.ModuleList(Gate(config) for _ in config.tasks)

    def forward(self, x, task: int):
        b, t, d = x.shape
        tokens = x.reshape(b * t, d)
        ids, weights = route(tokens @ self.gate[task].w_gate, self.top_k, self.gate_variant)
        out = torch.zeros_like(tokens)
        for expert in torch.unique(ids).tolist():  # expert by expert, as the accelerator computes
            token, slot = torch.nonzero(ids == expert, as_tuple=True)
            out.index_add_(0, token, weights[token, slot, None] * self.experts.expert(expert, tokens[token]))
        return out.reshape(b, t, d), Routing(ids.reshape(b, t, -1), weights.reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, moe: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=LN_EPS)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=LN_EPS)
        self.mlp = MoE(config) if moe else Mlp(config.embed_dim, config.mlp_hidden)

    def forward(self, x, task: int):
        x = x + self.attn(self.norm1(x))
        mlp, routing = self.mlp(self.norm2(x), task)
        return x + mlp, routing


class PupHead(nn.Module):
    """SETR-style progressive-upsampling head: LayerNorm, 3×3 conv + BN + ReLU stages with bilinear ×2
    between them, a 1×1 classifier, then bilinear ×2 stages up to the image size."""

    def __init__(self, config: ModelConfig, task: int):
        super().__init__()
        self.grid = config.grid
        self.upsamples = config.head_upsamples()
        self.norm = nn.LayerNorm(config.embed_dim, eps=LN_EPS)
        layers = config.head_layers(task)
        for index, conv in enumerate(layers):
            setattr(self, f"conv_{index}", nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel,
                                                     padding=conv.kernel // 2))
            if conv.kernel == 3:
                setattr(self, f"syncbn_fc_{index}", nn.BatchNorm2d(conv.out_channels))
        self.convs = len(layers) - 1

    def forward(self, tokens):
        b, _, d = tokens.shape
        x = self.norm(tokens[:, 1:]).transpose(1, 2).reshape(b, d, *self.grid)
        between, after = self.upsamples
        for index in range(self.convs):
            x = F.relu(getattr(self, f"syncbn_fc_{index}")(getattr(self, f"conv_{index}")(x)))
            if index < between:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = getattr(self, f"conv_{self.convs}")(x)
        for _ in range(after):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return x


class M3ViT(nn.Module):
    """M³ViT: patch embedding, cls token, position embedding, pre-norm blocks (MoE where the config says),
    and one PUP head per task. `forward(image, task)` runs the backbone with `task`'s routers and its head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(config.in_channels, d, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, d))
        self.blocks = nn.ModuleList(Block(config, config.is_moe(i)) for i in range(config.depth))
        self.heads = nn.ModuleList(PupHead(config, task) for task in range(config.num_tasks))

    # Construction ------------------------------------------------------------------------------------------

    @classmethod
    def random(cls, config: ModelConfig, seed: int = 0) -> "M3ViT":
        """A reproducible random model: the same config and seed give the same weights, whatever the global
        torch RNG state. Weights, biases and embeddings are normal (std 0.02, clipped at 2 std, as timm's
        ViT), experts and routers kaiming-uniform (bound 1/sqrt(fan-in)), LayerNorms identity, batch norms
        mildly random."""
        model = cls(config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                *path, leaf = name.split(".")
                module = path[-1] if path else ""
                if module.startswith("norm"):
                    parameter.fill_(1.0 if leaf == "weight" else 0.0)
                elif module.startswith("syncbn_fc"):
                    parameter.normal_(1.0 if leaf == "weight" else 0.0, 0.1, generator=generator)
                elif leaf == "w_gate" or module in ("htoh4", "h4toh") and leaf == "weight":
                    bound = 1 / math.sqrt(parameter.shape[0] if leaf == "w_gate" else parameter.shape[-1])
                    parameter.uniform_(-bound, bound, generator=generator)
                else:  # linear and conv weights and biases, cls token, position embedding
                    parameter.normal_(0.0, 0.02, generator=generator).clamp_(-0.04, 0.04)
            for name, buffer in model.named_buffers():
                if name.endswith("running_mean"):
                    buffer.normal_(0.0, 0.1, generator=generator)
                elif name.endswith("running_var"):
                    buffer.uniform_(0.5, 1.5, generator=generator)
        return model.eval()

    @classmethod
    def load(cls, path: str | Path) -> "M3ViT":
        """A model saved with `save` (its config and state dict in one file)."""
        data = _torch_load(path)
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not an M³ViT float checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
        config = ModelConfig.from_dict(data["config"])
        model = cls(config)
        model.load_official_state_dict(data["state_dict"])
        return model.eval()

    def save(self, path: str | Path) -> None:
        torch.save({"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                    "state_dict": self.state_dict()}, path)

    def load_official_state_dict(self, state_dict: dict, *, backbone_only: bool = False) -> None:
        """Load weights named as the official M³ViT code names them, strictly: missing keys, unexpected keys
        and wrong shapes are reported together in one `CheckpointError`. A dict wrapping the weights under
        `model` or `state_dict` (as training scripts save them) is unwrapped. With `backbone_only`, the task
        heads keep their weights and head keys in the file are ignored."""
        for wrapper in ("state_dict", "model"):
            if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
                state_dict = state_dict[wrapper]
        if not isinstance(state_dict, dict):
            raise CheckpointError(f"state dict must be a mapping of names to tensors, not {type(state_dict).__name__}")
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
        ours = self.state_dict()
        if backbone_only:
            ours = {k: v for k, v in ours.items() if not k.startswith("heads.")}
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("heads.")}
        missing = sorted(set(ours) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(ours))
        wrong = []
        for key in sorted(set(ours) & set(state_dict)):
            value = state_dict[key]
            if not isinstance(value, torch.Tensor):
                wrong.append(f"{key}: not a tensor ({type(value).__name__})")
            elif tuple(value.shape) != tuple(ours[key].shape):
                wrong.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(ours[key].shape)}")
            elif value.is_floating_point() and not torch.isfinite(value).all():
                wrong.append(f"{key}: contains NaN or inf")
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: " + ", ".join(missing))
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected))
        if wrong:
            problems.append(f"{len(wrong)} wrong: " + "; ".join(wrong))
        if problems:
            raise CheckpointError(f"state dict does not match {self.config.name}: " + " | ".join(problems))
        self.load_state_dict(state_dict, strict=not backbone_only)

    # Inference ---------------------------------------------------------------------------------------------

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, D] of images [B, C, H, W]: patch embedding, cls token, position embedding."""
        c, (h, w) = self.config.in_channels, self.config.image_size
        if image.dim() != 4 or tuple(image.shape[1:]) != (c, h, w):
            raise ValueError(f"image shape {tuple(image.shape)}: expected [B, {c}, {h}, {w}] for {self.config.name}")
        patches = self.patch_embed.proj(image).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(image.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def forward(self, image: torch.Tensor, task: int | str = 0, *, intermediates: bool = False):
        """The task head's output [B, classes, H, W] for images [B, C, H, W] (or one image [C, H, W]); with
        `intermediates`, an `M3ViTOutput` holding every block's output and every MoE layer's routing too."""
        task = self.config.task_index(task)
        single = image.dim() == 3
        if single:
            image = image.unsqueeze(0)
        x = self.embed(image)
        blocks, routing = [], {}
        for index, block in enumerate(self.blocks):
            x, layer_routing = block(x, task)
            blocks.append(x)
            if layer_routing is not None:
                routing[index] = layer_routing
        output = self.heads[task](x)
        if single:
            output = output.squeeze(0)
        if not intermediates:
            return output
        return M3ViTOutput(output, blocks, routing)


def time_inference(config: ModelConfig, *, task: int | str = 0, repeats: int = 3, seed: int = 0) -> dict:
    """Best-of-`repeats` wall time of one float inference of a seeded random model on one image (a benchmark,
    for `m3vit bench float`; never called by the tests)."""
    network = M3ViT.random(config, seed)
    image = torch.randn(1, config.in_channels, *config.image_size, generator=torch.Generator().manual_seed(seed))
    times = []
    with torch.inference_mode():
        network(image, task)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            network(image, task)
            times.append(time.perf_counter() - start)
    return {"preset": config.name, "task": config.tasks[config.task_index(task)].name, "repeats": repeats,
            "threads": torch.get_num_threads(), "float_seconds": min(times)}


def _torch_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from error
