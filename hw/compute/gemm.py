"""The GEMM engine (docs/architecture.md, section 3): Y = out(X·W + b) on the systolic array.

One command computes Y [M, N] = X [M, K] · W [K, N] tile by tile: for each N tile j (C columns), for each K
tile i (R rows), the R × C weight tile enters one array bank while the previous tile streams, then the M rows
of X's K tile i stream through it; partial sums accumulate in an accumulator memory (two banks, one per N
tile in flight), and a finished N tile drains through bias, requantization and saturation to the output
stream while the next one computes. Results leave N tile by N tile, rows in order, C values per beat.

Memories are outside the engine, behind read ports:
- X: words of R operands, K-tile-major: row m's K tile i at `x_base + i·x_stride + m` (`x_stride` a
  constant, at least the largest M). With `gather`, row m reads X row `index[list_base + m]` instead.
- W: words of `load_rows` × C operands (the weight feed), in the order the array consumes them: tile (j, i)
  rows q·load_rows … at `w_base + (j·KT + i)·⌈R / load_rows⌉ + q` (rows past K may hold anything: the engine
  zeroes the lanes of X past K). A tile loads in ⌈R / load_rows⌉ cycles, hidden behind M ≥ that many rows.
- P: one word per N tile at `p_base + j`: per column `bias` (int32), `multiplier` and `shift`. With
  `row_scaled`, the multiplier and shift come per row instead, row m's at `m` of the row-scale read port
  (attention·V: the softmax unit's row scales).
Output modes (`GemmMode`): `INT8` / `INT16` / `INT18` requantize (round half to even, saturate), exactly
`golden.ops.requantize`; `RAW` emits acc + bias unrounded (attention scores); `relu` clamps at 0 in every
mode. `COMBINE` (expert fc2) emits nothing: it requantizes to 18 bits, multiplies row m by the gate weight at
`gate[list_base + m]` and adds it into the combine memory at (token `index[list_base + m]`, N tile j), word
`token·NT_max + j` of `COMBINE_WIDTH`-bit lanes (read through a port transparent to the engine's writes).
Results leave about R + C + 19 cycles after their row streamed, through a small FIFO.
"""

from __future__ import annotations

import enum

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from golden import ops

from ..common.arith import (at_most, capped_power_of_two, half_minus_one, index_bits, kept_bit, kept_bit_of_byte,
                    kept_byte, shift_right)
from .array import SystolicArray
from ..vector.gelu import Gelu
from ..memory.layout import DEFAULT_FRACTION_BITS, IDENTITY_MULTIPLIER, IDENTITY_SHIFT
from .multiplier import Multiplier

__all__ = ["GemmEngine", "GemmMode", "gemm_model", "combine_model", "pack_x", "pack_w", "pack_params", "tiles",
           "COMBINE_WIDTH", "GATE_WIDTH"]

DRAIN_STAGES = 14  # read, register, + bias, the DSPs' input and product registers, partial products' register,
                   # product, + half (and the kept bit's byte), the kept bit, + kept bit, shift by bytes, shift by
                   # bits, range, saturate
STREAM_STAGES = 3  # from a row's issue to the array's input: the index read, the source row, the X word read
GELU_STAGES = Gelu.LATENCY + Multiplier.LATENCY + 5   # GELU, × m_h, its register, the kept bit, + half,
                                                      # range and shift, saturate
PARTIAL = 17                                # low bits of a partial product: 17 × 17 unsigned fits one DSP
GATE_WIDTH = ops.GATE_BITS + 1                                          # Q1.15: 1.0 is 2^15
COMBINE_WIDTH = ops.COMBINE_BITS     # docs/numerics.md, section 8


class GemmMode(enum.IntEnum):
    INT8 = 0
    INT16 = 1
    INT18 = 2
    RAW = 3
    COMBINE = 4   # expert fc2: requantize to 18 bits, × gate weight, scatter-accumulate by token
    GELU = 5      # fc1: requantize to int16 in Q.f, GELU, requantize (per command) to the int8 hidden activation

    @property
    def bits(self) -> int | None:
        """Bits of the first requantization (GELU's input for GELU)."""
        return {GemmMode.INT8: 8, GemmMode.INT16: 16, GemmMode.INT18: 18, GemmMode.COMBINE: 18,
                GemmMode.GELU: 16}.get(self)


