"""The task heads' program (docs/architecture.md, section 6): LayerNorm of the backbone's patch tokens, the 3×3
convolutions by im2col over a band of input rows, the ×2 upsamplings on the way out to DRAM, the 1×1
classifier, for one task.

Feature maps between the convolutions live in DRAM (the OUTPUT region, `FeatureMap`): a row a run of channel tiles,
each `width` pixels of one word (R int8 channels; the classifier's output C int16), so a row is one LOAD into a
band slot and one STORE or UPSAMPLE out of the output ring. On chip, a convolution reads the normed tokens in
ACTIVATION (the first: the whole map is there, K-tile-major by token) or a band of three input rows in SCRATCH (row
y in slot y mod 3, loaded before the first output row that needs it), and writes its output rows into a ring of
three in SCRATCH after the band (row y in slot y mod 3; a GEMM per block of at most T pixels, the engine's rows).
The last convolution's output row, which the classifier takes at once, is one row in ACTIVATION from word 0, over
the normed tokens (`hw.memory.plan.head_row_in_activation`; after the band when that convolution is the first).
Once output row y is in, the rows it completes go out: UPSAMPLE of output rows 2y − 1 and 2y (¾ and ¼ of rows y − 1
and y; row 0 and the last from the edge row alone) into the next map, or a STORE of the row when no upsampling
follows, or, after the last 3×3 convolution, the classifier on the row (a 1×1 im2col GEMM into a ring of three in
RESIDUAL, int16), then its STORE or UPSAMPLE into the head's output.

Loop order, per convolution: output rows, pixel blocks, the matrix's slabs (weight tiles): the weights are
read once per pixel block, the input map once, the output map written once (`head_traffic` states the bytes
per layer).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from hw.compute.gemm.geometry import GemmMode, tiles
from hw.control.isa import Opcode, Operand, Region, Space
from hw.memory.layout import HEADER_COLUMN_BYTES, conv_weight, matrix_layout
from hw.memory.plan import HEAD_BAND_ROWS, HEAD_RING_ROWS, head_row_in_activation

from .compiler import CompileError, Output

__all__ = ["FeatureMap", "compile_head", "head_output", "head_traffic", "map_bytes"]


@dataclass(frozen=True)
class FeatureMap:
    """A map in the OUTPUT region at `offset`: `height` rows of `tiles` channel tiles × `width` pixels, a pixel
    a word of `word_bytes` (channel tile c, pixel x of row y at offset + (y·tiles + c)·width·word_bytes + x)."""
    offset: int
    height: int
    width: int
    tiles: int
    word_bytes: int

    @property
    def row_bytes(self) -> int:
        return self.tiles * self.width * self.word_bytes

    @property
    def bytes(self) -> int:
        return self.height * self.row_bytes

    def row(self, y: int) -> int:
        return self.offset + y * self.row_bytes


def map_bytes(values: np.ndarray, lanes: int, bits: int) -> bytes:
    """A map [C, H, W] as a `FeatureMap` stores it: channels padded to tiles of `lanes`, values of `bits`."""
    c, h, w = values.shape
    padded = np.zeros((tiles(c, lanes) * lanes, h, w), np.int64)
    padded[:c] = values
    words = padded.reshape(-1, lanes, h, w).transpose(2, 0, 3, 1)       # [H, tiles, W, lanes]
    return words.astype(np.int8 if bits == 8 else np.int16).tobytes()


def head_output(data: bytes, channels: int, height: int, width: int, lanes: int) -> np.ndarray:
    """A head's int16 output [channels, H, W] from its `FeatureMap` bytes."""
    words = np.frombuffer(data, np.int16).reshape(height, -1, width, lanes)
    return words.transpose(1, 3, 0, 2).reshape(-1, height, width)[:channels]


