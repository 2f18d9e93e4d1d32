"""The GEMM engine's drain: finished N tiles out of the accumulator, row by row, through the requantizer."""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ...common.arith import at_most, half_minus_one, index_bits
from ...common.pipeline import delay_line
from .geometry import DRAIN_STAGES, FRACTION_WIDTH, GemmGeometry
from .requantizer import RequantizerLane

__all__ = ["Drain"]


class Drain(wiring.Component):
    """Drains each N tile the accumulator has finished (`tiles_done` ahead of the tiles drained) through C
    `RequantizerLane`s.

    Per N tile j: its parameter word is read at p_base + j (`p_read`, into a register; each column's 2^(shift−1) − 1
    decoded from that register), then rows m = 0 … M − 1 issue (`issue`, one-cycle pulses) at most one per cycle,
    each only while the output FIFO has a place (`room`, a register: the FIFO counts a place as taken from the
    issue) and, in GELU mode, ⌈C / gelu_lanes⌉ cycles apart. An issued row addresses the accumulator on
    `drain_tile`, `drain_row` (its word back on `word` a cycle later) and the row-scale memory (`row_read`, read
    every cycle at `drain_row`: attention·V's per-row multiplier and shift). `tile_drained` pulses with the tile's
    last row's issue, freeing its accumulator bank; `drain_tile` is then the count of tiles drained.

    `result` carries a row `LATENCY` = `DRAIN_STAGES` cycles after its issue (valid for one cycle), with its
    columns' GELU formats; `arriving` says one arrives next cycle, `active` that a row is in the pipeline.
    `command` is read in the cycle `start` is set; `flags` hold for the command.
    """
    LATENCY = DRAIN_STAGES

    @staticmethod
    def model(geometry: GemmGeometry, words, params, flags: dict, row_scales=None):
        """The rows leaving, in order: (row m, N tile j, values [C]) for tile after tile of `words`
        [n_tiles, M, C] (the accumulator's), each column through `RequantizerLane.model` with its tile's
        parameters `params[j][c]` ({bias, multiplier, shift}; the P word at p_base + j), or with the row's
        multiplier and shift `row_scales[m]` when `row_scaled`. `flags`: `raw`, `relu`, `row_scaled` and
        `bits`, the saturation width (the accumulator's for RAW)."""
        rows = []
        for j, tile in enumerate(np.asarray(words, np.int64)):
            for m, word in enumerate(tile):
                values = []
                for c, value in enumerate(word):
                    column = params[j][c]
                    multiplier, shift = (row_scales[m] if flags.get("row_scaled")
                                         else (column["multiplier"], column["shift"]))
                    values.append(int(RequantizerLane.model(
                        value, column["bias"], multiplier, shift, flags["bits"], raw=flags.get("raw", False),
                        relu=flags.get("relu", False))))
                rows.append((m, j, values))
        return rows

    def __init__(self, geometry: GemmGeometry):
        self.geometry = g = geometry
        super().__init__({
            "start": In(1),
            "command": In(g.command),
            "flags": In(g.flags),
            "busy": In(1),
            "tiles_done": In(range(g.n_tiles_max + 1)),
            "room": In(1),
            "single_row": In(1),                            # the command's M = 1 and M − 2 (the sequencer's)
            "m_before_last": In(g.command["m"].shape),
            "p_read": In(g.read_port("p")),
            "row_read": In(g.read_port("row")),
            "drain_tile": Out(index_bits(g.n_tiles_max + 1)),
            "drain_row": Out(index_bits(g.max_m + 1)),
            "word": In(g.accumulator_word),
            "issue": Out(1),
            "tile_drained": Out(1),
            "result": Out(g.drained_row),
            "arriving": Out(1),
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        flags, pw = self.flags, g.product_width
        drained, drain_m = self.drain_tile, self.drain_row
        p_base = Signal.like(self.command.p_base, reset_less=True)        # set at every start
        single_row, m_before_last = self.single_row, self.m_before_last
        draining, params_ready, drain_last = Signal(), Signal(), Signal()    # drain_last: drain_m = M − 1
        m.d.comb += [self.p_read.addr.eq(p_base + drained), self.p_read.en.eq(~params_ready)]
        params = Signal(data.ArrayLayout(g.column, g.cols), reset_less=True)    # valid with `params_ready`
        # 2^(shift−1) − 1 per column from the registered parameters (the block RAM's output is not decoded)
        halves = [Signal(pw, name=f"half{c}") for c in range(g.cols)]
        shifts = [Signal(range(pw + 1), name=f"shift{c}") for c in range(g.cols)]   # signals: each decoded once
        m.d.comb += [shift.eq(at_most(params[c].shift, pw)) for c, shift in enumerate(shifts)]
        m.d.comb += [half.eq(half_minus_one(shift, pw)) for half, shift in zip(halves, shifts)]
        with m.If(self.busy & (drained < self.tiles_done) & ~params_ready & ~draining):
            m.d.sync += [draining.eq(1), drain_m.eq(0), drain_last.eq(single_row)]
        with m.If(draining & ~params_ready):
            m.d.sync += [params.eq(self.p_read.data), params_ready.eq(1)]
        # GELU rows are spaced ⌈C / gelu_lanes⌉ cycles apart (the GELU path serializes each row)
        spacing = Signal(range(max(g.gelu_chunks, 2)))
        issue = self.issue
        m.d.comb += issue.eq(draining & params_ready & self.room & (spacing == 0))
        with m.If(issue & flags.gelu):
            m.d.sync += spacing.eq(g.gelu_chunks - 1)
        with m.Elif(spacing != 0):
            m.d.sync += spacing.eq(spacing - 1)
        m.d.comb += self.tile_drained.eq(issue & drain_last)
        with m.If(issue):
            m.d.sync += [drain_m.eq(drain_m + 1), drain_last.eq(~drain_last & (drain_m == m_before_last))]
            with m.If(drain_last):
                m.d.sync += [draining.eq(0), params_ready.eq(0), drained.eq(drained + 1)]

        # The row's place in the pipeline, and its columns' Q.f (the next tile's parameters may load meanwhile).
        valid = delay_line(m, issue, DRAIN_STAGES, "drain_valid")
        position = data.StructLayout({"row": len(drain_m), "tile": len(drained)})       # data, valid with `valid`
        stages = delay_line(m, Signal(position, name="issued"), DRAIN_STAGES, "drain", data=True)
        m.d.comb += [stages[0].row.eq(drain_m), stages[0].tile.eq(drained)]
        fraction_layout = data.ArrayLayout(FRACTION_WIDTH, g.cols)
        fractions = delay_line(m, Signal(fraction_layout, name="fraction_bits"), DRAIN_STAGES, "fraction_bits",
                               data=True)
        m.d.comb += [fractions[0][c].eq(params[c].fraction_bits) for c in range(g.cols)]
        # Per-row scaling (attention·V): the row's multiplier and shift are read with its accumulator word, every
        # cycle at `drain_row` (which moves only on an issue, so no enable fans out from `issue` to the block RAM);
        # its 2^(shift−1) − 1 is decoded once for the row from the registered shift, a stage later.
        m.d.comb += [self.row_read.addr.eq(drain_m), self.row_read.en.eq(1)]
        row_shift = Signal(range(pw + 1), reset_less=True)
        m.d.sync += row_shift.eq(at_most(self.row_read.data.shift, pw))
        row_half = Signal(pw)
        m.d.comb += row_half.eq(half_minus_one(row_shift))
        for c in range(g.cols):
            lane = m.submodules[f"lane{c}"] = RequantizerLane(g)
            m.d.comb += [lane.word.eq(self.word[c]), lane.bias.eq(params[c].bias),
                         lane.multiplier.eq(params[c].multiplier), lane.shift.eq(params[c].shift),
                         lane.half.eq(halves[c]), lane.row_multiplier.eq(self.row_read.data.multiplier),
                         lane.row_shift.eq(row_shift), lane.row_half.eq(row_half),
                         lane.row_scaled.eq(flags.row_scaled), lane.raw.eq(flags.raw), lane.relu.eq(flags.relu),
                         lane.saturate.eq(flags.saturate), self.result.data[c].eq(lane.value)]
        final = stages[-1]
        m.d.comb += [self.result.valid.eq(valid[-1]), self.result.row.eq(final.row),
                     self.result.tile.eq(final.tile), self.result.fraction_bits.eq(fractions[-1]),
                     self.arriving.eq(valid[-2]), self.active.eq(Cat(*valid[1:]).any())]

        with m.If(self.start):
            m.d.sync += [p_base.eq(self.command.p_base), drained.eq(0)]
        return m