def tiles(size: int, tile: int) -> int:
    return -(-size // tile)


def _address(depth: int) -> int:
    """Address bits of a `lib.memory.Memory` of `depth` words (0 for one word)."""
    return (depth - 1).bit_length()


class GemmEngine(wiring.Component):
    class Signature(wiring.Signature):
        """Ports of an engine around an `rows` × `cols` array for matrices up to `max_m` × `max_k` × `max_n`,
        with memories of `x_depth`, `w_depth`, `p_depth` and `index_depth` words."""

        def __init__(self, rows, cols, *, max_m, max_k, max_n, x_depth, x_rows, w_depth, p_depth, index_depth,
                     operand_width=8, accumulator_width=32, multiplier_width=16, load_rows=1):
            for name, value in (("max_m", max_m), ("max_k", max_k), ("max_n", max_n), ("x_depth", x_depth),
                                ("w_depth", w_depth), ("p_depth", p_depth), ("index_depth", index_depth)):
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"GemmEngine {name} = {value!r}: must be a positive integer")
            operand = signed(operand_width)
            self.column = data.StructLayout({
                "bias": signed(accumulator_width),
                "multiplier": unsigned(multiplier_width),
                "shift": unsigned(6),
                "fraction_bits": unsigned(4),        # GELU mode: the column's Q.f (5…15), GELU's input format
            })
            self.command = data.StructLayout({
                "m": unsigned(index_bits(max_m + 1)),
                "k_tiles": unsigned(index_bits(tiles(max_k, rows) + 1)),
                "k_last": unsigned(index_bits(rows + 1)),       # valid lanes of the last K tile, 1..R
                "n_tiles": unsigned(index_bits(tiles(max_n, cols) + 1)),
                "x_base": unsigned(index_bits(x_depth)),
                "w_base": unsigned(index_bits(w_depth)),
                "p_base": unsigned(index_bits(p_depth)),
                "gather": unsigned(1),
                "list_base": unsigned(index_bits(index_depth)),
                "mode": unsigned(3),
                "relu": unsigned(1),
                "row_scaled": unsigned(1),     # multiplier and shift per row (attention·V) instead of per column
                "hidden_multiplier": unsigned(multiplier_width),   # GELU: its output's requantization to int8
                "hidden_shift": unsigned(6),
            })
            self.row_scale = data.StructLayout({"multiplier": unsigned(multiplier_width), "shift": unsigned(6)})
            self.result = data.StructLayout({
                "row": unsigned(index_bits(max_m)),
                "tile": unsigned(index_bits(tiles(max_n, cols))),
                "data": data.ArrayLayout(signed(accumulator_width), cols),
            })
            combine_depth = x_rows * tiles(max_n, cols)
            combine = data.ArrayLayout(signed(COMBINE_WIDTH), cols)

            def read(depth, shape):
                return ReadPort.Signature(addr_width=_address(depth), shape=shape)

            super().__init__({
                "command": In(stream.Signature(self.command)),
                "x_read": In(read(x_depth, data.ArrayLayout(operand, rows))),
                "w_read": In(read(w_depth, data.ArrayLayout(data.ArrayLayout(operand, cols), load_rows))),
                "p_read": In(read(p_depth, data.ArrayLayout(self.column, cols))),
                "row_read": In(read(max_m, self.row_scale)),
                "index_read": In(read(index_depth, unsigned(index_bits(x_rows)))),
                "scatter_read": In(read(index_depth, unsigned(index_bits(x_rows)))),
                "gate_read": In(read(index_depth, unsigned(GATE_WIDTH))),
                "combine_read": In(read(combine_depth, combine)),
                "combine_write": In(WritePort.Signature(addr_width=_address(combine_depth), shape=combine)),
                "out": Out(stream.Signature(self.result)),
                "busy": Out(1),
                "error": Out(1),               # sticky: a GELU command with a column's fraction-bit count below 5
            })

    def __init__(self, rows: int, cols: int, *, max_m: int, max_k: int, max_n: int, x_stride: int | None = None,
                 w_depth: int | None = None, p_depth: int | None = None, index_depth: int | None = None,
                 operand_width: int = 8, accumulator_width: int = 32, multiplier_width: int = 16,
                 load_rows: int = 1, gelu_lanes: int | None = None):
        self.rows, self.cols = rows, cols
        self.gelu_lanes = cols if gelu_lanes is None else gelu_lanes
        if not isinstance(self.gelu_lanes, int) or not 1 <= self.gelu_lanes <= cols:
            raise ValueError(f"GemmEngine gelu_lanes = {gelu_lanes!r}: must be from 1 to cols ({cols})")
        self.gelu_chunks = tiles(cols, self.gelu_lanes)
        self.max_m, self.max_k, self.max_n = max_m, max_k, max_n
        self.x_stride = x_stride or max_m
        if self.x_stride < max_m:
            raise ValueError(f"GemmEngine x_stride = {x_stride}: must be at least max_m ({max_m})")
        self.x_depth = self.x_stride * tiles(max_k, rows)
        if not isinstance(load_rows, int) or not 1 <= load_rows <= rows:
            raise ValueError(f"GemmEngine load_rows = {load_rows!r}: must be from 1 to rows ({rows})")
        self.load_rows = load_rows
        self.load_beats = tiles(rows, load_rows)
        self.w_depth = w_depth or tiles(max_k, rows) * tiles(max_n, cols) * self.load_beats
        self.p_depth = p_depth or tiles(max_n, cols)
        self.index_depth = index_depth or max_m
        self.operand_width, self.accumulator_width = operand_width, accumulator_width
        self.multiplier_width = multiplier_width
        self.combine_depth = self.x_stride * tiles(max_n, cols)
        super().__init__(self.Signature(rows, cols, max_m=max_m, max_k=max_k, max_n=max_n, x_depth=self.x_depth,
                                        x_rows=self.x_stride,
                                        w_depth=self.w_depth, p_depth=self.p_depth, index_depth=self.index_depth,
                                        operand_width=operand_width, accumulator_width=accumulator_width,
                                        multiplier_width=multiplier_width, load_rows=load_rows))

    @classmethod
    def for_model(cls, model, accel) -> "GemmEngine":
        """The engine `accel` builds for the backbone of `model`: M up to one token block, gathered from all
        tokens, K and N up to the largest of the backbone's matrix products (attention included); GELU at the
        accelerator's `requant_lanes` values per cycle."""
        largest_k = max(model.patch_dim, model.embed_dim, model.mlp_hidden, model.expert_hidden, model.num_tokens)
        largest_n = max(3 * model.embed_dim, model.mlp_hidden, model.expert_hidden, model.num_tokens)
        return cls(accel.array_rows, accel.array_cols, max_m=accel.tokens_per_block(model), max_k=largest_k,
                   max_n=largest_n, x_stride=model.num_tokens, operand_width=accel.operand_width,
                   accumulator_width=accel.accumulator_width, multiplier_width=accel.requant_multiplier_width,
                   load_rows=accel.weight_feed_bytes // (accel.array_cols * accel.operand_width // 8),
                   gelu_lanes=min(accel.requant_lanes, accel.array_cols))

    def elaborate(self, platform):
        m = Module()
        rows, cols, aw = self.rows, self.cols, self.accumulator_width
        m.submodules.array = array = SystolicArray(rows, cols, self.operand_width, aw, self.load_rows)
        beats = self.load_beats

        command = Signal(self.signature.command)
        m_rows = command.m
        m_last = Signal.like(m_rows)                 # M − 1 and KT − 1, kept from the command
        k_last_tile = Signal.like(command.k_tiles)
        tile_count = range(tiles(self.max_k, rows) * tiles(self.max_n, cols) + 1)
        busy = Signal()
        # The modes the output path tells apart as flags, and the command's saturation width as one flag per
        # width (the accumulator's for RAW and codes that name no mode: exactly one set), set with the command
        # (no mode decoded on the data path).
        modes = {mode: Signal(name=f"{mode.name.lower()}_mode") for mode in (GemmMode.RAW, GemmMode.COMBINE,
                                                                              GemmMode.GELU)}
        widths = sorted({mode.bits for mode in GemmMode if mode.bits})
        ranges = [(bits, Signal(name=f"saturate{bits}")) for bits in widths] + [(aw, Signal(name="saturate_raw"))]
        m.d.comb += [self.busy.eq(busy), self.command.ready.eq(~busy)]

        # --- The three overlapping walks over the tiles t = j·KT + i ------------------------------------------
        # Their conditions are kept as credit counters, each with a register that says it is not zero (no
        # comparator on the paths that start a tile):
        #   load_left    tiles still to load             load_credit   a bank is free: streamed + 2 − loading
        #   stream_left  tiles still to stream           ready         loaded − streaming tiles
        #   bank_credit  accumulator banks free: drained + 2 − N tiles started
        drained = Signal(range(tiles(self.max_n, cols) + 1))   # N tiles drained out of the accumulator
        n_tiles_done = Signal.like(drained)    # N tiles fully accumulated
        load_left, stream_left, ready = (Signal(tile_count, name=n) for n in ("load_left", "stream_left", "ready"))
        load_credit, bank_credit = Signal(range(3)), Signal(range(3))
        load_done, stream_done, n_started, drain_done = Signal(), Signal(), Signal(), Signal()

        # Loader: tile after tile into bank (tile parity), `load_rows` rows per cycle.
        load_bank = Signal()                                   # parity of the tile being loaded
        load_r = Signal(range(beats))                          # the beat of the tile being loaded
        loading = Signal()
        load_address = Signal.like(self.w_read.addr)
        load_pending, load_credited = Signal(), Signal()         # load_left ≠ 0, load_credit ≠ 0
        can_load = load_pending & load_credited
        issue_load = Signal()
        m.d.comb += [self.w_read.addr.eq(load_address), self.w_read.en.eq(issue_load)]
        m.d.comb += [issue_load.eq(busy & (loading | can_load)), load_done.eq(issue_load & (load_r == beats - 1))]
        with m.If(issue_load):
            m.d.sync += [load_address.eq(load_address + 1), loading.eq(load_r != beats - 1)]
            m.d.sync += load_r.eq(Mux(load_r == beats - 1, 0, load_r + 1))
            with m.If(load_r == beats - 1):
                m.d.sync += load_bank.eq(~load_bank)
        # The word read this cycle enters the array next cycle.
        load_valid = Signal()
        load_row = Signal.like(array.load.payload.row)
        entering_bank = Signal()
        load_last = Signal()
        m.d.sync += [load_valid.eq(issue_load), load_row.eq(load_r * self.load_rows), entering_bank.eq(load_bank),
                     load_last.eq(load_done)]
        m.d.comb += [array.load.valid.eq(load_valid), array.load.payload.row.eq(load_row),
                     array.load.payload.bank.eq(entering_bank), array.load.payload.data.eq(self.w_read.data)]

        # Streamer: the M rows of the current tile (N tile j, K tile i, parity stream_bank).
        stream_bank = Signal()
        stream_i = Signal.like(command.k_tiles)
        stream_j = Signal.like(command.n_tiles)
        stream_m = Signal.like(m_rows)
        streaming = Signal()
        # stream_left ≠ 0, ready ≠ 0, bank_credit ≠ 0
        stream_pending, tile_ready, bank_credited = Signal(), Signal(), Signal()
        within = Signal()              # inside an N tile: stream_i ≠ 0 or stream_m ≠ 0 (its bank is taken)
        last_row = Signal()            # stream_m = M − 1
        m_before_last = Signal.like(m_rows)                     # M − 2 (all ones for M = 1: never reached)
        bank_free = within | bank_credited
        # A row is revisited no sooner than every M cycles; with M = 1 keep two cycles between visits, for the
        # accumulator's read-add-write.
        issued_last = Signal()
        single_row = Signal()
        can_stream = stream_pending & tile_ready & bank_free & ~(issued_last & single_row)
        issue_row = Signal()
        m.d.comb += issue_row.eq(busy & (streaming | can_stream))
        m.d.sync += issued_last.eq(issue_row)
        m.d.comb += [stream_done.eq(issue_row & last_row), n_started.eq(issue_row & ~within)]
        tile_base = Signal.like(self.x_read.addr)   # x_base + i·x_stride, kept by addition
        with m.If(issue_row):
            m.d.sync += [stream_m.eq(Mux(last_row, 0, stream_m + 1)), streaming.eq(~last_row),
                         within.eq(~last_row | (stream_i != k_last_tile)),
                         last_row.eq(Mux(last_row, single_row, stream_m == m_before_last))]
            with m.If(last_row):
                m.d.sync += stream_bank.eq(~stream_bank)
                with m.If(stream_i == k_last_tile):
                    m.d.sync += [stream_i.eq(0), stream_j.eq(stream_j + 1), tile_base.eq(command.x_base)]
                with m.Else():
                    m.d.sync += [stream_i.eq(stream_i + 1), tile_base.eq(tile_base + self.x_stride)]

        # The credit counters (a tile may stream from the cycle after its last load row entered). Each is
        # counted up and down from its register alone, and so is its flag; the late control signals only
        # choose (no carry chain or comparator after the issue logic's fan-out).
        def count(counter, nonzero, up, down):
            m.d.sync += counter.eq(Mux(up == down, counter, Mux(up, counter + 1, counter - 1)))
            m.d.sync += nonzero.eq(Mux(up == down, nonzero, up | (counter != 1)))

        count(load_left, load_pending, 0, load_done)
        count(stream_left, stream_pending, 0, stream_done)
        count(ready, tile_ready, load_last, stream_done)
        count(load_credit, load_credited, stream_done, load_done)
        count(bank_credit, bank_credited, drain_done, n_started)

        # Stage 1: the gather index read (or the row itself); stage 2: the source row registered (a block RAM's
        # output never meets an adder); stage 3: the X word; stage 4: into the array.
        m.d.comb += [self.index_read.addr.eq(command.list_base + stream_m), self.index_read.en.eq(1)]
        side = data.StructLayout({"valid": 1, "m": unsigned(len(stream_m)), "i": unsigned(len(stream_i)),
                                  "j": unsigned(len(stream_j)), "bank": 1, "first": 1, "last": 1})
        stage1 = Signal(side)
        stage1_base = Signal.like(tile_base)
        m.d.sync += stage1_base.eq(tile_base)
        m.d.sync += [stage1.valid.eq(issue_row), stage1.m.eq(stream_m), stage1.i.eq(stream_i),
                     stage1.j.eq(stream_j), stage1.bank.eq(stream_bank), stage1.first.eq(stream_i == 0),
                     stage1.last.eq(stream_i == k_last_tile)]
        source = Signal(side, name="source")
        source_base, source_row = Signal.like(tile_base), Signal.like(self.x_read.addr)
        m.d.sync += [source.eq(stage1), source_base.eq(stage1_base),
                     source_row.eq(Mux(command.gather, self.index_read.data, stage1.m))]
        m.d.comb += [self.x_read.addr.eq(source_base + source_row), self.x_read.en.eq(1)]
        stage2 = Signal(side)
        m.d.sync += stage2.eq(source)
        # Lanes of the last K tile past K are zeroed: the per-lane mask is set once per command.
        lane_valid = Signal(rows)
        for r in range(rows):
            keep = ~stage2.last | lane_valid[r]
            m.d.comb += array.stream_in.payload.data[r].eq(Mux(keep, self.x_read.data[r], 0))
        m.d.comb += [array.stream_in.valid.eq(stage2.valid), array.stream_in.payload.bank.eq(stage2.bank)]

        # Sideband alongside the array, to meet its results.
        delayed = [stage2]
        for stage in range(array.latency):
            register = Signal(side, name=f"side{stage}")
            m.d.sync += register.eq(delayed[-1])
            delayed.append(register)
        before, arriving = delayed[-2], delayed[-1]

        # Accumulator memory: two banks of max_m rows, bank = N tile mod 2, the bank the address's top bit (no
        # adder in front of the address ports; block RAM depths come in powers of two anyway).
        accumulator_layout = data.ArrayLayout(signed(aw), cols)
        row_bits = index_bits(self.max_m)

        def accumulator_row(tile, row):
            return Cat(row[:row_bits], tile[0])
        # Each read port is an asynchronous read and a register (`accumulated`, `drained_word`) that synthesis
        # folds into the block RAM; `no_rw_check` leaves a read of the row being written undefined rather than
        # emulating the old word in logic (a multiplexer on every bit, a register on every written bit): the
        # drain never reads the bank being written, and the accumulation chooses the written word itself.
        m.submodules.accumulator = accumulator = Memory(shape=accumulator_layout, depth=2 << row_bits, init=[],
                                                        attrs={"no_rw_check": 1})
        write = accumulator.write_port()
        accumulate_read = accumulator.read_port(domain="comb")
        drain_read = accumulator.read_port(domain="comb")
        accumulated, drained_word = Signal(accumulator_layout), Signal(accumulator_layout)
        accumulate_address = Signal.like(accumulate_read.addr)
        m.d.comb += [accumulate_address.eq(accumulator_row(before.j, before.m)),
                     accumulate_read.addr.eq(accumulate_address)]
        m.d.sync += [accumulated.eq(accumulate_read.data), drained_word.eq(drain_read.data)]
        # The array's results and the row read back are registered, then added and written a cycle later:
        # the next visit of a row is at least two cycles later (see the streamer), so its read is never
        # issued before the write, at the latest in the same cycle. Then the word being written is kept and
        # chosen instead of the block RAM's, after its output register.
        settled = Signal(side)
        results = Signal(accumulator_layout)
        previous = Signal(accumulator_layout)
        collided = [Signal(name=f"collided{stage}") for stage in range(2)]
        written = [Signal(accumulator_layout, name=f"written{stage}") for stage in range(2)]
        m.d.sync += [settled.eq(arriving), results.eq(array.out.payload), previous.eq(accumulated),
                     collided[0].eq(write.en & (write.addr == accumulate_address)), written[0].eq(write.data),
                     collided[1].eq(collided[0]), written[1].eq(written[0])]
        m.d.comb += [write.addr.eq(accumulator_row(settled.j, settled.m)), write.en.eq(settled.valid)]
        for c in range(cols):
            before_sum = Mux(collided[1], written[1][c], previous[c])
            m.d.comb += write.data[c].eq(Mux(settled.first, 0, before_sum) + results[c])
        with m.If(settled.valid & settled.last & (settled.m == m_last)):
            m.d.sync += n_tiles_done.eq(n_tiles_done + 1)

        # Drain: rows of N tile `drained` through bias and requantization into the output FIFO.
        # FIFO places: a row holds one from its issue until it leaves the FIFO, so they cover the rows a path
        # holds at its rate: one per cycle through the drain, one per ⌈C / gelu_lanes⌉ cycles through GELU.
        gelu_path = DRAIN_STAGES + 1 + self.gelu_chunks + GELU_STAGES
        places = max(DRAIN_STAGES, -(-gelu_path // self.gelu_chunks)) + 3
        # The FIFO is LUT RAM written from a register and read asynchronously; the drain issues no row without a
        # place for it (`free`), so a write needs no room check (no wide enable from the FIFO's level).
        m.submodules.fifo = fifo = Memory(shape=len(self.out.payload.as_value()), depth=places, init=[])
        fifo_write, fifo_read = fifo.write_port(), fifo.read_port(domain="comb")
        produce, consume = Signal(range(places)), Signal(range(places))
        fifo_rows, holding, leaving = Signal(range(places + 1)), Signal(), Signal()   # holding: fifo_rows ≠ 0
        drain_m = Signal.like(m_rows)
        draining = Signal()
        free = Signal(range(places + 1), init=places)   # FIFO places not taken or promised
        params_ready = Signal()
        m.d.comb += [self.p_read.addr.eq(command.p_base + drained), self.p_read.en.eq(~params_ready)]
        params = Signal(data.ArrayLayout(self.signature.column, cols))
        halves = [Signal(aw + self.multiplier_width + 2, name=f"half{c}") for c in range(cols)]
        # The product has product_width bits and |product| < 2^(product_width − 2): any shift from product_width
        # on rounds it to 0, so shifts are clamped there (and 2^(shift−1) − 1 fits the rounding adder).
        product_width = aw + 1 + self.multiplier_width + 1

        def clamped(shift):
            return at_most(shift, product_width)

        drain_last = Signal()                         # drain_m = M − 1, a flag kept like the streamer's
        with m.If(busy & (drained < n_tiles_done) & ~params_ready & ~draining):
            m.d.sync += [draining.eq(1), drain_m.eq(0), drain_last.eq(single_row)]
        with m.If(draining & ~params_ready):
            m.d.sync += [params.eq(self.p_read.data), params_ready.eq(1)]
            for c in range(cols):  # 2^(shift−1) − 1 per column, once per N tile, off the data path
                m.d.sync += halves[c].eq(half_minus_one(clamped(self.p_read.data[c].shift)))
        room = Signal(init=1)                         # free ≠ 0
        issue_drain = Signal()
        # GELU rows are spaced ⌈C / gelu_lanes⌉ cycles apart (the GELU path serializes each row)
        gelu_mode = modes[GemmMode.GELU]
        spacing = Signal(range(max(self.gelu_chunks, 2)))
        m.d.comb += issue_drain.eq(draining & params_ready & room & (spacing == 0))
        with m.If(issue_drain & gelu_mode):
            m.d.sync += spacing.eq(self.gelu_chunks - 1)
        with m.Elif(spacing != 0):
            m.d.sync += spacing.eq(spacing - 1)
        m.d.comb += drain_read.addr.eq(accumulator_row(drained, drain_m))
        m.d.comb += drain_done.eq(issue_drain & drain_last)
        with m.If(issue_drain):
            m.d.sync += [drain_m.eq(drain_m + 1), drain_last.eq(~drain_last & (drain_m == m_before_last))]
            with m.If(drain_last):
                m.d.sync += [draining.eq(0), params_ready.eq(0), drained.eq(drained + 1)]
        # Pipeline, one register per step so the requantizer meets timing on FPGA block RAMs and DSP blocks:
        # read, register, add the bias, two partial products (through the DSPs' input and output registers and
        # one beside them), their sum, add 2^(shift−1) − 1, add the lowest kept bit, shift by bytes, by bits, the
        # range check, saturate; then into the FIFO (or the combine).
        stages = [(issue_drain, drain_m, drained)]
        for stage in range(DRAIN_STAGES):
            valid, row, tile = Signal(name=f"drain{stage}_valid"), Signal.like(drain_m), Signal.like(drained)
            m.d.sync += [valid.eq(stages[-1][0]), row.eq(stages[-1][1]), tile.eq(stages[-1][2])]
            stages.append((valid, row, tile))
        # GELU mode: each column's Q.f travels with the row (the next tile's parameters may load meanwhile)
        fraction_layout = data.ArrayLayout(unsigned(4), cols)
        fraction_pipe = [Signal(fraction_layout, name="fraction_bits_issued")]
        m.d.comb += [fraction_pipe[0][c].eq(params[c].fraction_bits) for c in range(cols)]
        for stage in range(DRAIN_STAGES):
            fraction_pipe.append(Signal(fraction_layout, name=f"fraction_bits{stage}"))
            m.d.sync += fraction_pipe[-1].eq(fraction_pipe[-2])
        raw = modes[GemmMode.RAW]
        final_valid, final_row, final_tile = stages[-1]
        lanes = Signal(data.ArrayLayout(signed(aw), cols))
        result = Signal(self.signature.result)
        m.d.comb += [result.row.eq(final_row), result.tile.eq(final_tile), result.data.eq(lanes)]
        # Per-row scaling (attention·V): the row's multiplier and shift are read with its accumulator word; its
        # 2^(shift−1) − 1 is decoded once for the row from the registered shift, a stage later.
        row_scaled = Signal()                                 # set with the command (RAW has no scales)
        m.d.comb += [self.row_read.addr.eq(drain_m), self.row_read.en.eq(issue_drain)]
        row_shift = Signal(range(product_width + 1))
        m.d.sync += row_shift.eq(clamped(self.row_read.data.shift))
        row_half = Signal.like(halves[0])
        m.d.comb += row_half.eq(half_minus_one(row_shift))
        for c in range(cols):
            # One stage per step, the row's parameters travelling with it; the product in two halves that
            # each fit one 18 × 18 DSP multiplier with its registers (`Multiplier`), added in the next stage.
            read = Signal(signed(aw), name=f"read{c}")
            bias = Signal.like(params[c].bias, name=f"bias{c}")
            multiplier = Signal.like(params[c].multiplier, name=f"multiplier{c}")
            biased = [Signal(signed(aw + 1), name=f"biased{c}_{stage}") for stage in range(4)]
            scale = Signal.like(multiplier, name=f"scale{c}")         # the multiplier beside biased[0]
            low = m.submodules[f"requantize_low{c}"] = Multiplier(unsigned(PARTIAL), multiplier.shape())
            high = m.submodules[f"requantize_high{c}"] = Multiplier(signed(aw + 1 - PARTIAL), multiplier.shape())
            # the biased word leaves a fabric register for the DSP blocks (no adder in front of their inputs)
            m.d.comb += [low.a.eq(biased[0][:PARTIAL]), low.b.eq(scale),
                         high.a.eq(biased[0][PARTIAL:]), high.b.eq(scale)]
            product = Signal(signed(product_width), name=f"product{c}")
            halfway = Signal(signed(product_width + 1), name=f"halfway{c}")
            kept = Signal(name=f"kept{c}")
            byte = Signal(8, name=f"byte{c}")                     # the byte of the product holding the kept bit
            halfway_held = Signal.like(halfway, name=f"halfway_held{c}")
            rounded = Signal(signed(product_width + 1), name=f"rounded{c}")
            coarse = Signal(signed(product_width + 1), name=f"coarse{c}")
            shifted = Signal(signed(product_width + 1), name=f"shifted{c}")
            shift = [Signal(6, name=f"shift{c}_{stage}") for stage in range(10)]
            half = [Signal.like(halves[c], name=f"half{c}_{stage}") for stage in range(6)]
            # the DSP blocks' products land in registers beside them before the adder (a DSP output may sit
            # far from its adder in the placement)
            partial_low = Signal.like(low.p, name=f"partial_low{c}")
            partial_high = Signal.like(high.p, name=f"partial_high{c}")
            m.d.sync += [
                # the accumulator word straight into a register (the block RAM's output register)
                read.eq(drained_word[c]), bias.eq(params[c].bias),
                multiplier.eq(Mux(row_scaled, self.row_read.data.multiplier, params[c].multiplier)),
                shift[0].eq(Mux(raw, 0, clamped(params[c].shift))),
                half[0].eq(Mux(raw, 0, halves[c])),
                biased[0].eq(read + bias), scale.eq(multiplier), shift[1].eq(Mux(row_scaled, row_shift, shift[0])),
                half[1].eq(Mux(row_scaled, row_half, half[0])),
                biased[1].eq(biased[0]), shift[2].eq(shift[1]), half[2].eq(half[1]),
                biased[2].eq(biased[1]), shift[3].eq(shift[2]), half[3].eq(half[2]),
                partial_low.eq(low.p), partial_high.eq(high.p),
                biased[3].eq(biased[2]), shift[4].eq(shift[3]), half[4].eq(half[3]),
                product.eq(Mux(raw, biased[3], (partial_high << PARTIAL) + partial_low)),
                shift[5].eq(shift[4]), half[5].eq(half[4]),
                # the kept bit picked in two steps (its byte, then the bit) beside + 2^(shift−1) − 1
                halfway.eq(product + half[5]), shift[6].eq(shift[5]),
                byte.eq(kept_byte(product, shift[5])),
                halfway_held.eq(halfway), kept.eq(kept_bit_of_byte(byte, shift[6])),
                shift[7].eq(shift[6]),
                rounded.eq(halfway_held + kept), shift[8].eq(shift[7]),
                # the shift in two steps: by whole bytes, then by the rest
                coarse.eq(rounded >> Cat(Const(0, 3), shift[8][3:])), shift[9].eq(shift[8]),
                shifted.eq(coarse >> shift[9][:3]),
            ]
            m.d.sync += lanes[c].eq(_saturate(m, shifted, ranges, command.relu, aw, c))
        combining = modes[GemmMode.COMBINE]

        # GELU (fc1): the row's int16 values through the GELU unit `gelu_lanes` at a time (rows issue at most
        # one per ⌈C / gelu_lanes⌉ cycles in this mode: fc1's K ≥ that many tiles keeps the drain hidden), then
        # y = sat8(round_shift(g · m_h, s_h)) with the command's hidden multiplier and shift (2^(s_h−1) − 1 and
        # the saturation threshold 2^(s_h+7) set with the command); the chunks are gathered back into a row.
        lanes_g, chunks = self.gelu_lanes, self.gelu_chunks
        m.submodules.gelu = gelu = Gelu(lanes_g)
        pending = Signal(data.ArrayLayout(signed(16), chunks * lanes_g))       # the row, shifted out a chunk a cycle
        pending_f = Signal(data.ArrayLayout(unsigned(4), chunks * lanes_g))    # its columns' Q.f, alike
        pending_row, pending_tile = Signal.like(final_row), Signal.like(final_tile)
        chunk = Signal(range(max(chunks, 2)))
        serializing = Signal()
        with m.If(final_valid & gelu_mode):
            # columns past C (the last chunk's spare lanes) take f = 15, a valid count
            m.d.sync += [pending.eq(Cat(*(lanes[c][:16] for c in range(cols)))),
                         pending_f.eq(Cat(fraction_pipe[-1], *([Const(15, 4)] * (chunks * lanes_g - cols)))),
                         pending_row.eq(final_row), pending_tile.eq(final_tile), chunk.eq(0), serializing.eq(1)]
        with m.Elif(serializing):
            m.d.sync += [pending.eq(pending.as_value() >> (16 * lanes_g)),
                         pending_f.eq(pending_f.as_value() >> (4 * lanes_g)), chunk.eq(chunk + 1)]
            with m.If(chunk == chunks - 1):
                m.d.sync += serializing.eq(0)
        m.d.comb += [gelu.input.valid.eq(serializing), gelu.output.ready.eq(1), self.error.eq(gelu.error)]
        m.d.comb += [gelu.input.payload.data[g].eq(pending[g]) for g in range(lanes_g)]
        m.d.comb += [gelu.input.payload.fraction_bits[g].eq(pending_f[g]) for g in range(lanes_g)]
        hidden_width = 16 + self.multiplier_width + 1                     # g · m_h, signed
        hidden_half = Signal(hidden_width)
        hidden_threshold = Signal(hidden_width + 1)                                   # 2^(s_h+7)
        hidden_floor = Signal(signed(hidden_width + 2))                               # −2^(s_h+7)
        hidden_shift = Signal(range(hidden_width + 1))          # the command's, clamped where the product ends
        gelu_layout = data.StructLayout({"valid": 1, "row": len(final_row), "tile": len(final_tile), "last": 1})
        gelu_side = [Signal(gelu_layout, name="gelu_side_in")]
        m.d.comb += [gelu_side[0].valid.eq(serializing), gelu_side[0].row.eq(pending_row),
                     gelu_side[0].tile.eq(pending_tile), gelu_side[0].last.eq(chunk == chunks - 1)]
        for stage in range(GELU_STAGES):
            gelu_side.append(Signal(gelu_layout, name=f"gelu_side{stage}"))
            m.d.sync += gelu_side[-1].eq(gelu_side[-2])
        out_chunk = Signal(data.ArrayLayout(signed(8), lanes_g))
        for g in range(lanes_g):
            scaled = m.submodules[f"hidden{g}"] = Multiplier(signed(16), unsigned(self.multiplier_width))
            m.d.comb += [scaled.a.eq(gelu.output.payload[g]), scaled.b.eq(command.hidden_multiplier)]
            product = [Signal(signed(hidden_width), name=f"hidden_product{g}_{stage}") for stage in range(2)]
            kept = Signal(name=f"hidden_kept{g}")
            rounding = Signal(signed(hidden_width + 1), name=f"hidden_rounding{g}")
            above, below = Signal(name=f"hidden_above{g}"), Signal(name=f"hidden_below{g}")
            shifted = Signal(signed(8), name=f"hidden_shifted{g}")
            m.d.sync += [
                # the DSP block's product lands in a register beside it first
                product[0].eq(scaled.p),
                product[1].eq(product[0]), kept.eq(kept_bit(product[0], hidden_shift)),
                rounding.eq(product[1] + hidden_half + kept),
                # the range check and the shift side by side, then the choice
                above.eq(rounding >= hidden_threshold), below.eq(rounding < hidden_floor),
                shifted.eq(shift_right(rounding, hidden_shift, 8)),
                out_chunk[g].eq(Mux(above, 127, Mux(below, -128, shifted))),
            ]
        # chunks gathered into the row: the newest at the top, the row complete with its last chunk
        gathered = Signal(data.ArrayLayout(signed(8), chunks * lanes_g))
        row_out = Cat(gathered.as_value()[8 * lanes_g:], out_chunk.as_value()) if chunks > 1 else out_chunk.as_value()
        gelu_out = gelu_side[-1]
        with m.If(gelu_out.valid):
            m.d.sync += gathered.eq(row_out)
        assembled = Signal(data.ArrayLayout(signed(8), chunks * lanes_g))
        hidden = Signal(self.signature.result)
        m.d.comb += [assembled.eq(row_out), hidden.row.eq(gelu_out.row), hidden.tile.eq(gelu_out.tile)]
        m.d.comb += [hidden.data[c].eq(assembled[c]) for c in range(cols)]
        # the FIFO's write enable from a register: the rows that will arrive next cycle
        writing = Signal()
        m.d.sync += writing.eq(Mux(gelu_mode, gelu_side[-2].valid & gelu_side[-2].last, stages[-2][0] & ~combining))
        m.d.comb += [fifo_write.addr.eq(produce), fifo_write.en.eq(writing),
                     fifo_write.data.eq(Mux(gelu_mode, hidden, result))]
        with m.If(writing):
            m.d.sync += produce.eq(Mux(produce == places - 1, 0, produce + 1))
        # A place is promised when a row issues, and given back when a row leaves the FIFO or, in COMBINE
        # mode, leaves the pipeline without entering it: the new count is chosen among precomputed ones.
        returned = Cat(leaving, final_valid & combining)
        with m.Switch(Cat(issue_drain, returned)):
            for events in range(8):
                gained = ((events >> 1) & 1) + ((events >> 2) & 1) - (events & 1)
                with m.Case(events):
                    m.d.sync += [free.eq(free + gained), room.eq(free + gained != 0)]

        # Scatter-accumulate (COMBINE): row m's token and gate weight are read with the accumulator row and
        # travel with it down the output path.
        for port in (self.scatter_read, self.gate_read):
            m.d.comb += [port.addr.eq(command.list_base + drain_m), port.en.eq(issue_drain)]
        # The token is registered off the read, then its word offset (token · NT_max) multiplied out.
        n_stride = tiles(self.max_n, cols)
        token = Signal.like(self.scatter_read.data)
        offset_pipe = [Signal.like(self.combine_read.addr, name="token_offset0")]
        gate_pipe = [self.gate_read.data]
        m.d.sync += [token.eq(self.scatter_read.data), offset_pipe[0].eq(token * n_stride)]
        for stage in range(DRAIN_STAGES - 1):
            gate_pipe.append(Signal.like(self.gate_read.data, name=f"gate{stage}"))
            m.d.sync += gate_pipe[-1].eq(gate_pipe[-2])
            if stage < DRAIN_STAGES - 3:
                offset_pipe.append(Signal.like(offset_pipe[0], name=f"token_offset{stage + 1}"))
                m.d.sync += offset_pipe[-1].eq(offset_pipe[-2])
        # The rounded row (`lanes`) and its gate enter the DSP blocks' input registers while the combine word
        # is read; y·g and the word land in registers the cycle after, are added and written back the next
        # (each token's word is written once per command: no read-after-write hazard to forward).
        combine_address = Signal.like(self.combine_read.addr)
        m.d.sync += combine_address.eq(offset_pipe[-1] + final_tile)
        m.d.comb += [self.combine_read.addr.eq(combine_address), self.combine_read.en.eq(1)]
        reading_valid, weighted_valid, writing_valid = Signal(), Signal(), Signal()
        weighted_address, writing_address = Signal.like(combine_address), Signal.like(combine_address)
        m.d.sync += [reading_valid.eq(final_valid & combining), weighted_valid.eq(reading_valid),
                     writing_valid.eq(weighted_valid), weighted_address.eq(combine_address),
                     writing_address.eq(weighted_address)]
        for c in range(cols):
            # Saturated to 18 bits in COMBINE mode: one 18 × 17 DSP multiplier, no partial-product adder.
            weighted = m.submodules[f"gate_weight{c}"] = Multiplier(signed(GemmMode.COMBINE.bits),
                                                                    gate_pipe[-1].shape())
            stored = Signal.like(self.combine_read.data[c], name=f"stored{c}")
            product = Signal.like(weighted.p, name=f"weighted{c}")
            m.d.comb += [weighted.a.eq(lanes[c][:GemmMode.COMBINE.bits]), weighted.b.eq(gate_pipe[-1]),
                         self.combine_write.data[c].eq(stored + product)]
            m.d.sync += [stored.eq(self.combine_read.data[c]), product.eq(weighted.p)]
        m.d.comb += [self.combine_write.addr.eq(writing_address), self.combine_write.en.eq(writing_valid)]
        m.d.comb += [fifo_read.addr.eq(consume), self.out.valid.eq(holding), self.out.payload.eq(fifo_read.data),
                     leaving.eq(self.out.ready & holding)]
        with m.If(leaving):
            m.d.sync += consume.eq(Mux(consume == places - 1, 0, consume + 1))
        count(fifo_rows, holding, writing, leaving)

        # Commands.
        with m.If(self.command.valid & self.command.ready):
            payload = self.command.payload
            m.d.sync += row_scaled.eq(payload.row_scaled & (payload.mode != GemmMode.RAW))
            m.d.sync += [flag.eq(payload.mode == mode) for mode, flag in modes.items()]
            named = [Cat(*(payload.mode == mode for mode in GemmMode if mode.bits == bits)).any() for bits in widths]
            m.d.sync += [flag.eq(is_named) for (_, flag), is_named in zip(ranges, named)]
            m.d.sync += ranges[-1][1].eq(~Cat(*named).any())
            clamped_shift = at_most(payload.hidden_shift, hidden_width)
            threshold = capped_power_of_two(clamped_shift + 7, hidden_width)
            m.d.sync += [hidden_shift.eq(clamped_shift), hidden_half.eq(half_minus_one(clamped_shift)),
                         hidden_threshold.eq(threshold), hidden_floor.eq(-threshold)]
            empty = (payload.m == 0) | (payload.k_tiles == 0) | (payload.n_tiles == 0)
            total = payload.k_tiles * payload.n_tiles
            m.d.sync += [
                command.eq(payload), busy.eq(~empty), single_row.eq(payload.m == 1),
                m_last.eq(payload.m - 1), k_last_tile.eq(payload.k_tiles - 1),
                lane_valid.eq(Cat(*(payload.k_last > r for r in range(rows)))),
                load_address.eq(payload.w_base),
                load_left.eq(total), stream_left.eq(total), ready.eq(0), load_credit.eq(2), bank_credit.eq(2),
                load_pending.eq(1), stream_pending.eq(1), tile_ready.eq(0), load_credited.eq(1), bank_credited.eq(1),
                within.eq(0), last_row.eq(payload.m == 1), m_before_last.eq(payload.m - 2),
                drained.eq(0), n_tiles_done.eq(0),
                load_bank.eq(0), load_r.eq(0), loading.eq(0),
                stream_bank.eq(0), stream_i.eq(0), stream_j.eq(0), stream_m.eq(0), streaming.eq(0),
                tile_base.eq(payload.x_base),
            ]
        in_pipeline = Cat(*(valid for valid, _, _ in stages[1:]), serializing,
                          *(side.valid for side in gelu_side[1:])).any()
        combining_now = Cat(reading_valid, weighted_valid, writing_valid).any()
        # registered: the pipeline was empty in the previous cycle and no row issued then
        emptied = Signal()
        m.d.sync += emptied.eq(~(issue_drain | in_pipeline | combining_now))
        with m.If(busy & (drained == command.n_tiles) & emptied):
            m.d.sync += busy.eq(0)
        return m


def _saturate(m, value, ranges, relu, aw, lane):
    """Clamp to the command's signed range of b bits (to 0 from below with `relu`): `ranges` lists (b, flag),
    the flags set per command, exactly one set. Two steps, one register apart: first, for each span of bits
    between the widths' sign positions b − 1, whether it is all ones and whether all zeros (reductions, no
    comparator's carry chain); then whether the value fits b bits (its bits from b − 1 up all equal: the
    spans' flags), and the choice; the sign says on which side it left the range. The result is a register
    later than `value`."""
    held = Signal.like(value, name=f"held{lane}")
    result = Signal(signed(aw), name=f"saturated{lane}")
    m.d.sync += held.eq(value)
    starts = sorted({bits - 1 for bits, _ in ranges if bits - 1 < len(value)})
    ones, zeros = Signal(len(starts), name=f"ones{lane}"), Signal(len(starts), name=f"zeros{lane}")
    for index, start in enumerate(starts):
        span = value[start:starts[index + 1] if index + 1 < len(starts) else len(value)]
        m.d.sync += [ones[index].eq(span.all()), zeros[index].eq(~span.any())]
    checks = []
    for bits, flag in ranges:
        first = starts.index(bits - 1) if bits - 1 < len(value) else len(starts)
        checks.append(flag & (ones[first:].all() | zeros[first:].all()))
    fits = Cat(*checks).any()
    sign = held[-1]
    for index, (bits, flag) in enumerate(ranges):
        with m.If(flag) if index == 0 else m.Elif(flag) if index < len(ranges) - 1 else m.Else():
            with m.If(~fits & ~sign):
                m.d.comb += result.eq((1 << (bits - 1)) - 1)
            with m.Elif(relu & sign):
                m.d.comb += result.eq(0)
            with m.Elif(~fits):
                m.d.comb += result.eq(-(1 << (bits - 1)))
            with m.Else():
                m.d.comb += result.eq(held)
    return result


# --- Memory images and the reference ------------------------------------------------------------------------

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
    """What the engine emits, from the golden operations: requantize(X[rows] @ W + b) or X·W + b (RAW); for
    GELU, requantize(gelu(requantize(X·W + b, 16), f), m_h, s_h, 8) with `gelu` = (f, m_h, s_h), f per column
    ([N]) or one for all."""
    x = np.asarray(x) if rows is None else np.asarray(x)[np.asarray(rows)]
    acc = ops.exact_matmul(x.astype(np.int16), np.asarray(w, np.int8)) + np.asarray(bias, np.int64)
    if mode == GemmMode.RAW:
        return ops.saturate(acc, 32, lower=0 if relu else None).astype(np.int64)
    y = ops.requantize(acc, multiplier, shift, mode.bits, lower=0 if relu else None)
    if mode == GemmMode.GELU:
        fraction_bits, hidden_multiplier, hidden_shift = gelu
        y = ops.requantize(ops.gelu(y, fraction_bits), hidden_multiplier, hidden_shift, 8)
    return y.astype(np.int64)


def combine_model(x, experts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                  routing_ids: np.ndarray, gate_weights: np.ndarray) -> np.ndarray:
    """The combine accumulator after every expert's COMBINE command, from the golden operations: for token t
    Σ_j y_{e_j}(t)·g_j, y the expert's fc2 output requantized to 18 bits. experts[e] = (W, bias, multiplier,
    shift, token list); returns int64 [T, N]. `golden.ops.combine` rounds it once into the residual."""
    t = len(routing_ids)
    n = experts[0][0].shape[1]
    total = np.zeros((t, n), dtype=np.int64)
    for e, (w, bias, multiplier, shift, tokens) in enumerate(experts):
        if not len(tokens):
            continue
        y = gemm_model(x, w, bias, multiplier, shift, GemmMode.INT18, rows=tokens)
        slot = np.argmax(routing_ids[tokens] == e, axis=1)
        total[tokens] += y * gate_weights[tokens, slot][:, None]
    return total
