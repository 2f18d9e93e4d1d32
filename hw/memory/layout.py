"""The DRAM layout of weights (docs/architecture.md, section 10): one definition, used by the loader's
hardware, the tests and the firmware that builds the DRAM image.

A weight matrix W [K × N] (the transpose of the official `[out, in]` weights) for an R × C array fed
`load_rows` rows per cycle is stored as:

- a **header**: per output column n (N padded to whole N tiles), 8 bytes little-endian: the int32 bias, then a
  uint32 `PARAMETER_WORD`: the requantization multiplier (bits 0-15, in [2^14, 2^15)), its shift (bits 16-21,
  0…62) and, for fc1 (GELU mode), the column's fraction-bit count f (bits 22-25, 5…15; 15 elsewhere), the
  fields of the GEMM engine's column parameters; padding columns hold the identity (multiplier 2^14, shift
  14, f 15); padded to a bus word;
- its **slabs**: runs of whole N tiles, each at most `weight_buffer_bytes`, each starting on a bus word. Within a
  slab, N tile by N tile, K tile by K tile, ⌈R / load_rows⌉ **feed words** per tile: feed word q of
  tile (j, i) holds rows i·R + q·load_rows … + load_rows − 1 of columns j·C … j·C + C − 1, element
  (lane, c) at byte lane·C + c, zero-padded at ragged edges. A feed word takes `word_stride` bytes in
  DRAM, the next power of two of its load_rows·C bytes, so bus beats always hold whole words (no padding
  for power-of-two arrays).

So a slab is the GEMM engine's W memory image (`hw.compute.gemm.pack_w`) for its N tiles, byte for byte, and a slab
buffer holds it at feed-word addresses 0, 1, 2, …

A 3×3 convolution's weight [C_in·9, N] (`golden.ops.conv3x3`'s, rows in (channel, ky, kx) order) is stored as
the matrix `conv_weight` makes of it: rows in (ky, kx, channel) order, the channels of each tap padded to whole
K tiles with zero rows, the order in which the engine's im2col walks its K tiles.

An MoE layer stores its E experts back to back, expert e at `e · expert_bytes` from the layer's base: fc1
(header, slabs) then fc2 (header, slabs). All experts have one shape, so that product is the offset table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golden import ops
from golden.config import AcceleratorConfig, ConfigError, ModelConfig

__all__ = ["Slab", "MatrixLayout", "ExpertLayerLayout", "Load", "matrix_layout", "expert_layer_layout",
           "dense_layouts", "word_stride", "parameter_words", "conv_weight", "HEADER_COLUMN_BYTES", "PARAMETER_WORD"]

HEADER_COLUMN_BYTES = 8
IDENTITY_MULTIPLIER, IDENTITY_SHIFT, DEFAULT_FRACTION_BITS = 1 << 14, 14, ops.MAX_FRACTION_BITS
# The header's second word, field by field (least significant first): (name, bits, smallest, largest value).
PARAMETER_WORD = (("multiplier", ops.MULTIPLIER_BITS + 1, 1 << (ops.MULTIPLIER_BITS - 1),
                   (1 << ops.MULTIPLIER_BITS) - 1),
                  ("shift", ops.SHIFT_BITS, 0, ops.MAX_SHIFT),
                  ("fraction_bits", ops.FRACTION_FIELD_BITS, 0, ops.MAX_FRACTION_BITS))


def parameter_words(**fields: np.ndarray) -> np.ndarray:
    """Pack per-column parameters into `PARAMETER_WORD`s (uint32), refusing a value outside its field's range."""
    word, position = 0, 0
    for name, bits, smallest, largest in PARAMETER_WORD:
        values = np.asarray(fields[name], np.int64)
        bad = (values < smallest) | (values > largest)
        if bad.any():
            raise ValueError(f"{name} = {int(values[bad][0])} (column {int(np.flatnonzero(bad)[0])}): the header "
                             f"field holds {smallest}…{largest}")
        word = word | (values << position)
        position += bits
    return np.asarray(word, np.int64).astype(np.uint32)


