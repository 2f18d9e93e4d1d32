"""The quantized model: every integer array the golden model and the hardware need, with its file format.

A `QuantizedModel` is the config, a dict of named integer arrays (int8 weights in [K, N] layout, int32
biases, requantization multipliers and shifts, LayerNorm and softmax parameters, per-task routers) and the
float scales that relate its integers to real values (for dequantization and reports only; inference never
reads them). `array_spec(config)` lists every array's shape and dtype; files are checked against it.

File: a NumPy `.npz` (no pickles) holding the arrays and `__meta__`, a JSON header with the format version,
the full config and the scales.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ConfigError, ModelConfig

__all__ = ["QuantizedModel", "QuantizedFileError", "array_spec", "FORMAT"]

FORMAT = "m3vit-quantized-1"


class QuantizedFileError(ValueError):
    """A quantized-model file is unreadable, foreign, of another version, or does not match its config."""


def _linear(prefix: str, k: int, n: int, lead: tuple[int, ...] = ()) -> dict:
    return {
        f"{prefix}.weight": (lead + (k, n), np.int8),
        f"{prefix}.bias": (lead + (n,), np.int32),
        f"{prefix}.multiplier": (lead + (n,), np.int32),
        f"{prefix}.shift": (lead + (n,), np.int32),
    }


def _norm(prefix: str, d: int) -> dict:
    return {f"{prefix}.gamma": ((d,), np.int32), f"{prefix}.beta": ((d,), np.int64), f"{prefix}.shift": ((), np.int32)}


def _scalars(prefix: str, *names: str, lead: tuple[int, ...] = ()) -> dict:
    return {f"{prefix}.{name}": (lead, np.int32) for name in names}


def array_spec(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], type]]:
    """Name → (shape, dtype) of every array of a quantized `config`."""
    d, t, e, h = config.embed_dim, config.num_tokens, config.num_experts, config.expert_hidden
    spec = {"norm.eps": ((), np.int64), "embed.position": ((t, d), np.int16)}
    spec.update(_linear("patch", config.patch_dim, d))
    for b in range(config.depth):
        p = f"blocks.{b}"
        spec.update(_norm(f"{p}.norm1", d))
        spec.update(_linear(f"{p}.qkv", d, 3 * d))
        spec.update(_scalars(f"{p}.attn", "exp_multiplier", "exp_shift", "out_multiplier", "out_shift"))
        spec.update(_linear(f"{p}.proj", d, d))
        spec.update(_norm(f"{p}.norm2", d))
        if config.is_moe(b):
            spec.update(_norm(f"{p}.norm2_router", d))
            spec[f"{p}.router.weight"] = ((config.num_tasks, d, e), np.int8)
            spec.update(_scalars(f"{p}.router", "exp_multiplier", "exp_shift", lead=(config.num_tasks,)))
            spec.update(_linear(f"{p}.experts.fc1", d, h, (e,)))
            spec.update(_scalars(f"{p}.experts", "gelu_fraction_bits", "hidden_multiplier", "hidden_shift",
                                 lead=(e,)))
            spec.update(_linear(f"{p}.experts.fc2", h, d, (e,)))
        else:
            spec.update(_linear(f"{p}.fc1", d, config.mlp_hidden))
            spec.update(_scalars(f"{p}.mlp", "gelu_fraction_bits", "hidden_multiplier", "hidden_shift"))
            spec.update(_linear(f"{p}.fc2", config.mlp_hidden, d))
    for task in range(config.num_tasks):
        spec.update(_norm(f"heads.{task}.norm", d))
        for conv in config.head_layers(task):
            spec.update(_linear(f"heads.{task}.{conv.name}", conv.kernel ** 2 * conv.in_channels, conv.out_channels))
    return spec


@dataclass
class QuantizedModel:
    """A quantized M³ViT: `config`, integer `arrays` by name (see `array_spec`), float `scales` by name."""

    config: ModelConfig
    arrays: dict[str, np.ndarray]
    scales: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        problems = _check_arrays(self.config, self.arrays)
        if problems:
            raise ValueError(f"quantized {self.config.name} is inconsistent: " + "; ".join(problems))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def save(self, path: str | Path) -> None:
        meta = {"format": FORMAT, "config": self.config.to_dict(), "scales": self.scales}
        header = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(path, "wb") as file:
            np.savez(file, __meta__=header, **self.arrays)

    @classmethod
    def load(cls, path: str | Path, *, expect: ModelConfig | None = None) -> "QuantizedModel":
        """Load and check a file: its format version, its config (equal to `expect` if given) and every
        array's presence, shape and dtype. Any problem is a `QuantizedFileError` that names it."""
        path = Path(path)
        try:
            with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
                contents = {name: archive[name] for name in archive.files}
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
            raise QuantizedFileError(f"{path}: not a readable quantized-model file ({type(error).__name__}: "
                                     f"{error})") from error
        if "__meta__" not in contents:
            raise QuantizedFileError(f"{path}: no __meta__ header: not an M³ViT quantized model")
        try:
            meta = json.loads(contents.pop("__meta__").tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise QuantizedFileError(f"{path}: corrupt __meta__ header ({error})") from error
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise QuantizedFileError(f"{path}: format {found!r}, expected {FORMAT!r}")
        try:
            config = ModelConfig.from_dict(meta["config"])
        except (KeyError, TypeError, ConfigError) as error:
            raise QuantizedFileError(f"{path}: invalid config in header ({error})") from error
        if expect is not None and config != expect:
            raise QuantizedFileError(f"{path}: quantized for {config.name} {config.to_dict()}, "
                                     f"expected {expect.name} {expect.to_dict()}")
        problems = _check_arrays(config, contents)
        if problems:
            raise QuantizedFileError(f"{path}: " + "; ".join(problems))
        return cls(config, contents, dict(meta.get("scales", {})))


def _check_arrays(config: ModelConfig, arrays: dict[str, np.ndarray]) -> list[str]:
    spec = array_spec(config)
    problems = []
    missing = sorted(set(spec) - set(arrays))
    unexpected = sorted(set(arrays) - set(spec))
    if missing:
        more = " …" if len(missing) > 8 else ""
        problems.append(f"{len(missing)} missing arrays: {', '.join(missing[:8])}{more}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected arrays: {', '.join(unexpected[:8])}")
    for name in sorted(set(spec) & set(arrays)):
        shape, dtype = spec[name]
        array = arrays[name]
        if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape:
            got = (array.shape, array.dtype) if isinstance(array, np.ndarray) else type(array).__name__
            problems.append(f"{name}: {got}, expected ({shape}, {np.dtype(dtype)})")
    return problems
