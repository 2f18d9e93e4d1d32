"""The GEMM engine's operand streamer: an issued row's X word, gathered or direct, into the array."""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ...common.pipeline import delay_line
from .geometry import OPERAND_READ_LATENCY, STREAM_STAGES, GemmGeometry

__all__ = ["OperandStreamer"]


class OperandStreamer(wiring.Component):
    """Reads the X word of each issued row and streams it into the array, `LATENCY` = `STREAM_STAGES` cycles
    after the row's `issue` (a `TileSequencer` tag, `tile_base` its X base).

    Stage 1 reads the gather index `index[list_base + m]` (`index_read`, data a cycle later); stage 2 registers
    the source row (m itself, or the index with `gather`) so a block RAM's output never meets an adder; stage 3
    reads X at tile_base + source row (`x_read`); the word, `OPERAND_READ_LATENCY` cycles later, enters the
    array's `to_array` port with the tag on `tag`. Lanes past K in the last K tile are zeroed (the command's
    `k_last`), so W rows past K may hold anything; a conv's padding (`pad` in the tag) is zeroed whole. `command`
    is read in the cycle `start` is set; `list_base` holds from the next.
    """
    LATENCY = STREAM_STAGES

    @staticmethod
    def model(geometry: GemmGeometry, command: dict, issues, x, index):
        """The (bank, X word) entering the array for each issued row of `issues` ((m, i, j, bank, first, last,
        pad, tile_base) each, as `TileSequencer.model` gives them): X [x_depth, R] at tile_base + m, or + the
        gather index `index[list_base + m]` (addresses wrap at the ports' widths, the memories as deep); the last
        K tile's lanes from `k_last` up and a pad row zeroed."""
        g = geometry
        x, index = np.asarray(x), np.asarray(index)
        words = []
        for m, _, _, bank, _, last, pad, tile_base in issues:
            list_entry = (command.get("list_base", 0) + m) % (1 << g.address_width("index"))
            source = int(index[list_entry]) if command.get("gather") else m
            word = x[(tile_base + source) % (1 << g.address_width("x"))].copy()
            if last:
                word[command["k_last"]:] = 0
            words.append((bank, np.zeros_like(word) if pad else word))
        return words

    def __init__(self, geometry: GemmGeometry):
        self.geometry = g = geometry
        super().__init__({
            "start": In(1),
            "command": In(g.command),
            "list_base": In(g.command["list_base"].shape),    # the command's, held while it runs
            "issue": In(g.tag),
            "tile_base": In(g.address_width("x")),
            "index_read": In(g.read_port("index")),
            "x_read": In(g.read_port("x")),
            "to_array": Out(g.array.members["stream_in"].signature.flip()),
            "tag": Out(g.tag),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        list_base, gather = self.list_base, Signal()
        lane_valid = Signal(g.rows)              # lanes of the last K tile within K, set once per command
        with m.If(self.start):
            m.d.sync += [gather.eq(self.command.gather),
                         lane_valid.eq(Cat(*(self.command.k_last > r for r in range(g.rows))))]

        issue = self.issue
        m.d.comb += [self.index_read.addr.eq(list_base + issue.m), self.index_read.en.eq(1)]
        stage1, source = Signal(g.tag), Signal(g.tag, name="source")
        stage1_base, source_base = Signal.like(self.tile_base), Signal.like(self.tile_base)
        source_row = Signal.like(self.x_read.addr)
        m.d.sync += [stage1.eq(issue), stage1_base.eq(self.tile_base),
                     source.eq(stage1), source_base.eq(stage1_base),
                     source_row.eq(Mux(gather, self.index_read.data, stage1.m))]
        stage2 = self.tag                   # the row whose X word is on `x_read.data`
        m.d.comb += stage2.eq(delay_line(m, source, OPERAND_READ_LATENCY, "x_word")[-1])
        m.d.comb += [self.x_read.addr.eq(source_base + source_row), self.x_read.en.eq(1)]
        for r in range(g.rows):
            keep = (~stage2.last | lane_valid[r]) & ~stage2.pad
            m.d.comb += self.to_array.payload.data[r].eq(Mux(keep, self.x_read.data[r], 0))
        m.d.comb += [self.to_array.valid.eq(stage2.valid), self.to_array.payload.bank.eq(stage2.bank)]
        return m
