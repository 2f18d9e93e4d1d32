"""The float M³ViT in PyTorch (CPU): the reference the quantizer and the fidelity measurements start from.

Parameter names follow the official M³ViT code for the backbone (`patch_embed.proj`, `cls_token`,
`pos_embed`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2}`, dense `blocks.{i}.mlp.{fc1,fc2}`, MoE
`blocks.{i}.mlp.experts.{htoh4,h4toh}.{weight,bias}` with weights [E, h, d] and [E, d, h], and
`blocks.{i}.mlp.gate.{task}.w_gate` [d, E]) and SETR's PUP head for the task heads
(`heads.{task}.norm`, `heads.{task}.conv_{j}`, `heads.{task}.syncbn_fc_{j}`).

This is the only module of `golden` that imports torch.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError
from .files import atomic_open

__all__ = ["M3ViT", "M3ViTOutput", "Routing", "CheckpointError", "CheckpointReport", "map_checkpoint", "route",
           "time_inference", "calibrate", "numpy_weights", "quantize_model", "float_inference", "float_output", "read_checkpoint", "LN_EPS",
           "CHECKPOINT_FORMAT"]

LN_EPS = 1e-6
CHECKPOINT_FORMAT = "m3vit-float-1"


def one_thread(function):
    """`function` run with torch on one thread (the caller's thread count restored after). torch splits a long
    reduction among its threads and sums their parts in another order, so a sum, a norm or a matrix product
    differs in its last bits from one machine's core count to another's; the synthetic model's shaping bisects
    on such statistics and calibration takes maxima and percentiles of them, so without this the same seed
    gave another model and another quantized model on a machine of another size (m3vit-tiny-cityscapes, seed
    0: 30.13 dB on two threads, 30.19 dB on one)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapper


def _no_probe(name, tensor):
    return tensor


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

    def forward(self, x, probe=_no_probe, prefix=""):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q = probe(f"{prefix}.q", q * self.scale)
        probe(f"{prefix}.k", k)
        probe(f"{prefix}.v", v)
        attention = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        return self.proj(probe(f"{prefix}.attn_out", (attention @ v).transpose(1, 2).reshape(b, t, d)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, task=None, probe=_no_probe, prefix=""):
        hidden = probe(f"{prefix}.gelu", F.gelu(probe(f"{prefix}.fc1", self.fc1(x))))
        return self.fc2(hidden), None


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

    def hidden(self, index: int, x):
        """(fc1 output, GELU of it) of expert `index` for tokens x [N, d]."""
        pre = x @ self.htoh4.weight[index].T + self.htoh4.bias[index]
        return pre, F.gelu(pre)

    def expert(self, index: int, x):
        return self.hidden(index, x)[1] @ self.h4toh.weight[index].T + self.h4toh.bias[index]


class Gate(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(config.embed_dim, config.num_experts))


class MoE(nn.Module):
    """Mixture of experts with one router per task; each token is the gate-weighted sum of its k experts.
    `training_noise`, when set and the module is training, is `noise(tokens, logits, task)` → the logits the
    experts are chosen on (`golden.train`'s noisy top-k gating); inference has no noise."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k, self.gate_variant = config.top_k, config.gate
        self.training_noise = None
        self.experts = Experts(config)
        self.gate = nn.ModuleList(Gate(config) for _ in config.tasks)

    def forward(self, x, task: int, probe=_no_probe, prefix=""):
        b, t, d = x.shape
        tokens = x.reshape(b * t, d)
        if probe is not _no_probe:  # calibration sees every expert on every token
            for expert in range(self.experts.htoh4.weight.shape[0]):
                pre, hidden = self.experts.hidden(expert, tokens)
                probe(f"{prefix}.experts.{expert}.fc1", pre)
                probe(f"{prefix}.experts.{expert}.gelu", hidden)
        logits = probe(f"{prefix}.router_logits", tokens @ self.gate[task].w_gate)
        if self.training and self.training_noise is not None:
            logits = self.training_noise(tokens, logits, task)
        ids, weights = route(logits, self.top_k, self.gate_variant)
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

    def forward(self, x, task: int, probe=_no_probe, prefix=""):
        x = probe(f"{prefix}.mid", x + self.attn(probe(f"{prefix}.norm1", self.norm1(x)), probe, prefix))
        mlp, routing = self.mlp(probe(f"{prefix}.norm2", self.norm2(x)), task, probe, prefix)
        return probe(f"{prefix}.out", x + mlp), routing


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

    def forward(self, tokens, probe=_no_probe, prefix=""):
        b, _, d = tokens.shape
        x = probe(f"{prefix}.norm", self.norm(tokens[:, 1:])).transpose(1, 2).reshape(b, d, *self.grid)
        between, after = self.upsamples
        for index in range(self.convs):
            x = F.relu(getattr(self, f"syncbn_fc_{index}")(getattr(self, f"conv_{index}")(x)))
            probe(f"{prefix}.conv_{index}", x)
            if index < between:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = probe(f"{prefix}.conv_{self.convs}", getattr(self, f"conv_{self.convs}")(x))
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
    @one_thread
    def trained_like(cls, config: ModelConfig, seed: int = 0) -> "M3ViT":
        """A seeded random model shaped like a trained one where that matters to quantization (a random one
        flatters it): the activation tails and the routing measured on a trained M³ViT-tiny, reached block by
        block on natural images (`golden.trained_like`)."""
        from .trained_like import shape_like_trained
        model = cls.random(config, seed)
        shape_like_trained(model, seed)
        return model.eval()

    @classmethod
    def load(cls, path: str | Path) -> "M3ViT":
        """A model saved with `save` (its config and state dict in one file)."""
        data = read_checkpoint(path)
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not an M³ViT float checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
        config = ModelConfig.from_dict(data["config"])
        model = cls(config)
        model.load_official_state_dict(data["state_dict"])
        return model.eval()

    def save(self, path: str | Path) -> None:
        """The config and `official_state_dict()` in one file (`load` reads it; the state dict alone is what the
        official training code's multi-task model holds)."""
        with atomic_open(path) as file:
            torch.save({"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                        "state_dict": self.official_state_dict()}, file)

    def official_state_dict(self) -> dict:
        """The state dict named as the official multi-task model names it: the ViT under `backbone.`, each task's
        head under `decoders.<task name>.`."""
        names = [task.name for task in self.config.tasks]
        official = {}
        for key, value in self.state_dict().items():
            if key.startswith("heads."):
                _, task, rest = key.split(".", 2)
                official[f"decoders.{names[int(task)]}.{rest}"] = value
            else:
                official[f"backbone.{key}"] = value
        return official

    def load_official_state_dict(self, state_dict: dict, *, backbone_only: bool = False) -> "CheckpointReport":
        """Load weights named as the official M³ViT code names them (`map_checkpoint` says how names map and
        what is ignored). Missing keys and wrong shapes are reported together in one `CheckpointError`. With
        `backbone_only`, the task heads keep their weights and head keys in the file are ignored."""
        ours = self.state_dict()
        mapped, report = map_checkpoint(state_dict, self.config, set(ours), backbone_only=backbone_only)
        if backbone_only:
            ours = {k: v for k, v in ours.items() if not k.startswith("heads.")}
        missing = sorted(set(ours) - set(mapped))
        wrong = []
        for key in sorted(set(ours) & set(mapped)):
            value = mapped[key]
            if not isinstance(value, torch.Tensor):
                wrong.append(f"{key}: not a tensor ({type(value).__name__})")
            elif tuple(value.shape) != tuple(ours[key].shape):
                wrong.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(ours[key].shape)}")
            elif value.is_floating_point() != ours[key].is_floating_point():
                wrong.append(f"{key}: dtype {value.dtype}, expected {ours[key].dtype}")
            elif value.is_floating_point() and not torch.isfinite(value).all():
                wrong.append(f"{key}: contains NaN or inf")
        problems = []
        if missing:
            shown = ", ".join(missing[:12]) + (f", … ({len(missing) - 12} more)" if len(missing) > 12 else "")
            problems.append(f"{len(missing)} missing: {shown}")
        if wrong:
            problems.append(f"{len(wrong)} wrong: " + "; ".join(wrong[:12]))
        if problems:
            hint = (" (a backbone-only checkpoint? give --backbone-only)"
                    if missing and all(k.startswith("heads.") for k in missing) else "")
            raise CheckpointError(f"state dict does not match {self.config.name}: " + " | ".join(problems)
                                  + f" (mapped {report.mapped} keys; ignored {len(report.ignored)}){hint}")
        self.load_state_dict({k: mapped[k] for k in ours}, strict=not backbone_only)
        return report

    # Inference ---------------------------------------------------------------------------------------------

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, D] of images [B, C, H, W]: patch embedding, cls token, position embedding."""
        c, (h, w) = self.config.in_channels, self.config.image_size
        if image.dim() != 4 or tuple(image.shape[1:]) != (c, h, w):
            raise ValueError(f"image shape {tuple(image.shape)}: expected [B, {c}, {h}, {w}] for {self.config.name}")
        patches = self.patch_embed.proj(image).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(image.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def forward(self, image: torch.Tensor, task: int | str = 0, *, intermediates: bool = False, probe=None):
        """The task head's output [B, classes, H, W] for images [B, C, H, W] (or one image [C, H, W]); with
        `intermediates`, an `M3ViTOutput` holding every block's output and every MoE layer's routing too.
        `probe(name, tensor)`, if given, sees every tensor the quantizer calibrates (names as in
        `golden.quantized.array_spec`'s prefixes) and returns it."""
        probe = probe or _no_probe
        task = self.config.task_index(task)
        single = image.dim() == 3
        if single:
            image = image.unsqueeze(0)
        x = probe("embed", self.embed(image))
        blocks, routing = [], {}
        for index, block in enumerate(self.blocks):
            x, layer_routing = block(x, task, probe, f"blocks.{index}")
            blocks.append(x)
            if layer_routing is not None:
                routing[index] = layer_routing
        output = self.heads[task](x, probe, f"heads.{task}")
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


@one_thread
def calibrate(model: M3ViT, images: np.ndarray, tasks=None, percentile: float | None = None) -> dict:
    """Clip magnitudes of every tensor the quantizer needs, over float images [N, C, H, W] run with every task
    in `tasks` (default all): by probe name, plus `image`, `residual` (the whole residual stream) and
    `blocks.{b}.norm2_router` (the router's input). The clip is max |x|, or with `percentile` the largest
    per-batch `percentile`-th percentile of |x| for the int8 activations (`PERCENTILE_CLIPPED`); the residual
    stream, the router's input and the images always keep their maximum. The tensors the quantizer scales per
    channel (`PER_CHANNEL`) also get `{name}.channels`: max |x| of each channel (the last axis; V's heads
    joined), a float64 array. The inputs of the blocks' matrix products (`GRAM_INPUTS`: LayerNorm outputs, the
    attention output, the MLP's and every expert's hidden over every token) get `{name}.gram`: Σ x xᵀ over the
    tokens ([channels, channels], each batch's product in float32, summed in float64), the second moments the
    quantizer's weight rounding minimises against."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"calibration needs a non-empty batch of images [N, C, H, W], got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("calibration images contain NaN or inf")
    maxima: dict[str, float] = {"image": float(np.abs(images).max())}
    clipped: dict[str, float] = {}
    channels: dict[str, np.ndarray] = {}
    grams: dict[str, np.ndarray] = {}

    def probe(name, tensor):
        magnitude = tensor.detach().abs().flatten().float()
        maxima[name] = max(maxima.get(name, 0.0), float(magnitude.max()))
        kind = name.rsplit(".", 1)[-1]
        if kind in PER_CHANNEL:
            per_token = tensor.detach().transpose(1, 2).flatten(2) if kind == "v" else tensor.detach()  # heads
            largest = per_token.abs().reshape(-1, per_token.shape[-1]).amax(0).double().numpy()
            channels[f"{name}.channels"] = np.maximum(channels.get(f"{name}.channels", 0.0), largest)
        if kind in GRAM_INPUTS:
            rows = tensor.detach().float().reshape(-1, tensor.shape[-1])     # float32: a Gram is a statistic
            grams[f"{name}.gram"] = grams.get(f"{name}.gram", 0.0) + (rows.T @ rows).double().numpy()
        if percentile is not None and kind in PERCENTILE_CLIPPED:
            rank = max(1, min(magnitude.numel(), round(magnitude.numel() * percentile / 100)))
            clipped[name] = max(clipped.get(name, 0.0), float(magnitude.kthvalue(rank).values))
        return tensor

    config = model.config
    with torch.no_grad():
        for task in range(config.num_tasks) if tasks is None else tasks:
            model(torch.from_numpy(images), task, probe=probe)
    clips = {**maxima, **clipped, **channels, **grams}
    residual = [maxima["embed"]] + [maxima[f"blocks.{b}.{n}"] for b in range(config.depth) for n in ("mid", "out")]
    clips["residual"] = max(residual)
    for block in config.moe_blocks:
        clips[f"blocks.{block}.norm2_router"] = maxima[f"blocks.{block}.norm2"]
    return clips


PERCENTILE_CLIPPED = {"norm1", "norm2", "q", "k", "v", "attn_out", "gelu", "norm"}
PER_CHANNEL = {"norm1", "norm2", "v", "attn_out", "fc1", "gelu"}
GRAM_INPUTS = {"norm1", "norm2", "attn_out", "gelu"}


def numpy_weights(model: M3ViT) -> dict[str, np.ndarray]:
    """The state dict (parameters and batch-norm statistics) as float64 NumPy arrays, official names."""
    return {name: value.detach().double().numpy() for name, value in model.state_dict().items()
            if value.is_floating_point()}


CALIBRATION_PERCENTILE = 99.999


def quantize_model(model: M3ViT, images: np.ndarray, percentile: float | None = CALIBRATION_PERCENTILE,
                   rounding: dict | None = None):
    """Calibrate on float images [N, C, H, W] and quantize: the `QuantizedModel` of `model`. The int8
    activations are clipped at the `percentile`-th percentile of |x| (measured: 99.999 gains about 0.5 dB
    and half a point of router agreement on m3vit-tiny over the plain maximum). `rounding`: as `quantize`'s."""
    from .quantize import quantize
    return quantize(model.config, numpy_weights(model), calibrate(model, images, percentile=percentile), rounding)


def float_output(model: M3ViT, image: np.ndarray, task: int | str = 0) -> np.ndarray:
    """The task head's output [classes, H, W] for a float image [C, H, W], plain inference (for timing)."""
    with torch.inference_mode():
        return model(torch.from_numpy(np.asarray(image, np.float32)), task).numpy()


@one_thread
def float_inference(model: M3ViT, image: np.ndarray, task: int | str = 0) -> dict:
    """One float inference on a float image [C, H, W], as NumPy: `output` [classes, H, W], `blocks` [depth, T,
    D], `routing` {block: (expert ids [T, k], gate weights [T, k])}, `logits` {block: [T, E]}."""
    logits = {}

    def probe(name, tensor):
        if name.endswith(".router_logits"):
            logits[int(name.split(".")[1])] = tensor.detach().double().numpy()
        return tensor

    with torch.no_grad():
        result = model(torch.from_numpy(np.asarray(image, np.float32)), task, intermediates=True, probe=probe)
    return {"output": result.output.double().numpy(),
            "blocks": np.stack([b[0].double().numpy() for b in result.blocks]),
            "routing": {b: (r.expert_ids[0].numpy(), r.gate_weights[0].double().numpy())
                        for b, r in result.routing.items()},
            "logits": logits}


@dataclass
class CheckpointReport:
    """What loading a checkpoint did: keys mapped onto the model, prefixes stripped, keys ignored (they take no
    part in inference), and whether the heads kept their own (seeded random) weights."""

    mapped: int
    prefixes: list[str]
    ignored: list[str]
    heads_from_checkpoint: bool

    def summary(self) -> str:
        ignored = (f"; ignored {len(self.ignored)} that take no part in inference: "
                   + ", ".join(self.ignored[:6]) + (" …" if len(self.ignored) > 6 else "")) if self.ignored else ""
        stripped = f" (prefixes stripped: {', '.join(self.prefixes)})" if self.prefixes else ""
        heads = "" if self.heads_from_checkpoint else "; the task heads have seeded random weights (backbone only)"
        return f"checkpoint: {self.mapped} keys mapped{stripped}{ignored}{heads}"


CHECKPOINT_PREFIXES = ("module.", "backbone.", "encoder.")
_TRAINING_ENTRIES = ("state_dict", "model")


def map_checkpoint(checkpoint, config: ModelConfig, names: set[str], *,
                   backbone_only: bool = False) -> tuple[dict, CheckpointReport]:
    """Map a checkpoint's keys onto `names`, the model's own: a training checkpoint's `state_dict` or `model` entry is
    taken (its other entries, such as optimizer state, are ignored); `module.` (DataParallel), `backbone.` and
    `encoder.` prefixes are stripped; the official multi-task model's `decoders.<task name>.` heads become
    `heads.<task index>.`; with `backbone_only` every head key is ignored. Keys that name nothing of this model
    (a backbone classifier, a final norm, batch-norm counters) are ignored and listed."""
    ignored: list[str] = []
    if isinstance(checkpoint, dict):
        for entry in _TRAINING_ENTRIES:
            if isinstance(checkpoint.get(entry), dict):
                ignored += [f"{key} (training state)" for key in checkpoint if key != entry]
                checkpoint = checkpoint[entry]
                break
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"a checkpoint must hold a mapping of names to tensors, not {type(checkpoint).__name__}")
    tasks = {task.name: index for index, task in enumerate(config.tasks)}
    prefixes: list[str] = []
    mapped = {}
    for key, value in checkpoint.items():
        if not isinstance(key, str):
            ignored.append(repr(key))
            continue
        name = key
        changed = True
        while changed:
            changed = False
            for prefix in CHECKPOINT_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    changed = True
                    if prefix not in prefixes:
                        prefixes.append(prefix)
        if name.startswith("decoders."):
            task, _, rest = name[len("decoders."):].partition(".")
            if task in tasks:
                name = f"heads.{tasks[task]}.{rest}"
        if backbone_only and name.startswith(("heads.", "decoders.")):
            ignored.append(f"{key} (head; backbone only)")
        elif name in names:
            mapped[name] = value
        else:
            ignored.append(key)
    return mapped, CheckpointReport(len(mapped), prefixes, ignored, not backbone_only)


def read_checkpoint(path):
    """The contents of a torch checkpoint file (tensors only, no pickled code), or `CheckpointError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from error
