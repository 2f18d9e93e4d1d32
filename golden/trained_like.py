"""A seeded synthetic M³ViT whose activations and routing look like a trained one's (`M3ViT.trained_like`).

A random ViT has light activation tails and routers that spread tokens evenly, which makes quantization look
easier than it is. This model keeps random weights but gives every block the structures a trained ViT grows,
each with a knob bisected, block by block in forward order, until the block's tensors show the ratios measured
on a trained M³ViT-tiny (`golden.fixtures.TRAINED_TAILS`, `TRAINED_ROUTING`) on natural images in [0, 1]:

- the residual stream: one outlier channel in every token (position embedding, then each MLP's fc2 bias),
  damped by the LayerNorms' γ; a spike in a second channel on the cls token, which each MLP's sink unit
  feeds;
- LayerNorm outputs: hot channels (large γ and β), and the spike channel's γ;
- attention: queries and keys share a projection and read the spike channel, so spiking tokens attend to
  themselves while the others average (and avoid the spiking tokens); V has a zero-mean column on a hot
  channel and one on the spike channel;
- MLP hidden: a few loud units per MLP (per expert) that fire on the tokens of a few positions (a place
  channel of the position embedding), GELU's heavy tail; a sink unit that fires on the spiking tokens alone;
- routers: per-expert popularity along the tokens' mean direction (12-13 of 16 experts used per image), an
  expert that favours the spike channel, the tasks' routers correlated (about a fifth of tokens share the
  pair), each scaled to the measured median top-k margin.

The ratios leave each tensor's scale free, and with it how large each update is against the residual stream it
is added to, which sets how far quantization noise travels. So the scales are the trained model's too
(`TRAINED_RMS`): the embedding, the LayerNorm outputs, the attention output and the MLP hidden at the measured
rms, and proj and fc2 of unit gain, so that each update is about as large as its input: a seventh of the
residual, as the trained model's attention output and hidden are against its residual (the update itself was not
measured). The random weights have a trained layer's tails (`_Shaper.weights`). Measured by the reference's
sensitivity experiment (`golden.sensitivity`), the model is then as hard to quantize as the trained one, within
3 dB harder and 1 dB easier (tests/test_trained_like.py).

Ratios are per image (the trained model's were measured on one image) and the median over the images;
`activation_tails` measures them and tests/test_trained_like.py holds them to the table.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig
from .fixtures import TRAINED_RMS, TRAINED_ROUTING, TRAINED_TAILS
from .images import natural_images

__all__ = ["shape_like_trained", "activation_tails", "activation_rms", "tail_targets", "rms_target",
           "routing_statistics", "tails", "TUNING_IMAGES", "TUNING_SEED"]

TUNING_IMAGES = 12
TUNING_SEED = 7919            # the tuning images are natural_images(config, TUNING_IMAGES, seed + TUNING_SEED)
PERCENTILE = 99.99
_MEASURED_WIDTH = 192         # the embed width of the model the tails were measured on
_HOT_CHANNELS = 2             # LayerNorm channels with a large γ and β
_PLACES = 0.04                # share of the patch positions that carry the place channel
_LOUD_UNITS = 4               # hidden units of each MLP (of each expert) with a large gain: GELU's tail
_WEIGHT_TAIL = 0.5            # σ of the log-normal scale of every random weight (kurtosis 3·e^(4σ²) ≈ 8)
_UPDATE_GAIN = 1.0            # proj and fc2 (random part): an update as large as their input
_SINK_LEVEL = 3.0             # the sink unit's pre-activation on the spiking tokens (and minus it on the others)
_SELF_ATTENTION = 40.0        # how far (in softmax units) a spiking token prefers itself


def _image_rows(x: torch.Tensor, images: int) -> torch.Tensor:
    return x.detach().reshape(images, -1).abs().double()


def tails(x: torch.Tensor, images: int) -> tuple[float, float]:
    """(max |x| / rms, 99.99th percentile of |x| / rms) of a tensor whose leading elements are `images`
    images' in order, each image by itself, the median over the images."""
    rows = _image_rows(x, images)
    rms = rows.pow(2).mean(-1).sqrt().clamp_min(1e-30)
    rank = min(rows.shape[1], max(1, math.ceil(rows.shape[1] * PERCENTILE / 100)))
    return (float((rows.max(-1).values / rms).median()),
            float((rows.kthvalue(rank, dim=-1).values / rms).median()))


