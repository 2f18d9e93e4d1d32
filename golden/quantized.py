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
from .files import atomic_open
from .ops import GELU_STEP_BITS, MAX_FRACTION_BITS, MAX_SHIFT, MULTIPLIER_BITS

__all__ = ["QuantizedModel", "QuantizedFileError", "array_spec", "value_problems", "bias_room", "FORMAT"]

FORMAT = "m3vit-quantized-2"


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
            spec[f"{p}.experts.fc1.fraction_bits"] = ((e, h), np.int32)
            spec.update(_scalars(f"{p}.experts", "hidden_multiplier", "hidden_shift", lead=(e,)))
            spec.update(_linear(f"{p}.experts.fc2", h, d, (e,)))
        else:
            spec.update(_linear(f"{p}.fc1", d, config.mlp_hidden))
            spec[f"{p}.fc1.fraction_bits"] = ((config.mlp_hidden,), np.int32)
            spec.update(_scalars(f"{p}.mlp", "hidden_multiplier", "hidden_shift"))
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
        problems = _check_arrays(self.config, self.arrays) or value_problems(self.config, self.arrays)
        if problems:
            raise ValueError(f"quantized {self.config.name} is inconsistent: " + "; ".join(problems))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @classmethod
    def blank(cls, config: ModelConfig) -> "QuantizedModel":
        """`config`'s arrays with every value the least the hardware takes (weights and biases 0, multipliers
        2^14, fraction bits 5, eps 1): for what needs the shapes alone, a program's instructions and its cycles."""
        least = {"multiplier": 1 << (MULTIPLIER_BITS - 1), "fraction_bits": GELU_STEP_BITS, "eps": 1}
        arrays = {}
        for name, (shape, dtype) in array_spec(config).items():
            leaf = name.rsplit(".", 1)[-1]
            value = next((v for key, v in least.items() if leaf.endswith(key)), 0)
            arrays[name] = np.full(shape, value, dtype)
        return cls(config, arrays)

    def save(self, path: str | Path) -> None:
        meta = {"format": FORMAT, "config": self.config.to_dict(), "scales": self.scales}
        header = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_open(path) as file:
            np.savez(file, __meta__=header, **self.arrays)

    @classmethod
    def load(cls, path: str | Path, *, expect: ModelConfig | None = None) -> "QuantizedModel":
        """Load and check a file: its archive's member names and declared sizes against its config before any
        array is read (a small file cannot make the loader read gigabytes), its format version, its config
        (equal to `expect` if given), every array's presence, shape and dtype, and every value against what
        the hardware takes (`value_problems`). Any problem is a `QuantizedFileError` that names it."""
        path = Path(path)
        try:
            with open(path, "rb") as file:
                with zipfile.ZipFile(file) as archive:
                    members = {info.filename: info.file_size for info in archive.infolist()}
                    if "__meta__.npy" not in members:
                        raise QuantizedFileError(f"{path}: no __meta__ header: not an M³ViT quantized model")
                    if members["__meta__.npy"] > MAX_META_BYTES:
                        raise QuantizedFileError(f"{path}: __meta__ declares {members['__meta__.npy']:,} bytes "
                                                 f"(at most {MAX_META_BYTES:,})")
                    meta = _meta(path, np.load(archive.open("__meta__.npy"), allow_pickle=False))
                    config = _config(path, meta, expect)
                    spec = array_spec(config)
                    _check_members(path, members, spec)
                    contents = {name.removesuffix(".npy"): np.load(archive.open(name), allow_pickle=False)
                                for name in members if name != "__meta__.npy"}
        except FileNotFoundError:
            raise
        except QuantizedFileError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
            raise QuantizedFileError(f"{path}: not a readable quantized-model file ({type(error).__name__}: "
                                     f"{error})") from error
        problems = _check_arrays(config, contents) or value_problems(config, contents)
        if problems:
            raise QuantizedFileError(f"{path}: " + "; ".join(problems))
        return cls(config, contents, dict(meta.get("scales", {})))


MAX_META_BYTES = 1 << 20
_NPY_HEADER_BYTES = 4096          # a .npy member's header, beside its data


def _meta(path, header: np.ndarray) -> dict:
    try:
        meta = json.loads(np.asarray(header, np.uint8).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        raise QuantizedFileError(f"{path}: corrupt __meta__ header ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise QuantizedFileError(f"{path}: format {found!r}, expected {FORMAT!r}")
    return meta


def _config(path, meta: dict, expect: ModelConfig | None) -> ModelConfig:
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ConfigError) as error:
        raise QuantizedFileError(f"{path}: invalid config in header ({error})") from error
    if expect is not None and config != expect:
        raise QuantizedFileError(f"{path}: quantized for {config.name} {config.to_dict()}, "
                                 f"expected {expect.name} {expect.to_dict()}")
    return config


def _check_members(path, members: dict[str, int], spec: dict) -> None:
    """Every member is `<array>.npy` of an array the config has, declaring no more bytes than its shape."""
    for name, size in members.items():
        array = name.removesuffix(".npy")
        if name == "__meta__.npy":
            continue
        if not name.endswith(".npy") or array not in spec:
            raise QuantizedFileError(f"{path}: unexpected member {name!r} in the archive")
        shape, dtype = spec[array]
        largest = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize + _NPY_HEADER_BYTES
        if size > largest:
            raise QuantizedFileError(f"{path}: member {name} declares {size:,} bytes, more than its shape "
                                     f"{shape} of {np.dtype(dtype)} takes ({largest:,} with its header)")


def bias_room(k: int) -> int:
    """The largest |bias| (accumulator steps) that K int8 products of at most 2^14 cannot overflow int32 beside."""
    return (1 << 31) - 1 - k * (1 << 14)


def value_problems(config: ModelConfig, arrays: dict[str, np.ndarray]) -> list[str]:
    """Every value outside what the hardware takes, one message per array naming its first bad value:
    requantization multipliers in [2^14, 2^15), shifts 0…62, GELU fraction bits 5…15, LayerNorm γ in int16
    and β within ±2^47, eps ≥ 1, and biases that cannot overflow int32 with K worst-case products."""
    problems = []

    def check(name, values, low, high, what):
        bad = (values < low) | (values > high)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            problems.append(f"{name}{list(index) if index else ''} = {int(values[bad].flat[0])}: {what} must lie "
                            f"in {low}…{high}")

    for name, values in arrays.items():
        values = np.asarray(values)
        leaf = name.rsplit(".", 1)[-1]
        if leaf.endswith("multiplier"):
            check(name, values, 1 << (MULTIPLIER_BITS - 1), (1 << MULTIPLIER_BITS) - 1, "a multiplier")
        elif leaf.endswith("shift"):
            check(name, values, 0, MAX_SHIFT, "a shift")
        elif leaf == "fraction_bits":
            check(name, values, GELU_STEP_BITS, MAX_FRACTION_BITS, "GELU's fraction bits")
        elif leaf == "gamma":
            check(name, values, -(1 << 15), (1 << 15) - 1, "a LayerNorm γ")
        elif leaf == "beta":
            check(name, values, -(1 << 47), 1 << 47, "a LayerNorm β")
        elif name == "norm.eps":
            check(name, values, 1, 1 << 47, "LayerNorm's eps")
        elif leaf == "bias" and f"{name[:-5]}.weight" in arrays:
            k = arrays[f"{name[:-5]}.weight"].shape[-2]
            room = bias_room(k)
            check(name, values.astype(np.int64), -room, room, f"with K = {k} products, a bias")
    return problems


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
