"""The GEMM engine (docs/architecture.md, section 3): Y = out(X·W + b) on the systolic array.

One command computes Y [M, N] = X [M, K] · W [K, N] tile by tile: for each N tile j (C columns), for each K
tile i (R rows), the R × C weight tile enters one array bank while the previous tile streams, then the M rows
of X's K tile i stream through it; partial sums accumulate in an accumulator memory (two banks, one per N
tile in flight), and a finished N tile drains through bias, requantization and saturation to the output
stream while the next one computes. Results leave N tile by N tile, rows in order, C values per beat.

Memories are outside the engine, behind read ports (`lib.memory` read port signatures: the engine drives
`addr` and `en`, `data` is the word at the address given one cycle earlier with `en` set; for X and W, the
array's operands, `OPERAND_READ_LATENCY` = 2 cycles earlier: the memory's output registered before any
multiplexer, as the accelerator's are):
- X: words of R operands, K-tile-major: row m's K tile i at `x_base + i·x_stride + m` (the command's
  `x_stride`). With `gather`, row m reads X row `index[list_base + m]` instead. With `conv` (a 3×3
  convolution's im2col, stride 1, zero padding), X is a band of input rows and the K tiles walk the nine taps
  (ky, kx) in row-major order, `channel_tiles` channel tiles inside each (K = 9·channel_tiles·R, in (ky, kx,
  channel) order): output pixel m's K tile (ky, kx, c) is the word at `row_ky + c·x_stride + m + kx − 1`,
  `row_ky` the command's `x_above`, `x_base`, `x_below` for ky = 0, 1, 2 (the input rows above, at and below
  the block's row, each at the block's first pixel). It is zero (not read) for the row above with `pad.above`,
  below with `pad.below`, left of pixel 0 with `pad.left`, right of pixel M − 1 with `pad.right`: the image's
  edges. A 1×1 convolution is a plain GEMM with the band's `x_stride`.
- W: words of `load_rows` × C operands (the weight feed), in the order the array consumes them: tile (j, i)
  rows q·load_rows … at `w_base + (j·KT + i)·⌈R / load_rows⌉ + q` (rows past K may hold anything: the engine
  zeroes the lanes of X past K). A tile loads in ⌈R / load_rows⌉ cycles, hidden behind M ≥ that many rows.
- P: one word per N tile at `p_base + j`: per column `bias` (int32), `multiplier` and `shift`, and GELU's
  `fraction_bits`. With `row_scaled`, the multiplier and shift come per row instead, row m's at `m` of the
  row-scale read port (attention·V: the softmax unit's row scales).
Output modes (`GemmMode`): `INT8` / `INT16` / `INT18` requantize (round half to even, saturate), exactly
`golden.ops.requantize`; `RAW` emits acc + bias unrounded (attention scores); `relu` clamps at 0 in every
mode; `GELU` (fc1) requantizes to int16 in each column's Q.f, applies GELU and requantizes to int8 with the
command's `hidden_multiplier` and `hidden_shift`. `COMBINE` (expert fc2) requantizes to 18 bits (a quarter of
the residual's step), multiplies row m by the gate weight at `gate[list_base + m]` and emits the row rounded
to the residual's step (`CombineTerms`) as row `index[list_base + m]`, its token's (the output path adds it into
the residual there); a token list holds each token at most once.

Handshakes: `command` is taken when `valid` and `ready` (= not `busy`); a command with M, KT or NT of 0 does
nothing. `busy` rises the cycle after and falls once every row has left the requantizer (and GELU or the
combine), possibly while result rows still wait in the output FIFO: a new command may start then,
and its rows queue behind them. `out` is a `lib.stream` of {row, tile, data [C]}; results leave about
R + C + 19 cycles after their row streamed. `error` is sticky: a GELU command met a column with f below 5.

The stages, each a component with its own contract: `TileSequencer` (tile walks and credits),
`OperandStreamer` (X words into the array), the `SystolicArray`, `Accumulator`, `Drain` (parameters and
`RequantizerLane`s), `GeluPath`, `CombineTerms` and `OutputFifo`.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, flipped

from ..array import SystolicArray
from .accumulator import Accumulator
from .combine import CombineTerms
from .drain import Drain
from .fifo import OutputFifo
from .gelu_path import GeluPath
from .geometry import OPERAND_READ_LATENCY, GemmGeometry, GemmMode, largest_product
from .images import gemm_model
from .operands import OperandStreamer
from .sequencer import TileSequencer

__all__ = ["GemmEngine"]

_SIZES = ("rows", "cols", "max_m", "max_k", "max_n", "x_stride", "x_depth", "w_depth", "p_depth", "index_depth",
          "load_rows", "load_beats", "gelu_lanes", "gelu_chunks", "drain_lanes", "drain_chunks", "operand_width",
          "accumulator_width", "multiplier_width")


class GemmEngine(wiring.Component):
    class Signature(wiring.Signature):
        """The engine's ports for a `GemmGeometry` (its sizes checked there): `command` and `out` streams, the read
        ports of the X, W, P, row-scale, index (gather and scatter) and gate memories, `busy` and `error`.
        `command`, `column`, `row_scale` and `result` are the layouts of a command, a column's output parameters, a
        row scale and an output row."""

        def __init__(self, geometry: GemmGeometry):
            g = geometry
            self.command, self.column, self.row_scale, self.result = g.command, g.column, g.row_scale, g.result
            super().__init__({
                "command": In(stream.Signature(g.command)),
                "x_read": In(g.read_port("x")),
                "w_read": In(g.read_port("w")),
                "p_read": In(g.read_port("p")),
                "row_read": In(g.read_port("row")),
                "index_read": In(g.read_port("index")),
                "scatter_read": In(g.read_port("index")),
                "gate_read": In(g.read_port("gate")),
                "out": Out(stream.Signature(g.result)),
                "busy": Out(1),
                "error": Out(1),
            })

    READ_LATENCIES = {"x_read": OPERAND_READ_LATENCY, "w_read": OPERAND_READ_LATENCY}

    def __init__(self, rows: int, cols: int, *, max_m: int, max_k: int, max_n: int, x_stride: int | None = None,
                 w_depth: int | None = None, p_depth: int | None = None, index_depth: int | None = None,
                 operand_width: int = 8, accumulator_width: int = 32, multiplier_width: int = 16,
                 load_rows: int = 1, gelu_lanes: int | None = None, x_depth: int | None = None,
                 drain_lanes: int | None = None):
        self.geometry = GemmGeometry(rows, cols, max_m, max_k, max_n, x_stride, w_depth, p_depth, index_depth,
                                     operand_width, accumulator_width, multiplier_width, load_rows, gelu_lanes,
                                     x_depth, drain_lanes)
        for name in _SIZES:
            setattr(self, name, getattr(self.geometry, name))
        super().__init__(self.Signature(self.geometry))

    @classmethod
    def for_model(cls, model, accel, **sizes) -> "GemmEngine":
        """The engine `accel` builds for `model`: M up to every token (gathered from all of them), K and N up
        to the largest of the matrix products (`largest_product`); GELU at the accelerator's `requant_lanes` values
        per cycle. `sizes` sets memory depths the top level chooses (`x_depth`, `w_depth`, `p_depth`,
        `index_depth`)."""
        largest_k, largest_n = largest_product(model, accel)
        return cls(accel.array_rows, accel.array_cols, max_m=model.num_tokens, max_k=largest_k,
                   max_n=largest_n, x_stride=model.num_tokens, operand_width=accel.operand_width,
                   accumulator_width=accel.accumulator_width, multiplier_width=accel.requant_multiplier_width,
                   load_rows=accel.weight_feed_bytes // (accel.array_cols * accel.operand_width // 8),
                   gelu_lanes=min(accel.requant_lanes, accel.array_cols), drain_lanes=accel.drain_lanes, **sizes)

    model = staticmethod(gemm_model)

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        m.submodules.sequencer = sequencer = TileSequencer(g)
        m.submodules.operands = operands = OperandStreamer(g)
        m.submodules.array = array = SystolicArray(g.rows, g.cols, g.operand_width, g.accumulator_width,
                                                   g.load_rows)
        m.submodules.accumulator = accumulator = Accumulator(g, array.latency)
        m.submodules.drain = drain = Drain(g)
        m.submodules.gelu_path = gelu_path = GeluPath(g)
        m.submodules.combine = combine = CombineTerms(g)
        m.submodules.fifo = fifo = OutputFifo(g)

        # The command: taken when not busy; its mode decoded into flags once.
        busy, start = Signal(), Signal()
        n_tiles, list_base = Signal.like(self.command.payload.n_tiles), Signal.like(self.command.payload.list_base)
        flags = Signal(g.flags)
        payload = self.command.payload
        m.d.comb += [self.busy.eq(busy), self.command.ready.eq(~busy), start.eq(self.command.valid & ~busy)]
        with m.If(start):
            named = [Cat(*(payload.mode == mode for mode in GemmMode if mode.bits == bits)).any()
                     for bits in g.saturation_widths[:-1]]
            m.d.sync += [
                flags.raw.eq(payload.mode == GemmMode.RAW), flags.combine.eq(payload.mode == GemmMode.COMBINE),
                flags.gelu.eq(payload.mode == GemmMode.GELU), flags.relu.eq(payload.relu),
                flags.row_scaled.eq(payload.row_scaled & (payload.mode != GemmMode.RAW)),
                flags.saturate.eq(Cat(*named, ~Cat(*named).any())),
                busy.eq((payload.m != 0) & (payload.k_tiles != 0) & (payload.n_tiles != 0)),
                n_tiles.eq(payload.n_tiles), list_base.eq(payload.list_base),
            ]
        for stage in (sequencer, operands, accumulator, drain, gelu_path):
            m.d.comb += [stage.start.eq(start), stage.command.eq(payload)]
        m.d.comb += [operands.list_base.eq(list_base), combine.list_base.eq(list_base)]

        # Operands into the array, results into the accumulator.
        m.d.comb += [sequencer.busy.eq(busy), sequencer.tile_drained.eq(drain.tile_drained)]
        wiring.connect(m, flipped(self.w_read), sequencer.w_read)
        wiring.connect(m, sequencer.load, array.load)
        m.d.comb += [operands.issue.eq(sequencer.issue), operands.tile_base.eq(sequencer.tile_base)]
        wiring.connect(m, flipped(self.index_read), operands.index_read)
        wiring.connect(m, flipped(self.x_read), operands.x_read)
        wiring.connect(m, operands.to_array, array.stream_in)
        m.d.comb += [accumulator.tag.eq(operands.tag), accumulator.results.eq(array.out.payload)]

        # The drain, then GELU or the combine, then the FIFO.
        m.d.comb += [drain.single_row.eq(sequencer.single_row), drain.m_before_last.eq(sequencer.m_before_last)]
        m.d.comb += [drain.flags.eq(flags), drain.busy.eq(busy), drain.tiles_done.eq(accumulator.tiles_done),
                     drain.room.eq(fifo.room), accumulator.drain_tile.eq(drain.drain_tile),
                     accumulator.drain_row.eq(drain.drain_row), drain.word.eq(accumulator.drained_word)]
        wiring.connect(m, flipped(self.p_read), drain.p_read)
        wiring.connect(m, flipped(self.row_read), drain.row_read)
        result = drain.result
        requantized = Signal(g.result)
        m.d.comb += [requantized.row.eq(result.row), requantized.tile.eq(result.tile),
                     requantized.data.eq(result.data)]
        m.d.comb += [gelu_path.row.eq(result), gelu_path.row.valid.eq(result.valid & flags.gelu),
                     self.error.eq(gelu_path.error)]
        m.d.comb += [combine.issue.eq(drain.issue), combine.row.eq(drain.drain_row), combine.result.eq(result),
                     combine.result.valid.eq(result.valid & flags.combine)]
        for port in ("scatter_read", "gate_read"):
            wiring.connect(m, flipped(getattr(self, port)), getattr(combine, port))
        with m.If(flags.gelu):
            m.d.comb += [fifo.arriving.eq(gelu_path.arriving), fifo.data.eq(gelu_path.hidden)]
        with m.Elif(flags.combine):
            m.d.comb += [fifo.arriving.eq(combine.arriving), fifo.data.eq(combine.term)]
        with m.Else():
            m.d.comb += [fifo.arriving.eq(drain.arriving), fifo.data.eq(requantized)]
        m.d.comb += fifo.promise.eq(drain.issue)
        wiring.connect(m, fifo.out, flipped(self.out))

        # Done: every tile drained, and (registered) the pipeline empty in the previous cycle with no row
        # issued then.
        emptied = Signal()
        m.d.sync += emptied.eq(~(drain.issue | drain.active | gelu_path.active | combine.active))
        with m.If(busy & (drain.drain_tile == n_tiles) & emptied):
            m.d.sync += busy.eq(0)
        return m
