"""Driving the systolic array: the tile schedule the GEMM engine follows, as a plain cycle plan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TilePlan", "plan_tiles"]


@dataclass
class TilePlan:
    """Per cycle, what enters the array: `loads[i]` = (first row, bank, weights [load_rows, C]) or None,
    `streams[i]` =
    (bank, x [R]) or None; `first_row[t]` the cycle tile t's first streamed row enters."""

    loads: list
    streams: list
    first_row: list[int]

    @property
    def cycles(self) -> int:
        return len(self.streams)


def plan_tiles(tiles: list[tuple[np.ndarray, np.ndarray]], rows: int, gaps: list[int] | None = None,
               spacing: list[int] | None = None, load_rows: int = 1) -> TilePlan:
    """Back-to-back schedule of `tiles` = [(W [R, C], X [M, R]), …] on a rows-deep array: tile t uses bank
    t mod 2; its ⌈R / load_rows⌉ load beats enter one per cycle, from the cycle before the last row of the tile before the
    previous one enters (and once the load port is free); its rows stream from the second cycle after its
    last load row and once the previous tile has finished. So a tile costs max(M, ⌈R / load_rows⌉) cycles.
    `gaps[t]` extra idle cycles (bubbles) before tile t streams and `spacing[t]` bubbles after each of its
    rows, to test that bubbles are harmless."""
    gaps = gaps or [0] * len(tiles)
    spacing = spacing or [0] * len(tiles)
    beats = -(-rows // load_rows)
    load_start, stream_start, stream_end = [], [], []
    for t, (_, x) in enumerate(tiles):
        start = 0
        if t >= 1:
            start = max(start, load_start[t - 1] + beats)
        if t >= 2:
            start = max(start, stream_end[t - 2] - 1)
        load_start.append(start)
        begin = max(start + beats + 1, stream_end[t - 1] if t else 0) + gaps[t]
        stream_start.append(begin)
        stream_end.append(begin + len(x) * (1 + spacing[t]) - spacing[t])
    total = stream_end[-1] if tiles else 0
    loads, streams = [None] * total, [None] * total
    for t, (w, x) in enumerate(tiles):
        padded = np.zeros((beats * load_rows, w.shape[1]), dtype=np.int64)
        padded[:rows] = w
        for beat in range(beats):
            loads[load_start[t] + beat] = (beat * load_rows, t % 2, padded[beat * load_rows:(beat + 1) * load_rows])
        for i, row in enumerate(x):
            streams[stream_start[t] + i * (1 + spacing[t])] = (t % 2, row)
    return TilePlan(loads, streams, stream_start)
