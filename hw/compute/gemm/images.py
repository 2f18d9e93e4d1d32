"""The GEMM engine's memory images (X, W, P words) and its reference, from its stages' models."""

from __future__ import annotations

import numpy as np

from golden import ops

from ...memory.layout import DEFAULT_FRACTION_BITS, IDENTITY_MULTIPLIER, IDENTITY_SHIFT
from ...vector.residual import ResidualAdd
from .accumulator import Accumulator
from .combine import CombineTerms
from .gelu_path import GeluPath
from .geometry import GemmMode, tiles
from .requantizer import RequantizerLane

__all__ = ["pack_x", "pack_w", "pack_params", "gemm_model", "combine_model"]


def pack_x(x: np.ndarray, rows: int, stride: int) -> np.ndarray:
    """X [M, K] → the X memory image: K tile i of row m at word i·stride + m, zero-padded. [words, R]."""
    m_rows, k = x.shape
    image = np.zeros((tiles(k, rows) * stride, rows), dtype=np.int64)
    for i in range(tiles(k, rows)):
        part = x[:, i * rows:(i + 1) * rows]
        image[i * stride:i * stride + m_rows, :part.shape[1]] = part
    return image


def pack_w(w: np.ndarray, rows: int, cols: int, load_rows: int = 1) -> np.ndarray:
    """W [K, N] → the W memory image in consumption order: tile (j, i) beat q (rows q·load_rows to
    q·load_rows + load_rows − 1) at word (j·KT + i)·⌈R / load_rows⌉ + q, zero-padded. [words, load_rows, C]."""
    k, n = w.shape
    kt, nt = tiles(k, rows), tiles(n, cols)
    beats = tiles(rows, load_rows)
    padded = np.zeros((kt, beats * load_rows, nt, cols), dtype=np.int64)
    full = np.zeros((kt * rows, nt * cols), dtype=np.int64)
    full[:k, :n] = w
    padded[:, :rows] = full.reshape(kt, rows, nt, cols)
    return padded.transpose(2, 0, 1, 3).reshape(nt * kt * beats, load_rows, cols)


def pack_params(bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, cols: int,
                fraction_bits=DEFAULT_FRACTION_BITS) -> list[list[dict]]:
    """Per-column parameters → one word per N tile: [[{bias, multiplier, shift, fraction_bits} × C] × NT]
    (`fraction_bits`: GELU mode's Q.f per column, a scalar or [N]; padding columns get multiplier 2^14, shift
    14: identity, and f = 15)."""
    n = len(bias)
    fraction_bits = np.broadcast_to(np.asarray(fraction_bits), (n,))
    words = []
    for j in range(tiles(n, cols)):
        word = []
        for c in range(cols):
            col = j * cols + c
            word.append({"bias": int(bias[col]), "multiplier": int(multiplier[col]), "shift": int(shift[col]),
                         "fraction_bits": int(fraction_bits[col])}
                        if col < n else {"bias": 0, "multiplier": IDENTITY_MULTIPLIER, "shift": IDENTITY_SHIFT,
                                         "fraction_bits": DEFAULT_FRACTION_BITS})
        words.append(word)
    return words


def gemm_model(x: np.ndarray, w: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
               mode: GemmMode, relu: bool = False, rows: np.ndarray | None = None, gelu=None) -> np.ndarray:
    """What the engine emits, its stages' models in turn (the accumulator, the requantizer lanes, the GELU
    path): requantize(X[rows] @ W + b) or X·W + b (RAW); for GELU, requantize(gelu(requantize(X·W + b, 16), f),
    m_h, s_h, 8) with `gelu` = (f, m_h, s_h), f per column ([N]) or one for all."""
    x = np.asarray(x) if rows is None else np.asarray(x)[np.asarray(rows)]
    raw = mode == GemmMode.RAW
    y = RequantizerLane.model(Accumulator.model(x, w), np.asarray(bias, np.int64), multiplier, shift,
                              32 if raw else mode.bits, raw=raw, relu=relu)
    if mode == GemmMode.GELU:
        y = GeluPath.model(y, *gelu)
    return y.astype(np.int64)


def combine_model(x, experts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                  routing_ids: np.ndarray, gate_weights: np.ndarray, residual: np.ndarray,
                  residual_bits: int = ops.RESIDUAL_BITS) -> np.ndarray:
    """The residual [T, N] after every expert's COMBINE command, expert by expert, from the stages' models: each
    command's rows (`CombineTerms.model`: y·g rounded, y the expert's fc2 output requantized to 18 bits) added
    into their tokens' rows with saturation, the term's and the sum's (the output path's residual addition).
    experts[e] = (W, bias, multiplier, shift, token list). `golden.ops.combine` says the same of the outputs."""
    residual = np.array(residual, dtype=np.int64)
    for e, (w, bias, multiplier, shift, tokens) in enumerate(experts):
        if not len(tokens):
            continue
        y = gemm_model(x, w, bias, multiplier, shift, GemmMode.INT18, rows=tokens)
        slot = np.argmax(routing_ids[tokens] == e, axis=1)
        for token, terms in CombineTerms.model(y, gate_weights[tokens, slot], tokens):
            residual[token] = ResidualAdd.model(residual[token], terms, residual_bits)
    return residual
