"""The bytes of DRAM: tensors in the on-chip memories' word formats (`hw.control.memories`), and the map of the
regions a run uses.

A run's DRAM holds four regions, each starting on a 4 KiB boundary: the program (with room behind it for the
controller's prefetch), MODEL (weights, parameters; placed once), IMAGE (the input) and OUTPUT (what STORE
writes). `DramMap.for_program` lays them out from address 0 and says how much DRAM that takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.lib import data as data_layout

from golden.config import AcceleratorConfig, ModelConfig
from hw.compute.gemm.images import pack_x
from hw.compute.gemm.geometry import tiles
from hw.control.isa import Space
from hw.control.memories import onchip_spaces, router_geometry

__all__ = ["x_bytes", "residual_bytes", "residual_from_bytes", "routes_from_bytes", "DramMap", "REGION_ALIGNMENT"]

REGION_ALIGNMENT = 4096


def x_bytes(x: np.ndarray, accel: AcceleratorConfig, stride: int) -> bytes:
    """X [M, K] int8 in ACTIVATION / SCRATCH words: row m's K tile i at word i·`stride` + m, R bytes a word."""
    return pack_x(np.asarray(x), accel.array_rows, stride).astype(np.int8).tobytes()


def residual_bytes(x: np.ndarray, accel: AcceleratorConfig) -> bytes:
    """The residual stream [T, D] int16 in RESIDUAL words: token t's N tile j at word j·T + t."""
    t, d = x.shape
    c = accel.array_cols
    padded = np.zeros((t, tiles(d, c) * c), dtype="<i2")
    padded[:, :d] = x
    return padded.reshape(t, -1, c).transpose(1, 0, 2).tobytes()


def residual_from_bytes(data: bytes, model: ModelConfig, accel: AcceleratorConfig) -> np.ndarray:
    """The inverse of `residual_bytes` for `model`'s T × D."""
    t, d, c = model.num_tokens, model.embed_dim, accel.array_cols
    words = np.frombuffer(data, dtype="<i2").reshape(tiles(d, c), t, c)
    return words.transpose(1, 0, 2).reshape(t, -1)[:, :d].astype(np.int16)


def routes_from_bytes(data: bytes, model: ModelConfig, accel: AcceleratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """The routing record STORE writes from ROUTES (a word per token: its k experts, best first, then their Q1.15
    gate weights) as (expert ids, gate weights), both [T, k]."""
    geometry = router_geometry(model, accel)
    word_bytes = onchip_spaces(model, accel)[Space.ROUTES].word_bytes
    record = data_layout.Layout.cast(geometry.record)
    words = [int.from_bytes(data[i:i + word_bytes], "little") for i in range(0, len(data), word_bytes)]
    fields = {}
    for name in ("experts", "weights"):
        field = record[name]
        width = field.width // model.top_k
        fields[name] = np.array([[word >> (field.offset + i * width) & ((1 << width) - 1) for i in range(model.top_k)]
                                 for word in words[:model.num_tokens]])
    return fields["experts"], fields["weights"]


def _align(value: int) -> int:
    return -(-value // REGION_ALIGNMENT) * REGION_ALIGNMENT


@dataclass(frozen=True)
class DramMap:
    program: int
    model: int
    image: int
    output: int
    size: int

    @classmethod
    def for_program(cls, program_bytes: int, model_bytes: int, image_bytes: int, output_bytes: int,
                    prefetch_bytes: int) -> "DramMap":
        program = 0
        model = _align(program + program_bytes + prefetch_bytes)
        image = _align(model + model_bytes)
        output = _align(image + image_bytes)
        return cls(program, model, image, output, _align(output + output_bytes))