def _tails_from(top: torch.Tensor, squares: torch.Tensor, count: int) -> tuple[float, float]:
    """`tails` of images of `count` magnitudes each, given per image their sum of squares and (a superset of)
    their largest few [images, ≥ count − rank + 1]."""
    rms = (squares / count).sqrt()
    rank = count - min(count, max(1, math.ceil(count * PERCENTILE / 100)))     # 0-based, from the largest
    top = top.topk(rank + 1, dim=-1).values
    return float((top[:, 0] / rms).median()), float((top[:, rank] / rms).median())


def _measured(table: dict, config: ModelConfig, block: int | None, tensor: str):
    """`table[tensor]`, the dense or MoE blocks' figure where the table measured both."""
    target = table[tensor]
    return target["moe" if config.is_moe(block) else "dense"] if isinstance(target, dict) else target


def tail_targets(config: ModelConfig, block: int | None, tensor: str) -> tuple[float, float]:
    """The trained model's (max/rms, 99.99th pct/rms) for `tensor` of `block` (None for the embedding),
    measured at M³ViT-tiny's width; a narrower model gets them scaled by sqrt(D / 192) (one channel holds at
    most sqrt(D) times a token's rms, so the table's ratios cannot be reached below that width)."""
    target = _measured(TRAINED_TAILS, config, block, tensor)
    scale = min(1.0, math.sqrt(config.embed_dim / _MEASURED_WIDTH))
    return target[0] * scale, target[1] * scale


def rms_target(config: ModelConfig, block: int | None, tensor: str) -> float:
    """The trained model's rms of `tensor` of `block` (None for the embedding)."""
    return _measured(TRAINED_RMS, config, block, tensor)


def _rms(x: torch.Tensor) -> float:
    return float(x.detach().double().pow(2).mean().sqrt())


def _bisect(apply, measure, target: float, low: float, high: float, steps: int = 14) -> float:
    """Set a knob (through `apply`) in [low, high], bisected in log space so that `measure()`, increasing in
    the knob, meets `target`; returns the knob's value."""
    lo, hi = math.log(low), math.log(high)
    for _ in range(steps):
        middle = (lo + hi) / 2
        apply(math.exp(middle))
        lo, hi = (middle, hi) if measure() < target else (lo, middle)
    value = math.exp((lo + hi) / 2)
    apply(value)
    return value


def _bisect_linear(apply, measure, target: float, low: float, high: float, steps: int = 20) -> float:
    """`_bisect` in linear space, for knobs that may be negative."""
    for _ in range(steps):
        middle = (low + high) / 2
        apply(middle)
        low, high = (middle, high) if measure() < target else (low, middle)
    apply((low + high) / 2)
    return (low + high) / 2


def _probed(module_call) -> dict:
    """The tensors a module call shows its probe, by the last part of their name (experts' concatenated)."""
    seen = {}

    def probe(name, tensor):
        key = name.rsplit(".", 1)[-1]
        seen[key] = torch.cat([seen[key], tensor], -1) if ".experts." in name and key in seen else tensor
        return tensor

    module_call(probe)
    return seen


