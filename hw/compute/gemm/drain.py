"""The GEMM engine's drain: finished N tiles out of the accumulator, row by row, through the requantizer."""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ...common.arith import at_most, index_bits
from ...common.pipeline import delay_line
from .geometry import DRAIN_STAGES, FRACTION_WIDTH, GemmGeometry
from .requantizer import RequantizerLane

__all__ = ["Drain"]


class Drain(wiring.Component):
    """Drains each N tile the accumulator has finished (`tiles_done` ahead of the tiles drained) through
    `drain_lanes` `RequantizerLane`s (C by default; with fewer, a row enters them `drain_lanes` columns a cycle,
    in `drain_chunks` = C / `drain_lanes` cycles).

    Per N tile j: its parameter word is read at p_base + j (`p_read`, into a register), then rows m = 0 … M − 1
    issue (`issue`, one-cycle pulses) at most one per cycle, each only while the output FIFO has a place (`room`, a
    register: the FIFO counts a place as taken from the issue), `drain_chunks` cycles apart and, in GELU mode, at
    least ⌈C / gelu_lanes⌉. An issued row addresses the accumulator on `drain_tile`, `drain_row` (its word back on
    `word` a cycle later, kept for the later chunks) and the row-scale memory (`row_read`, read every cycle at
    `drain_row`: attention·V's per-row multiplier and shift). `tile_drained` pulses with the tile's last row's
    issue, freeing its accumulator bank; `drain_tile` is then the count of tiles drained. The next tile's parameters
    load once the last row's chunks have entered.

    `result` carries a row `drain_latency` = `DRAIN_STAGES` + `drain_chunks` − 1 cycles after its issue (valid
    for one cycle), with its columns' GELU formats; `arriving` says one arrives next cycle, `active` that a row is
    in the pipeline. `command` is read in the cycle `start` is set; `flags` hold for the command.
    """

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
        # A row's place in the pipeline: `valid[k]` is the issue k cycles late; its chunks enter the lanes at
        # valid[1 … chunks], and the next tile starts once those before the last are in.
        latency, chunks, lanes = g.drain_latency, g.drain_chunks, g.drain_lanes
        valid = delay_line(m, self.issue, latency, "drain_valid")
        chunks_in = ~Cat(*valid[1:chunks]).any() if chunks > 1 else 1
        with m.If(self.busy & (drained < self.tiles_done) & ~params_ready & ~draining & chunks_in):
            m.d.sync += [draining.eq(1), drain_m.eq(0), drain_last.eq(single_row)]
        with m.If(draining & ~params_ready):
            m.d.sync += [params.eq(self.p_read.data), params_ready.eq(1)]
        # Rows are spaced `drain_chunks` cycles apart, GELU rows at least ⌈C / gelu_lanes⌉ (the GELU path
        # serializes each row).
        spacing = Signal(range(max(g.gelu_chunks, g.drain_chunks, 2)))
        issue = self.issue
        m.d.comb += issue.eq(draining & params_ready & self.room & (spacing == 0))
        with m.If(issue):
            m.d.sync += spacing.eq(Mux(flags.gelu, max(g.gelu_chunks, g.drain_chunks) - 1, g.drain_chunks - 1))
        with m.Elif(spacing != 0):
            m.d.sync += spacing.eq(spacing - 1)
        m.d.comb += self.tile_drained.eq(issue & drain_last)
        with m.If(issue):
            m.d.sync += [drain_m.eq(drain_m + 1), drain_last.eq(~drain_last & (drain_m == m_before_last))]
            with m.If(drain_last):
                m.d.sync += [draining.eq(0), params_ready.eq(0), drained.eq(drained + 1)]

        # The row's place and its columns' Q.f travel beside `valid` (the next tile's parameters may load meanwhile).
        position = data.StructLayout({"row": len(drain_m), "tile": len(drained)})       # data, valid with `valid`
        stages = delay_line(m, Signal(position, name="issued"), latency, "drain", data=True)
        m.d.comb += [stages[0].row.eq(drain_m), stages[0].tile.eq(drained)]
        fraction_layout = data.ArrayLayout(FRACTION_WIDTH, g.cols)
        fractions = delay_line(m, Signal(fraction_layout, name="fraction_bits"), latency, "fraction_bits",
                               data=True)
        m.d.comb += [fractions[0][c].eq(params[c].fraction_bits) for c in range(g.cols)]
        # Per-row scaling (attention·V): the row's multiplier and shift are read with its accumulator word, every
        # cycle at `drain_row` (which moves only on an issue, so no enable fans out from `issue` to the block RAM),
        # the shift clamped into a register.
        m.d.comb += [self.row_read.addr.eq(drain_m), self.row_read.en.eq(1)]
        row_shift = Signal(range(pw + 1), reset_less=True)
        m.d.sync += row_shift.eq(at_most(self.row_read.data.shift, pw))
        # Chunk k of a row (columns k·L …, L lanes) enters the lanes k cycles after chunk 0, which takes the word
        # as it arrives: the later chunks take it, and the row's multiplier and shift, from registers kept then.
        word = [self.word[c] for c in range(g.cols)]
        kept_multiplier = Signal.like(self.row_read.data.multiplier, reset_less=True)
        kept_shift = Signal.like(row_shift, reset_less=True)
        with m.If(valid[1]):
            for c in range(lanes, g.cols):
                word[c] = Signal.like(self.word[c], name=f"kept_word{c}", reset_less=True)
                m.d.sync += word[c].eq(self.word[c])
            m.d.sync += kept_multiplier.eq(self.row_read.data.multiplier)
        with m.If(valid[2]):
            m.d.sync += kept_shift.eq(row_shift)
        later = Cat(*valid[2:1 + chunks]).any()        # a chunk past the first in the lanes' first cycle, or second
        later_second = Cat(*valid[3:2 + chunks]).any()

        def chunk_of(values, c):
            """Lane c's value of `values` (per column) for the chunk entering now."""
            chosen = values(c)
            for k in range(1, chunks):
                chosen = Mux(valid[1 + k], values(k * lanes + c), chosen)
            return chosen

        lane_row_shift = Signal.like(row_shift)
        m.d.comb += lane_row_shift.eq(Mux(later_second, kept_shift, row_shift))
        values = []
        for c in range(lanes):
            lane = m.submodules[f"lane{c}"] = RequantizerLane(g)
            m.d.comb += [lane.word.eq(chunk_of(lambda k: word[k], c)),
                         lane.bias.eq(chunk_of(lambda k: params[k].bias, c)),
                         lane.multiplier.eq(chunk_of(lambda k: params[k].multiplier, c)),
                         lane.shift.eq(chunk_of(lambda k: params[k].shift, c)),
                         lane.row_multiplier.eq(Mux(later, kept_multiplier, self.row_read.data.multiplier)),
                         lane.row_shift.eq(lane_row_shift),
                         lane.row_scaled.eq(flags.row_scaled), lane.raw.eq(flags.raw), lane.relu.eq(flags.relu),
                         lane.saturate.eq(flags.saturate)]
            values.append(lane.value)
        # The row leaves with its last chunk; the chunks before wait in registers.
        for k in range(chunks):
            for c in range(lanes):
                value = values[c]
                if k < chunks - 1:
                    value = Signal.like(values[c], name=f"chunk{k}_lane{c}", reset_less=True)
                    with m.If(valid[DRAIN_STAGES + k]):
                        m.d.sync += value.eq(values[c])
                m.d.comb += self.result.data[k * lanes + c].eq(value)
        final = stages[-1]
        m.d.comb += [self.result.valid.eq(valid[-1]), self.result.row.eq(final.row),
                     self.result.tile.eq(final.tile), self.result.fraction_bits.eq(fractions[-1]),
                     self.arriving.eq(valid[-2]), self.active.eq(Cat(*valid[1:]).any())]

        with m.If(self.start):
            m.d.sync += [p_base.eq(self.command.p_base), drained.eq(0)]
        return m

