"""The quantization-sensitivity experiment of `../shared/reference/m3vit.md` ("Quantization sensitivity"), run
on any float model: how hard a model is to quantize, independent of this project's integer scheme.

Plain fake quantization in float arithmetic: every activation the quantizer calibrates, per tensor, clipped at
its calibrated maximum, int8 (the residual stream, i.e. the embedding and every block's `mid` and `out`: int16);
the weights of every linear layer outside the experts and the routers int8 per output channel; the experts,
the routers' weights, K and V (which the float model computes inside attention) and the task heads left float.
On a trained M³ViT-tiny this gave 34.6 dB after block 0, 30.5 dB after block 3 and 92-95 % top-2 agreement,
and the int8 weights alone (every activation float) 47 dB after block 0 (`TRAINED_SENSITIVITY`);
`M3ViT.trained_like` must be no easier than that, and its weights not much harder (tests/test_trained_like.py).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .fidelity import snr_db
from .float_model import calibrate

__all__ = ["quantization_sensitivity", "TRAINED_SENSITIVITY"]

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