def _activations(model, images: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
    """Every tensor of `TRAINED_TAILS` in every block over float images [N, C, H, W] with task 0, by name
    (`embed`, `blocks.{b}.{tensor}`), a MoE block's experts pooled (each on every token, as calibration sees
    them); and the number of images."""
    count = len(images)
    seen = {}

    def probe(name, tensor):
        parts = name.rsplit(".", 2)
        key = f"{parts[0]}.{parts[2]}" if ".experts." in name else name      # experts pooled
        if key.endswith((".fc1", ".q", ".k")) or key.startswith("heads."):
            return tensor
        shaped = tensor.detach().reshape(count, -1, tensor.shape[-1]) if ".experts." in name else tensor
        seen[key] = torch.cat([seen[key], shaped], -1) if key in seen else shaped
        return tensor

    with torch.no_grad():
        model(torch.from_numpy(np.asarray(images, np.float32)), 0, probe=probe)
    return seen, count


def activation_tails(model, images: np.ndarray) -> dict[str, tuple[float, float]]:
    """(max/rms, 99.99th pct/rms) of every tensor of `_activations`, by name."""
    seen, count = _activations(model, images)
    return {name: tails(tensor, count) for name, tensor in seen.items()}


def activation_rms(model, images: np.ndarray) -> dict[str, float]:
    """The rms of every tensor of `_activations` over all the images, by name."""
    return {name: _rms(tensor) for name, tensor in _activations(model, images)[0].items()}


class _Shaper:
    """Shapes one model block by block; `x` is the residual stream entering the next block."""

    def __init__(self, model, seed: int):
        self.model, self.config = model, model.config
        d = self.config.embed_dim
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.outlier, self.spike, self.place = (int(c) for c in torch.randperm(d, generator=self.generator)[:3])
        self.images = torch.from_numpy(natural_images(self.config, TUNING_IMAGES, seed + TUNING_SEED))
        self.count = TUNING_IMAGES

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator)

    def weights(self, *shape) -> torch.Tensor:
        """Random weights of unit variance whose tails are a trained layer's: normal, each times a log-normal
        scale (exp(σz), σ = `_WEIGHT_TAIL`), so that int8 per output channel costs what it costs a trained
        M³ViT-tiny (`m3vit.md`: 47 dB after block 0; plain normal weights would cost 4-5 dB less)."""
        scale = torch.exp(_WEIGHT_TAIL * self.randn(*shape) - _WEIGHT_TAIL ** 2)
        return self.randn(*shape) * scale

    def tails(self, x) -> tuple[float, float]:
        return tails(x, self.count)

    def spike_sign(self, x: torch.Tensor) -> float:
        """The sign of the cls token's spike in the residual x."""
        return 1.0 if float(x[:, 0, self.spike].sum()) >= 0 else -1.0

    def spike_peak(self, x: torch.Tensor, sign: float) -> float:
        """The residual's spike against its rms: per image the largest value in the spike channel times `sign`,
        over the image's rms; the median over the images (increasing in what a knob adds to the spike)."""
        x = x.reshape(self.count, -1, x.shape[-1])
        peak = (sign * x[..., self.spike]).max(-1).values
        return float((peak / x.pow(2).mean((1, 2)).sqrt()).median())

    def embedding(self) -> torch.Tensor:
        model, target = self.model, tail_targets(self.config, None, "embed")

        def set_outlier(a):
            model.pos_embed[..., self.outlier] = a

        # A place channel: a few percent of the patch positions carry it (what an MLP's loud units detect).
        patches = self.config.num_patches
        places = self.places = 1 + torch.randperm(patches, generator=self.generator)[:max(1, round(_PLACES * patches))]
        model.pos_embed[..., self.place] = 0.0
        model.cls_token[..., self.spike] = 0.0
        # The position embedding carries as much as the patches (a learned one does), so the residual's energy
        # hardly depends on the image.
        patches_only = model.embed(self.images) - model.pos_embed
        model.pos_embed.copy_(self.randn(*model.pos_embed.shape) * float(patches_only.pow(2).mean().sqrt()))
        # The spike channel is the cls token's alone: nothing else writes it (here, in proj and in fc2).
        model.pos_embed[..., self.spike] = 0.0
        model.patch_embed.proj.weight[self.spike] = 0.0
        model.patch_embed.proj.bias[self.spike] = 0.0
        embedded = model.embed(self.images)
        model.pos_embed[0, places, self.place] = 3 * float(embedded.pow(2).mean().sqrt())
        _bisect(set_outlier, lambda: self.tails(model.embed(self.images))[1], target[1], 1e-3, 100.0)
        x = model.embed(self.images)
        # The cls token spikes in the spike channel, to the embedding's own maximum.
        model.cls_token[..., self.spike] = float(x.pow(2).mean().sqrt()) * target[0]
        scale = rms_target(self.config, None, "embed") / _rms(model.embed(self.images))
        for parameter in (model.patch_embed.proj.weight, model.patch_embed.proj.bias, model.pos_embed,
                          model.cls_token):
            parameter *= scale
        return model.embed(self.images)

    def norm(self, norm, x: torch.Tensor, index: int, name: str) -> torch.Tensor:
        """γ ≈ 1 ± 0.1, β ≈ ±0.02, the outlier channel damped; hot channels' γ and β → the output's 99.99th
        percentile, the spike channel's γ → its own peak at the output's maximum ratio. Where the hot channels
        reach that maximum first, the spike still reaches it too: with a small γ there the attention could read
        the spike only through a q/k weight tens of times its others, which sets every q/k row's int8 step (a
        trained model's int8 weights cost little, `m3vit.md`). Then γ and β scaled together to the output's rms.
        `name`: norm1 or norm2 of block `index`."""
        d, target = self.config.embed_dim, tail_targets(self.config, index, name)
        norm.weight.copy_(1 + 0.1 * self.randn(d))
        norm.bias.copy_(0.02 * self.randn(d))
        norm.weight[self.outlier] = 0.1
        free = torch.tensor([c for c in range(d) if c not in (self.outlier, self.spike, self.place)])
        hot = free[torch.randperm(len(free), generator=self.generator)[:_HOT_CHANNELS]]
        signs = torch.where(torch.rand(_HOT_CHANNELS, generator=self.generator) < 0.5, -1.0, 1.0)

        def set_hot(g):
            norm.weight[hot] = g / 2
            norm.bias[hot] = g * signs

        def set_spike(s):
            norm.weight[self.spike] = s

        def spike_peak():
            normed = norm(x)
            return self.spike_peak(normed, self.spike_sign(normed))

        for _ in range(2):
            _bisect(set_hot, lambda: self.tails(norm(x))[1], target[1], 0.05, 200.0)
            _bisect(set_spike, spike_peak, target[0], 0.05, 200.0)
        _bisect(set_hot, lambda: self.tails(norm(x))[1], target[1], 0.05, 200.0)
        scale = rms_target(self.config, index, name) / _rms(norm(x))
        norm.weight *= scale
        norm.bias *= scale
        return hot

    def attention(self, block, index: int, x: torch.Tensor, hot: torch.Tensor) -> torch.Tensor:
        """Q and K: a shared random projection scaled by τ, plus the spike channel read by both so a spiking
        token prefers itself by `_SELF_ATTENTION`; V: per head a zero-mean column on a hot channel and one on
        the spike channel (→ V's maximum); τ → the output's maximum (the ordinary tokens' values average out
        as τ falls, the spiking tokens' do not)."""
        config = self.config
        d, heads, hd = config.embed_dim, config.num_heads, config.head_dim
        n1 = block.norm1(x)
        qkv = block.attn.qkv
        shared = self.weights(d, d) / math.sqrt(d)
        key = shared + 0.3 * self.weights(d, d) / math.sqrt(d)
        direction = self.randn(heads, hd)
        direction = (direction / direction.norm(dim=-1, keepdim=True)).flatten()
        spikes = n1[..., self.spike].flatten()
        peak = float(spikes[spikes.abs().argmax()])
        spike_gain = math.sqrt(2 * _SELF_ATTENTION * math.sqrt(hd)) / max(abs(peak), 1e-6)
        unit = n1.reshape(-1, d).mean(0)
        unit /= unit.norm().clamp_min(1e-12)
        values = self.weights(d, d) / math.sqrt(d)
        values[:, self.spike] = 0                # only V's spike column carries the spikes
        qkv.weight[2 * d:] = values - (values @ unit)[:, None] * unit[None, :]   # V: zero mean over the tokens
        qkv.bias.copy_(0.02 * self.randn(3 * d))
        # A query offset of half the spike's: a spiking token prefers itself by _SELF_ATTENTION, and the others
        # avoid it by as much (they would otherwise read its spike through V and spread it into every token).
        qkv.bias[:d] -= spike_gain * peak / 2 * direction
        v_hot = torch.arange(heads) * hd + 2 * d
        v_spike = v_hot + 1
        # V's hot column: zero mean over the tokens (averaging removes it, as in a trained ViT)
        qkv.weight[v_hot, :] = 0
        qkv.weight[v_hot, hot[0]] = 1 / float(n1[..., hot[0]].std())
        qkv.bias[v_hot] = -qkv.weight[v_hot, hot[0]] * n1[..., hot[0]].mean()

        def output():
            return _probed(lambda probe: block.attn(n1, probe, "attention"))

        def set_sharpness(tau):
            qkv.weight[:d] = tau * shared
            qkv.weight[d:2 * d] = tau * key
            qkv.weight[:2 * d, self.spike] += spike_gain * direction.repeat(2)

        def set_v_spike(g):
            qkv.weight[v_spike, :] = 0
            qkv.weight[v_spike, self.spike] = g

        v_target, out_target = tail_targets(config, index, "v"), tail_targets(config, index, "attn_out")
        set_sharpness(1.0)
        for _ in range(2):
            _bisect(set_v_spike, lambda: self.tails(output()["v"])[0], v_target[0], 1e-3, 100.0)
            _bisect(set_sharpness, lambda: -self.tails(output()["attn_out"])[0], -out_target[0], 1e-3, 10.0)
        scale = rms_target(config, index, "attn_out") / _rms(output()["attn_out"])
        qkv.weight[2 * d:] *= scale
        qkv.bias[2 * d:] *= scale
        return self.projection(block, index, x, n1, v_spike - 2 * d)

    def projection(self, block, index: int, x: torch.Tensor, n1: torch.Tensor, spike_columns) -> torch.Tensor:
        """proj: a random matrix of unit gain (`_UPDATE_GAIN`) that reads V's spike columns into the spike
        channel (→ mid's maximum)."""
        d = self.config.embed_dim
        proj = block.attn.proj
        proj.weight.copy_(_UPDATE_GAIN * self.weights(d, d) / math.sqrt(d))
        proj.weight[:, spike_columns] = 0
        proj.weight[self.spike] = 0
        proj.bias.copy_(0.02 * self.randn(d))
        sign = self.spike_sign(x)     # V's spike columns carry n1's spike, of the residual's sign (γ > 0)

        def set_spike(value):
            proj.weight[self.spike, spike_columns] = value * sign

        _bisect_linear(set_spike, lambda: self.spike_peak(x + block.attn(n1), sign),
                       tail_targets(self.config, index, "mid")[0], -10.0, 10.0)
        return block.attn(n1)

    def block(self, index: int, block, x: torch.Tensor) -> torch.Tensor:
        config = self.config
        hot = self.norm(block.norm1, x, index, "norm1")
        mid = x + self.attention(block, index, x, hot)
        hot = self.norm(block.norm2, mid, index, "norm2")
        n2 = block.norm2(mid)
        if config.is_moe(index):
            self.routers(block.mlp, n2)
        return self.mlp(block, index, n2, mid, hot)

    def mlp(self, block, index: int, n2: torch.Tensor, mid: torch.Tensor, hot: torch.Tensor) -> torch.Tensor:
        """The MLP (dense, or every expert): random units of a common gain (→ the hidden's rms); a few loud units
        that fire on the place tokens, their gains falling from unit to unit (gain → GELU's maximum, slope → its
        99.99th percentile); a sink unit that fires on the spiking tokens alone and writes the spike channel
        (→ the block output's maximum); fc2's bias on the outlier channel (→ its 99.99th percentile). Returns
        the block's output."""
        config = self.config
        if config.is_moe(index):
            experts = block.mlp.experts
            fc1_w, fc1_b, fc2_w, fc2_b = (experts.htoh4.weight, experts.htoh4.bias, experts.h4toh.weight,
                                          experts.h4toh.bias)
        else:
            fc1_w, fc1_b = block.mlp.fc1.weight[None], block.mlp.fc1.bias[None]
            fc2_w, fc2_b = block.mlp.fc2.weight[None], block.mlp.fc2.bias[None]
        e, h, d = fc1_w.shape
        fc1_w.copy_(self.weights(e, h, d) / math.sqrt(d))
        fc1_w[..., self.spike] *= 0.1            # the spiking tokens do not drive every unit
        fc1_b.copy_(0.1 * self.randn(e, h))
        fc2_w.copy_(_UPDATE_GAIN * self.weights(e, d, h) / math.sqrt(h))
        fc2_w[:, self.spike] = 0
        fc2_b.copy_(0.02 * self.randn(e, d))
        tokens = n2.reshape(-1, d)
        units = [torch.randperm(h, generator=self.generator)[:_LOUD_UNITS + 1] for _ in range(e)]
        loud, sink = [u[:-1] for u in units], [int(u[-1]) for u in units]
        low, high = float(n2[..., self.place].median()), float(n2[:, self.places, self.place].mean())
        order = torch.randperm(e * _LOUD_UNITS, generator=self.generator).reshape(e, _LOUD_UNITS)
        step = order / max(1, e * _LOUD_UNITS - 1)
        knobs = {"gain": 1.0, "slope": 0.3}

        def set_knob(name):
            """The loud units: the place channel above a quarter of the way between its two levels, in units
            of their distance, times gain × (1 − slope × the unit's rank among the layer's loud units)."""
            def apply(value):
                knobs[name] = value
                for expert, rows in enumerate(loud):
                    g = knobs["gain"] * (1 - knobs["slope"] * step[expert])
                    fc1_w[expert, rows] = 0
                    fc1_w[expert, rows, self.place] = g / (high - low)
                    fc1_b[expert, rows] = -g * (0.75 * low + 0.25 * high) / (high - low)
            return apply

        # The sink unit: the spike channel beyond half the largest spike, ±_SINK_LEVEL from its threshold, so that
        # its GELU output is _SINK_LEVEL on the spiking tokens and about zero on the others (GELU(-3) ≈ -0.004).
        spikes = tokens[:, self.spike]
        peak = spikes[spikes.abs().argmax()]
        sink_gain = _SINK_LEVEL / float(peak.abs() / 2)
        for expert, row in enumerate(sink):
            fc1_w[expert, row] = 0
            fc1_w[expert, row, self.spike] = sink_gain * peak.sign()
            fc1_b[expert, row] = -sink_gain * peak.abs() / 2

        # GELU's tails, every expert on every token as calibration sees them: the other units once per body
        # gain (the random units' scale, → the hidden's rms), the loud units at each step.
        quiet = torch.ones(e, h, dtype=torch.bool)
        for expert, rows in enumerate(loud):
            quiet[expert, rows] = False
        body = quiet.clone()
        body[torch.arange(e), torch.tensor(sink)] = False
        body_w, body_b = fc1_w[body].clone(), fc1_b[body].clone()
        pre = torch.einsum("td,ehd->eht", tokens, fc1_w) + fc1_b[..., None]
        count = e * h * tokens.shape[0] // self.count
        largest = count - math.ceil(count * PERCENTILE / 100) + 1
        fixed = {}

        def per_image(values):
            values = values.abs().reshape(-1, self.count, tokens.shape[0] // self.count)
            return values.transpose(0, 1).reshape(self.count, -1).double()

        def image_squares(values):
            values = values.reshape(-1, self.count, tokens.shape[0] // self.count)
            return torch.linalg.vector_norm(values, dim=(0, 2), dtype=torch.float64) ** 2

        body_pre, sink_values = pre[body], F.gelu(pre[quiet & ~body])
        sink_squares = image_squares(sink_values)

        def set_body(g):
            """The body units at gain g: their sum of squares per image now (the hidden's rms bisects on it), their
            largest values when the tails ask (`body_top`), their weights once the gain is found."""
            fixed.update(gain=g, squares=image_squares(F.gelu(g * body_pre)) + sink_squares, top=None)

        def body_top():
            if fixed["top"] is None:
                values = torch.cat([per_image(F.gelu(fixed["gain"] * body_pre)), per_image(sink_values)], -1)
                fixed["top"] = values.topk(largest, dim=-1).values
            return fixed["top"]

        def loud_values():
            return torch.cat([F.gelu(tokens @ fc1_w[expert, rows].T + fc1_b[expert, rows]).abs()
                              for expert, rows in enumerate(loud)], -1).reshape(self.count, -1).double()

        def hidden_rms():
            return float(((fixed["squares"] + loud_values().pow(2).sum(-1)) / count).sqrt().median())

        def hidden_tails():
            values = loud_values()
            return _tails_from(torch.cat([body_top(), values], -1), fixed["squares"] + values.pow(2).sum(-1),
                               count)

        def output():
            return mid + block.mlp(n2, 0)[0]

        sign = self.spike_sign(mid)

        def set_sink_row(w):
            for expert, row in enumerate(sink):
                fc2_w[expert, self.spike, row] = w * sign

        # fc2's bias on the outlier channel, along the outlier's sign: from cancelling it to adding to it.
        outlier = float(mid[..., self.outlier].mean())
        outlier_sign = 1.0 if outlier >= 0 else -1.0

        def set_outlier_bias(b):
            fc2_b[:, self.outlier] = b * outlier_sign

        gelu_target, out_target = tail_targets(config, index, "gelu"), tail_targets(config, index, "out")
        gelu_rms = rms_target(config, index, "gelu")
        set_knob("gain")(1.0)
        for rounds in (3, 1):
            _bisect(set_body, hidden_rms, gelu_rms, 1e-3, 100.0)
            for _ in range(rounds):
                _bisect(set_knob("gain"), lambda: hidden_tails()[0], gelu_target[0], 0.01, 1000.0)
                # a steeper slope, fewer units near the top: bisect on the negated percentile
                _bisect_linear(set_knob("slope"), lambda: -hidden_tails()[1], -gelu_target[1], 0.0, 0.95)
        _bisect(set_knob("gain"), lambda: hidden_tails()[0], gelu_target[0], 0.01, 1000.0)
        fc1_w[body], fc1_b[body] = fixed["gain"] * body_w, fixed["gain"] * body_b
        for _ in range(2):
            _bisect_linear(set_outlier_bias, lambda: self.tails(output())[1], out_target[1], -abs(outlier), 100.0)
            _bisect_linear(set_sink_row, lambda: self.spike_peak(output(), sign), out_target[0], -100.0, 100.0)
        return output()

    def routers(self, moe, n2: torch.Tensor) -> None:
        """Every task's router: a random base, correlated between tasks by ρ, plus per-expert popularity along
        the tokens' mean direction (spread → experts used per image) and one favourite expert per task reading
        the spike channel (→ the logits' maximum); ρ → the tasks' shared pairs; then each router scaled to
        its median margin."""
        config = self.config
        d, e, tasks, k = config.embed_dim, config.num_experts, config.num_tasks, config.top_k
        tokens = n2.reshape(-1, d)
        mean = tokens.mean(0)
        direction = mean / mean.norm().clamp_min(1e-12) ** 2
        unit = mean / mean.norm().clamp_min(1e-12)
        base = [self.weights(d, e) / math.sqrt(d) for _ in range(tasks)]
        base = [w - unit[:, None] * (unit @ w)[None, :] for w in base]   # popularity alone sets the mean
        popularity = [-self.randn(e) ** 2 for _ in range(tasks)]   # most experts alike, a few out of favour
        favourite = [int(torch.randint(e, (1,), generator=self.generator)) for _ in range(tasks)]
        knobs = {"spread": 1.0, "rho": 0.5, "spike": 0.0}
        token_spread = float((tokens @ base[0]).std())
        spike_scale = token_spread / float(tokens[:, self.spike].abs().max().clamp_min(1e-6))

        def build():
            rho, other = knobs["rho"], math.sqrt(1 - knobs["rho"] ** 2)
            for t in range(tasks):
                w = base[t] if t == 0 else rho * base[0] + other * base[t]
                p = popularity[t] if t == 0 else rho * popularity[0] + other * popularity[t]
                w = w + knobs["spread"] * token_spread * direction[:, None] * p[None, :]
                w[self.spike, favourite[t]] += knobs["spike"] * spike_scale
                moe.gate[t].w_gate.copy_(w)

        def logits():
            build()
            return [(n2 @ moe.gate[t].w_gate) for t in range(tasks)]

        def set_knob(name):
            return lambda value: knobs.__setitem__(name, value)

        used_target = sum(TRAINED_ROUTING["experts_used"]) / 2 / 16 * e
        logit_target = tail_targets(config, None, "router_logits")[0]
        for _ in range(2):
            _bisect(set_knob("spike"), lambda: self.tails(logits()[0])[0], logit_target, 1e-2, 1000.0)
            # more spread, fewer experts used: bisect on the negated count
            _bisect(set_knob("spread"), lambda: -routing_statistics(logits(), k, e)["experts_used"], -used_target,
                    1e-3, 100.0)
            if tasks > 1:
                _bisect(set_knob("rho"), lambda: routing_statistics(logits(), k, e)["shared_pair"],
                        TRAINED_ROUTING["shared_pair"], 1e-3, 0.999)
        _bisect(set_knob("spike"), lambda: self.tails(logits()[0])[0], logit_target, 1e-2, 1000.0)
        if k < e:
            for t, target in enumerate(_margin_targets(tasks)):
                top = torch.topk(n2 @ moe.gate[t].w_gate, k + 1, dim=-1).values
                moe.gate[t].w_gate *= target / float((top[..., -2] - top[..., -1]).median())


def shape_like_trained(model, seed: int) -> None:
    """Give the random `model` (an `M3ViT`) the tails and routing of a trained one, in place (see above)."""
    shaper = _Shaper(model, seed)
    with torch.no_grad():
        x = shaper.embedding()
        for index, block in enumerate(model.blocks):
            x = shaper.block(index, block, x)


def routing_statistics(logits: list[torch.Tensor], top_k: int, num_experts: int) -> dict:
    """Routing figures of one MoE layer from each task's logits [images, T, E]: experts used per image (mean),
    tokens per used expert (min, max), each task's median top-k margin, and the share of tokens whose expert
    set the first two tasks agree on."""
    ids = [torch.sort(l, dim=-1, descending=True, stable=True).indices[..., :top_k] for l in logits]
    used, sizes, margins = [], [], []
    for task_ids, task_logits in zip(ids, logits):
        for image in task_ids:
            counts = torch.bincount(image.flatten(), minlength=num_experts)
            used.append(int((counts > 0).sum()))
            sizes += counts[counts > 0].tolist()
        if top_k < num_experts:
            top = torch.topk(task_logits, top_k + 1, dim=-1).values
            margins.append(float((top[..., -2] - top[..., -1]).median()))
    shared = None
    if len(ids) > 1:
        shared = float((ids[0].sort(-1).values == ids[1].sort(-1).values).all(-1).double().mean())
    return {"experts_used": sum(used) / len(used), "tokens_per_expert": (min(sizes), max(sizes)),
            "margin_median": margins, "shared_pair": shared}


def _margin_targets(tasks: int) -> list[float]:
    low, high = TRAINED_ROUTING["margin_median"]
    return [low + (high - low) * t / max(1, tasks - 1) for t in range(tasks)]