def _tiles(size: int, tile: int) -> int:
    return -(-size // tile)


def _align(value: int, alignment: int) -> int:
    return _tiles(value, alignment) * alignment


def word_stride(feed_bytes: int) -> int:
    """Bytes a feed word of `feed_bytes` occupies in DRAM and in a slab buffer: the next power of two."""
    return 1 << (feed_bytes - 1).bit_length()


@dataclass(frozen=True)
class Slab:
    """`length` bytes at `offset` from the matrix's start, holding N tiles `first_tile` … + `tiles` − 1."""
    offset: int
    length: int
    first_tile: int
    tiles: int


@dataclass(frozen=True)
class MatrixLayout:
    """Where one K × N matrix's header and slabs lie, relative to the matrix's start."""

    name: str
    k: int
    n: int
    rows: int
    cols: int
    load_rows: int
    word_stride: int
    bus_bytes: int
    header_bytes: int
    slabs: tuple[Slab, ...]

    @property
    def k_tiles(self) -> int:
        return _tiles(self.k, self.rows)

    @property
    def n_tiles(self) -> int:
        return _tiles(self.n, self.cols)

    @property
    def beats(self) -> int:
        """Feed words per R × C tile."""
        return _tiles(self.rows, self.load_rows)

    @property
    def bytes(self) -> int:
        last = self.slabs[-1]
        return last.offset + last.length

    @property
    def slab_bytes(self) -> int:
        """Bytes of all slabs (what the loader reads for this matrix)."""
        return sum(slab.length for slab in self.slabs)

    def pack(self, w: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
             fraction_bits=DEFAULT_FRACTION_BITS) -> np.ndarray:
        """The matrix's bytes, header and slabs: uint8 [`bytes`]. `fraction_bits`: fc1's Q.f per column (or
        one for all). Any value outside what its field holds is refused with a `ValueError` naming it."""
        w = np.asarray(w)
        if w.shape != (self.k, self.n):
            raise ValueError(f"{self.name}: weights of shape {w.shape}, the layout is for {(self.k, self.n)}")
        fraction_bits = np.broadcast_to(np.asarray(fraction_bits), (self.n,))
        for name, values in (("bias", bias), ("multiplier", multiplier), ("shift", shift)):
            if np.shape(values) != (self.n,):
                raise ValueError(f"{self.name}: {name} of shape {np.shape(values)}, expected ({self.n},)")
        if w.min(initial=0) < -128 or w.max(initial=0) > 127:
            raise ValueError(f"{self.name}: weights outside int8")
        bias = np.asarray(bias, np.int64)
        if bias.min(initial=0) < -(1 << 31) or bias.max(initial=0) >= 1 << 31:
            raise ValueError(f"{self.name}: a bias outside int32")
        image = np.zeros(self.bytes, dtype=np.uint8)
        columns = self.n_tiles * self.cols
        header = np.zeros((columns, 2), dtype=np.uint32)
        header[:, 1] = parameter_words(multiplier=IDENTITY_MULTIPLIER, shift=IDENTITY_SHIFT,
                                       fraction_bits=DEFAULT_FRACTION_BITS)
        header[:self.n, 0] = bias.astype(np.int32).view(np.uint32)
        try:
            header[:self.n, 1] = parameter_words(multiplier=multiplier, shift=shift, fraction_bits=fraction_bits)
        except ValueError as error:
            raise ValueError(f"{self.name}: {error}") from None
        image[:columns * HEADER_COLUMN_BYTES] = header.astype("<u4").view(np.uint8).reshape(-1)
        words = self.feed_words(w)
        for slab in self.slabs:
            first = slab.first_tile * self.k_tiles * self.beats
            count = slab.tiles * self.k_tiles * self.beats
            body = np.zeros((count, self.word_stride), dtype=np.uint8)
            body[:, :words.shape[1]] = words[first:first + count]
            image[slab.offset:slab.offset + body.size] = body.reshape(-1)
        return image

    def feed_words(self, w: np.ndarray) -> np.ndarray:
        """The feed words of all N tiles in consumption order, as bytes: uint8 [words, load_rows·C]."""
        full = np.zeros((self.k_tiles * self.rows, self.n_tiles * self.cols), dtype=np.int64)
        full[:self.k, :self.n] = w
        padded = np.zeros((self.k_tiles, self.beats * self.load_rows, self.n_tiles, self.cols), dtype=np.int64)
        padded[:, :self.rows] = full.reshape(self.k_tiles, self.rows, self.n_tiles, self.cols)
        words = padded.transpose(2, 0, 1, 3).reshape(-1, self.load_rows * self.cols)
        return words.astype(np.int8).view(np.uint8)


def conv_weight(weight: np.ndarray, rows: int) -> np.ndarray:
    """A 3×3 convolution's weight [C·9, N] (rows in (channel, ky, kx) order) as the engine's im2col reads it:
    [9·⌈C / rows⌉·rows, N], rows in (ky, kx, channel) order, each tap's channels zero-padded to whole K tiles."""
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.shape[0] % 9:
        raise ValueError(f"a 3×3 convolution's weight has C·9 rows, not shape {weight.shape}")
    channels, n = weight.shape[0] // 9, weight.shape[1]
    padded = np.zeros((9, _tiles(channels, rows) * rows, n), weight.dtype)
    padded[:, :channels] = weight.reshape(channels, 9, n).transpose(1, 0, 2)
    return padded.reshape(-1, n)


def matrix_layout(k: int, n: int, accel: AcceleratorConfig, name: str = "matrix") -> MatrixLayout:
    """The layout of a K × N matrix for `accel`; `ConfigError` when not even one N tile fits a slab buffer."""
    rows, cols = accel.array_rows, accel.array_cols
    load_rows = accel.weight_feed_bytes // cols
    stride = word_stride(accel.weight_feed_bytes)
    bus = accel.dram_bytes_per_beat
    tile_bytes = _tiles(k, rows) * _tiles(rows, load_rows) * stride
    per_slab = accel.weight_buffer_bytes // tile_bytes
    if per_slab == 0:
        raise ConfigError("weight_buffer_bytes", accel.weight_buffer_bytes,
                          f"smaller than one N tile of {name} ({k} × {cols}: {tile_bytes} bytes in the layout)")
    n_tiles = _tiles(n, cols)
    header = _align(n_tiles * cols * HEADER_COLUMN_BYTES, bus)
    slabs, offset = [], header
    for first in range(0, n_tiles, per_slab):
        count = min(per_slab, n_tiles - first)
        length = _align(count * tile_bytes, bus)
        slabs.append(Slab(offset, length, first, count))
        offset += length
    return MatrixLayout(name, k, n, rows, cols, load_rows, stride, bus, header, tuple(slabs))


@dataclass(frozen=True)
class Load:
    """One loader descriptor's worth: `length` bytes at `address` into the next slab buffer; it holds N tiles
    `slab.first_tile` … of `matrix` (of expert `expert`, or None for a dense matrix)."""
    address: int
    length: int
    matrix: MatrixLayout
    slab: Slab
    expert: int | None = None


@dataclass(frozen=True)
class ExpertLayerLayout:
    """An MoE layer's E experts, each fc1 [D × h] then fc2 [h × D], `expert_bytes` apart."""

    experts: int
    fc1: MatrixLayout
    fc2: MatrixLayout

    @property
    def fc2_offset(self) -> int:
        return self.fc1.bytes

    @property
    def expert_bytes(self) -> int:
        return self.fc1.bytes + self.fc2.bytes

    @property
    def bytes(self) -> int:
        return self.experts * self.expert_bytes

    def loads(self, active: list[int], base: int = 0) -> list[Load]:
        """The slab loads of the active experts (ascending, each once) of a layer stored at `base`: per expert,
        fc1's slabs then fc2's."""
        if list(active) != sorted(set(active)) or any(not 0 <= e < self.experts for e in active):
            raise ValueError(f"active experts {list(active)}: must be ascending, distinct, in 0…{self.experts - 1}")
        loads = []
        for expert in active:
            for matrix, offset in ((self.fc1, 0), (self.fc2, self.fc2_offset)):
                start = base + expert * self.expert_bytes + offset
                loads += [Load(start + slab.offset, slab.length, matrix, slab, expert) for slab in matrix.slabs]
        return loads


def expert_layer_layout(model: ModelConfig, accel: AcceleratorConfig) -> ExpertLayerLayout:
    return ExpertLayerLayout(model.num_experts,
                             matrix_layout(model.embed_dim, model.expert_hidden, accel, "expert fc1"),
                             matrix_layout(model.expert_hidden, model.embed_dim, accel, "expert fc2"))


def dense_layouts(model: ModelConfig, accel: AcceleratorConfig) -> dict[str, MatrixLayout]:
    """The layouts of the backbone's dense matrices, by name."""
    shapes = {"patch_embed": (model.patch_dim, model.embed_dim), "qkv": (model.embed_dim, 3 * model.embed_dim),
              "proj": (model.embed_dim, model.embed_dim), "fc1": (model.embed_dim, model.mlp_hidden),
              "fc2": (model.mlp_hidden, model.embed_dim)}
    return {name: matrix_layout(k, n, accel, name) for name, (k, n) in shapes.items()}
