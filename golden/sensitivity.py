"""The quantization-sensitivity experiment of `../shared/reference/m3vit.md` ("Quantization sensitivity"), run
on any float model: how hard a model is to quantize, independent of this project's integer scheme.

Plain fake quantization in float arithmetic: every activation the quantizer calibrates, per tensor, clipped at
its calibrated maximum, int8 (the residual stream, i.e. the embedding and every block's `mid` and `out`: int16);
the weights of every linear layer outside the experts and the routers int8 per output channel; the experts,
the routers' weights, K and V (which the float model computes inside attention) and the task heads left float.
On a trained M³ViT-tiny this gave 34.6 dB after block 0, 30.5 dB after block 3 and 92-95 % top-2 agreement,
and the int8 weights alone (every activation float) 47 dB after block 0 (`TRAINED_SENSITIVITY`);
`M3ViT.trained_like` must be no easier than that, and its weights not much harder (tests/test_trained_like.py).

`weights_floor` measures this project's own int8 weights alone (the quantizer's smoothing, scales and rounding,
every activation float): what no activation format can win back (docs/numerics.md section 12).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .fidelity import snr_db
from .float_model import calibrate, float_inference, quantize_model

__all__ = ["quantization_sensitivity", "weights_floor", "TRAINED_SENSITIVITY", "WEIGHT_KINDS"]

# A trained M³ViT-tiny (Cityscapes) in this experiment: SNR of the residual stream after blocks 0 and 3 (dB), the
# range of the routers' top-2 agreement with float, and the SNR after block 0 with the int8 weights alone.
TRAINED_SENSITIVITY = {"snr_db": {0: 34.6, 3: 30.5}, "agreement": (0.92, 0.95), "weights_snr_db": {0: 47.0}}


def _is_residual(name: str) -> bool:
    return name == "embed" or name.endswith((".mid", ".out"))


def _left_float(name: str) -> bool:
    return ".experts." in name or name.startswith("heads.") or name.endswith((".k", ".v", ".router_logits"))


def _weights_quantized(model):
    """A copy of the float model with every linear layer's weights outside the experts and routers rounded to
    int8 per output channel (the routers are parameters, not `Linear`s)."""
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, torch.nn.Linear) and not name.startswith("heads."):
                step = module.weight.abs().amax(1, keepdim=True).clamp_min(1e-30) / 127
                module.weight.copy_(torch.round(module.weight / step) * step)
    return quantized


def quantization_sensitivity(model, calibration: np.ndarray, test: np.ndarray) -> dict:
    """The experiment on float images [N, 3, H, W]: calibrated on `calibration` (every task), measured on `test`
    per task: {"snr_db": {task: [dB after each block]}, "agreement": {task: {MoE block: top-k agreement}},
    "weights_snr_db": {task: [dB after each block with the int8 weights alone, every activation float]}}."""
    limits = calibrate(model, calibration)              # max |x| of every probed tensor

    def fake_quantize(name, tensor):
        if _left_float(name) or name not in limits:
            return tensor
        levels = 32767 if _is_residual(name) else 127
        step = max(limits[name], 1e-30) / levels
        return torch.clamp(torch.round(tensor / step), -levels, levels) * step

    def observe(network, quantize, task):
        outputs, ids = {}, {}

        def probe(name, tensor):
            tensor = quantize(name, tensor)
            if name.endswith(".out"):
                outputs[int(name.split(".")[1])] = tensor.double().numpy()
            elif name.endswith(".router_logits"):
                ids[int(name.split(".")[1])] = torch.topk(tensor, k).indices.sort(-1).values
            return tensor

        network(images, task, probe=probe)
        return outputs, ids

    k, quantized = model.config.top_k, _weights_quantized(model)
    images = torch.from_numpy(np.asarray(test, np.float32))
    result = {"snr_db": {}, "agreement": {}, "weights_snr_db": {}}
    with torch.no_grad():
        for task in range(model.config.num_tasks):
            outputs, ids = observe(model, lambda name, tensor: tensor, task)
            q_outputs, q_ids = observe(quantized, fake_quantize, task)
            w_outputs, _ = observe(quantized, lambda name, tensor: tensor, task)
            result["snr_db"][task] = [snr_db(outputs[b], q_outputs[b]) for b in sorted(outputs)]
            result["weights_snr_db"][task] = [snr_db(outputs[b], w_outputs[b]) for b in sorted(outputs)]
            result["agreement"][task] = {b: float((ids[b] == q_ids[b]).all(-1).double().mean()) for b in sorted(ids)}
    return result


# The float weights the quantizer rounds in each block, by its layer's kind (`blocks.{b}.{kind}`), as [.., out, in]
_BLOCK_WEIGHTS = {"qkv": "attn.qkv.weight", "proj": "attn.proj.weight", "fc1": "mlp.fc1.weight",
                  "fc2": "mlp.fc2.weight", "experts.fc1": "mlp.experts.htoh4.weight",
                  "experts.fc2": "mlp.experts.h4toh.weight"}
WEIGHT_KINDS = ("patch", "router", *_BLOCK_WEIGHTS)


def _rounded_back(original, record):
    """`original` [.., K, N] as the quantizer rounded it: its `rounding` record (int8 weights, column scales, the
    row sums of |w| it rounded, `original`'s rows times positive factors) scaled back and divided by the factors."""
    weights, scales, row_sums = record
    factors = row_sums / np.maximum(np.abs(original).sum(-1), 1e-300)
    return weights * scales[..., None, :] / np.where(factors > 0, factors, 1.0)[..., None]


def weights_floor(model, calibration: np.ndarray, test: np.ndarray, kept_float=(), tasks=None,
                  rounding: dict | None = None) -> dict:
    """The float model with the weights of every linear layer of the backbone (and the routers) replaced by what
    the quantizer's int8 weights stand for (`quantize_model` calibrated on `calibration`), every activation float,
    against the float model on float images `test` [N, C, H, W]; the layer kinds in `kept_float` (of
    `WEIGHT_KINDS`) keep their float weights; `rounding`, the record of a `quantize_model` run already made on
    `calibration`, spares quantizing again. Returns, for each task index in `tasks` (default all),
    {"snr_db": {task: [dB after each block]}, "agreement": {task: {MoE block: top-k agreement}}}."""
    unknown = set(kept_float) - set(WEIGHT_KINDS)
    if unknown:
        raise ValueError(f"weights_floor: no layer kind {sorted(unknown)}; the kinds are {list(WEIGHT_KINDS)}")
    config = model.config
    if rounding is None:
        rounding = {}
        quantize_model(model, calibration, rounding=rounding)
    state = {name: value.detach().double().numpy() for name, value in model.state_dict().items()}
    changed = {}
    for layer, record in rounding.items():
        if layer.startswith("heads."):
            continue
        kind = "patch" if layer == "patch" else layer.split(".", 2)[2]             # blocks.{b}.{kind}
        if kind in kept_float:
            continue
        prefix = ".".join(layer.split(".")[:2])
        if kind == "patch":
            name = "patch_embed.proj.weight"
            weight = state[name].reshape(config.embed_dim, -1)
            changed[name] = _rounded_back(weight.T, record).T.reshape(state[name].shape)
        elif kind == "router":
            for task in range(config.num_tasks):
                name = f"{prefix}.mlp.gate.{task}.w_gate"
                changed[name] = _rounded_back(state[name], [part[task] for part in record])
        else:
            name = f"{prefix}.{_BLOCK_WEIGHTS[kind]}"
            weight = np.swapaxes(state[name], -1, -2)
            changed[name] = np.swapaxes(_rounded_back(weight, record), -1, -2)
    rounded_model = copy.deepcopy(model)
    with torch.no_grad():
        parameters = dict(rounded_model.named_parameters())
        for name, value in changed.items():
            parameters[name].copy_(torch.from_numpy(value))
    result = {"snr_db": {}, "agreement": {}}
    for task in range(config.num_tasks) if tasks is None else tasks:
        runs = [(float_inference(model, image, task), float_inference(rounded_model, image, task)) for image in test]
        blocks = [np.stack([run[i]["blocks"] for run in runs]) for i in (0, 1)]
        result["snr_db"][task] = [snr_db(blocks[0][:, b], blocks[1][:, b]) for b in range(config.depth)]
        result["agreement"][task] = {
            b: float(np.mean([(np.sort(f["routing"][b][0], -1) == np.sort(r["routing"][b][0], -1)).all(-1)
                              for f, r in runs])) for b in config.moe_blocks}
    return result