def _blocks(model, width: int) -> list[tuple[int, int]]:
    """The pixel blocks (first, pixels) of a row `width` pixels wide: a GEMM's rows, up to every token (the engine's
    M), as few blocks as that allows, of equal size but the last."""
    size = -(-width // -(-width // model.num_tokens))
    return [(first, min(size, width - first)) for first in range(0, width, size)]


def head_traffic(model, accel, task: int, norm_bytes: int) -> list[dict]:
    """The DRAM bytes each layer of `task`'s head reads and writes in the program's loop order (output rows ×
    pixel blocks × the matrix's slabs): {layer, weights (slabs and column parameters, once per pixel block),
    input (the map's rows, once), output (its rows, or the ×2's)}; `norm_bytes` the LayerNorm's parameters.
    Their sum and the instructions are what a head's run must move (`firmware.run`)."""
    r, c = accel.array_rows, accel.array_cols
    between, after = model.head_upsamples()
    layers = model.head_layers(task)
    rows = [{"layer": "norm", "weights": norm_bytes, "input": 0, "output": 0}]
    for index, conv in enumerate(layers):
        classifier = index == len(layers) - 1
        k = conv.in_channels if classifier else 9 * tiles(conv.in_channels, r) * r
        layout = matrix_layout(k, conv.out_channels, accel, conv.name)
        per_block = layout.slab_bytes + layout.n_tiles * c * HEADER_COLUMN_BYTES
        blocks = len(_blocks(model, conv.width))
        word = 2 * c if classifier else r
        out_row = tiles(conv.out_channels, c if classifier else r) * conv.width * word
        scale = 2 if (index < between or (classifier and after)) else 1
        rows.append({"layer": conv.name, "weights": conv.height * blocks * per_block,
                     "input": 0 if index in (0, len(layers) - 1) else conv.height * tiles(conv.in_channels, r)
                     * conv.width * r,
                     "output": scale * conv.height * scale * out_row if (classifier or index < between
                                                                        or index < len(layers) - 2) else 0})
    return rows


def _upsample_rows(builder, memory: Space, slot, y: int, height: int, width: int, channel_tiles: int,
                   target: FeatureMap) -> None:
    """The output rows of a ×2 that input row y completes (2y − 1 and 2y; the first and the last from the edge
    row alone), each an UPSAMPLE of ring rows (`slot(row)`: a row's first word) into `target`."""
    rows = [(0, 0, 0)] if y == 0 else [(2 * y - 1, y - 1, y), (2 * y, y, y - 1)]
    if y == height - 1:
        rows.append((2 * height - 1, y, y))
    for out_row, near, far in rows:
        builder.emit(Opcode.UPSAMPLE, memory=memory, near=slot(near), far=slot(far), width=width, tiles=channel_tiles,
                     stride=width, region=Region.OUTPUT, address=target.row(out_row))


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise CompileError(what)


def compile_head(builder, task: int) -> None:
    """Emit `task`'s head after the backbone (its output in RESIDUAL): outputs `head.{task}.input.{conv}` (each
    3×3 convolution's input map but the first, `FeatureMap` bytes) and `head.{task}.output` (the int16
    prediction, C int16 a word)."""
    model, accel, q = builder.model, builder.accel, builder.quantized
    r, t = accel.array_rows, model.num_tokens
    prefix = f"heads.{task}"
    between, after = model.head_upsamples()
    _check(after <= 1, f"{model.name}: {after} ×2 stages after the classifier; the head's program does one")
    layers = model.head_layers(task)
    classifier = layers[-1]
    scratch = builder.spaces[Space.SCRATCH].depth
    classifier_row = _classifier(builder, task, classifier, after)
    builder.layer(f"{prefix}.norm", Opcode.LAYERNORM)
    builder.layernorm([f"{prefix}.norm"], rows=t - 1, source=1, destination=0)
    source: FeatureMap | None = None          # None: the normed tokens in ACTIVATION
    # What a row's products leave to do (its output rows out, the band's next rows in) waits for the next
    # block's first slab LOADs: they go to the loader first, so the slab loads while these run.
    pending = []
    for index, conv in enumerate(layers[:-1]):
        h, w = conv.height, conv.width
        in_tiles, out_tiles = tiles(conv.in_channels, r), tiles(conv.out_channels, r)
        last = index == len(layers) - 2
        band = 0 if source is None else HEAD_BAND_ROWS * in_tiles * w
        ring, ring_rows = out_tiles * w, 1 if last else HEAD_RING_ROWS     # the classifier takes each row at once
        ring_space = Space.ACTIVATION if last and head_row_in_activation(model) else Space.SCRATCH
        if ring_space == Space.ACTIVATION:       # over the normed tokens, which only the first convolution reads
            activation = builder.spaces[Space.ACTIVATION].depth
            _check(ring <= activation, f"{prefix}.{conv.name}: an output row of {ring} words, ACTIVATION has "
                   f"{activation}")
            ring_base, scratch_words = 0, band
        else:
            ring_base, scratch_words = band, band + ring_rows * ring
        _check(scratch_words <= scratch, f"{prefix}.{conv.name}: a band of {band} and a ring of "
               f"{scratch_words - band} words, SCRATCH has {scratch}")
        name = f"{prefix}.{conv.name}"
        builder.layer(name, Opcode.GEMM)       # the last one's layer holds the classifier: it runs row by row beside it
        weight = conv_weight(q[f"{name}.weight"], r)
        layout = matrix_layout(*weight.shape, accel, name)
        offset = builder.place(Region.MODEL, layout.pack(weight, q[f"{name}.bias"], q[f"{name}.multiplier"],
                                                         q[f"{name}.shift"]).tobytes())
        target = None
        if not last or index < between:
            scale = 2 if index < between else 1
            target = _feature_map(builder, f"head.{task}.input.{layers[index + 1].name}", scale * h, scale * w,
                                  out_tiles, r)
        slot = lambda y, base=ring_base, words=ring, rows=ring_rows: base + (y % rows) * words     # noqa: E731
        for y in range(h):
            if source is not None:          # the band: rows y − 1 … y + 1, each loaded once, one ahead
                for needed in [row for row in ((0, 1) if y == 0 else (y + 1,)) if row < h]:
                    pending.append(functools.partial(builder.load, Region.OUTPUT, source.row(needed),
                                                     source.row_bytes, Space.SCRATCH,
                                                     (needed % HEAD_BAND_ROWS) * in_tiles * w))
            for first, m in _blocks(model, w):
                if source is None:          # the tokens: pixel p at row p, a K tile t words
                    at, stride, memory = (lambda yy: min(max(yy, 0), h - 1) * w + first), t, Operand.ACTIVATION
                else:
                    at = lambda yy: (min(max(yy, 0), h - 1) % HEAD_BAND_ROWS) * in_tiles * w + first  # noqa: E731
                    stride, memory = w, Operand.SCRATCH
                # this block's first slabs load behind the products before it; then what waited for them
                prefetched = builder.prefetch(layout, offset)
                for emit in pending:
                    emit()
                pending.clear()
                builder.emit(Opcode.CONFIG_CONV, kernel=1, channel_tiles=in_tiles, stride=stride, above=at(y - 1),
                             below=at(y + 1), pad_above=int(y == 0), pad_below=int(y == h - 1),
                             pad_left=int(first == 0), pad_right=int(first + m == w))
                builder.product(name, layout, offset, source=memory, x_base=at(y), m=m, im2col=True,
                                outputs=[Output(out_tiles, ring_space, slot(y) + first, w)], mode=GemmMode.INT8,
                                relu=True, prefetched=prefetched)
            if index < between:
                pending.append(functools.partial(_upsample_rows, builder, Space.SCRATCH, slot, y, h, w, out_tiles,
                                                 target))
            elif not last:
                pending.append(functools.partial(builder.emit, Opcode.STORE, memory=Space.SCRATCH, base=slot(y),
                                                 region=Region.OUTPUT, address=target.row(y),
                                                 bytes=target.row_bytes))
            else:
                pending.append(classifier_row(y, ring_space, slot(y), out_tiles))
        source = target
    for emit in pending:
        emit()


def _feature_map(builder, name: str, height: int, width: int, channel_tiles: int, word_bytes: int) -> FeatureMap:
    feature_map = FeatureMap(0, height, width, channel_tiles, word_bytes)
    _check(feature_map.row_bytes % builder.bus == 0, f"{name}: a row of {feature_map.row_bytes} bytes is not a "
           f"whole number of {builder.bus}-byte bus words")
    offset = builder.output_area(name, feature_map.bytes)
    return FeatureMap(offset, height, width, channel_tiles, word_bytes)


def _classifier(builder, task: int, classifier, after: int):
    """The 1×1 classifier's weights placed and the head's output map; returns what runs it on output row y of
    the last 3×3 convolution (word `source` of `space`, `channel_tiles` of them): a GEMM per pixel block into a
    ring of three rows in RESIDUAL (int16), emitted at once; it returns what emits that row's part of the output (a
    STORE, or the ×2's UPSAMPLEs), for later."""
    model, accel, q = builder.model, builder.accel, builder.quantized
    c = accel.array_cols
    h, w = classifier.height, classifier.width
    class_tiles = tiles(classifier.out_channels, c)
    words = class_tiles * w
    name = f"heads.{task}.{classifier.name}"
    _check(HEAD_RING_ROWS * words <= builder.spaces[Space.RESIDUAL].depth,
           f"{name}: a ring of {HEAD_RING_ROWS * words} words, RESIDUAL has {builder.spaces[Space.RESIDUAL].depth}")
    layout = matrix_layout(classifier.in_channels, classifier.out_channels, accel, name)
    offset = builder.place(Region.MODEL, layout.pack(q[f"{name}.weight"], q[f"{name}.bias"],
                                                     q[f"{name}.multiplier"], q[f"{name}.shift"]).tobytes())
    target = _feature_map(builder, f"head.{task}.output", (1 + after) * h, (1 + after) * w, class_tiles, 2 * c)
    slot = lambda yy: (yy % HEAD_RING_ROWS) * words     # noqa: E731

    def row(y: int, space: Space, source: int, channel_tiles: int):
        for first, m in _blocks(model, w):
            builder.emit(Opcode.CONFIG_CONV, kernel=0, channel_tiles=channel_tiles, stride=w, above=0, below=0,
                         pad_above=0, pad_below=0, pad_left=0, pad_right=0)
            builder.product(name, layout, offset, source=Operand[space.name], x_base=source + first, m=m, im2col=True,
                            outputs=[Output(class_tiles, Space.RESIDUAL, slot(y) + first, w)], mode=GemmMode.INT16)
        if after:
            return functools.partial(_upsample_rows, builder, Space.RESIDUAL, slot, y, h, w, class_tiles, target)
        return functools.partial(builder.emit, Opcode.STORE, memory=Space.RESIDUAL, base=slot(y),
                                 region=Region.OUTPUT, address=target.row(y), bytes=target.row_bytes)
    return row
