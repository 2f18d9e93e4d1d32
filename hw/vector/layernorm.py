"""LayerNorm over rows of the residual stream, bit for bit `golden.ops.layernorm` (docs/numerics.md, section 6).

Three parts work on three rows at once, rows kept in a two-row buffer:
1. **Sums** (`lanes` values per cycle): each beat is written into the row buffer while S = Σx and Q = Σx²
   accumulate (one squarer per lane, an adder tree, four stages).
2. **Statistics** (one row at a time, sequential): v = D·Q − S² + eps, e = max(0, ⌈(bitlen(v) − 32)/2⌉),
   2^62 // (v >> 2e) by restoring division (64 − bitlen(v >> 2e) steps, two a cycle by radix 4, one in the first
   when their number is odd: 16-17 cycles for a normalised v, 32 for rows of nearly equal values), its integer
   square root r digit by digit beside it (a result bit a cycle from each cycle's two quotient bits, one cycle
   after the division's last), and S·r (S·|S| and S·r by a `WideMultiplier`, four cycles each). About 31 cycles
   for a typical row; it overlaps the next row's sums and the previous row's output.
3. **Normalise** (`lanes` values per cycle, the row read back): x̂ = round_shift(D·(x·r) − S·r, 19 + e) in
   Q.12, then per output o: y_o = sat_b(round_shift(x̂·G_o + B_o, sh_o)). Thirteen stages (x·r in registered DSP
   blocks, `WideMultiplier`, four of them; x̂ into a register of the fabric, then x̂·G_o in a DSP block,
   `Multiplier`, two; the bit that rounds to even picked a stage before the rounding add). The last is a skid
   buffer's (`hw.common.pipeline.skid_stage`: `ready` reaches only its registers; the others stop together).

So a row costs max(statistics, ⌈D / lanes⌉ + about 18) cycles once the pipeline is full (the second term: a bank
holds its row from the first beat in to the last beat read, two banks; its r, S·r and e stay held a few stages
more, which only a stalled output makes the next row's statistics wait for).

Ports: `command` {rows, set, eps, shifts[outputs]} normalises `rows` rows with parameter set `set` (each
output's shift sh_o and the model's eps as the numerics give them; eps ≥ 1, as the quantizer makes it: with eps 0
a row of equal values has no inverse square root). `input`: ⌈D / lanes⌉ beats per row of
`lanes` signed `width`-bit values (lanes past D ignored). `output`: per beat {y[outputs][lanes], last of row}
(lanes past D zero). `params_write`: per set, ⌈D / lanes⌉ words of {gamma[outputs][lanes] int16,
beta[outputs][lanes] int`BETA_BITS`} (channel beat·lanes + lane), written before use. `busy` until the
command's last row has left.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, WritePort
from amaranth.lib.wiring import In, Out

from golden import ops

from ..common.arith import (beyond, bits_from, half_minus_one, highest_bit, index_bits, kept_bit, radix4_step,
                            shift_right, times_constant, tree_sum)
from ..common.multiplier import Multiplier, WideMultiplier
from ..common.pipeline import skid_stage
from .rows import BankState, RowBuffer, lane_mask, pick

__all__ = ["LayerNorm", "BETA_BITS", "GAMMA_BITS"]

GAMMA_BITS = 16          # G < 2^15 (docs/numerics.md, section 6)
BETA_BITS = 48           # B: beyond ±2^47 every output saturates (|x̂·G| < 2^33, sh ≤ 63 − … checked on write)
ROUNDING_BITS = BETA_BITS + 2          # x̂·G + B + 2^(sh−1) − 1 + its kept bit
NORMALISED_BITS = 18     # x̂ in Q.12: |x̂| ≤ √D · 2^12 < 2^17 for D ≤ 1024
DIVIDEND_BITS = 62       # 2^62 // v'
ROOT_BITS = DIVIDEND_BITS // 2 + 1     # r = isqrt(2^62 // v') ≤ 2^31
SHIFT_BASE = ops.LN_NORM_BITS - ops.LN_FRACTION_BITS    # x̂'s shift is 19 + e


class LayerNorm(wiring.Component):
    SUM_STAGES = 3         # side registers: the beat, its squares, the adder trees (then the accumulators)
    SCALE_STAGES = WideMultiplier.LATENCY       # x·r: the beat read, then the registered DSP blocks
    NORMALISE_STAGES = 9 + SCALE_STAGES

    def __init__(self, dim: int, lanes: int = 16, *, output_bits=(8,), width: int = 16, param_sets: int = 1,
                 max_rows: int = 4096):
        for name, value in (("dim", dim), ("lanes", lanes), ("param_sets", param_sets), ("max_rows", max_rows)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LayerNorm {name} = {value!r}: must be a positive integer")
        if dim < 2 or dim > 1024:
            raise ValueError(f"LayerNorm dim = {dim}: must be from 2 to 1024 (x̂ is {NORMALISED_BITS} bits)")
        if not 2 <= width <= 16:
            raise ValueError(f"LayerNorm width = {width!r}: the numerics normalise rows of at most 16 bits")
        output_bits = tuple(output_bits)
        if not output_bits or any(not isinstance(b, int) or not 2 <= b <= 32 for b in output_bits):
            raise ValueError(f"LayerNorm output_bits = {output_bits!r}: one or more widths from 2 to 32")
        self.dim, self.lanes, self.width, self.output_bits = dim, lanes, width, output_bits
        self.param_sets, self.max_rows = param_sets, max_rows
        self.beats = -(-dim // lanes)
        self.sum_width = width + dim.bit_length()                          # S, signed
        self.square_width = 2 * width - 1 + dim.bit_length()               # Q, unsigned: x² ≤ 2^(2·width − 2)
        self.v_width = (dim * dim << (2 * width - 2)).bit_length() + 1     # v = D·Q − S² + eps ≥ 0
        self.max_e = max(0, -(-(self.v_width - 32) // 2))
        outputs = len(output_bits)
        lane_values = lambda shape: data.ArrayLayout(data.ArrayLayout(shape, lanes), outputs)
        self.params_layout = data.StructLayout({"gamma": lane_values(signed(GAMMA_BITS)),
                                                "beta": lane_values(signed(BETA_BITS))})
        super().__init__({
            "command": In(stream.Signature(data.StructLayout({
                "rows": unsigned(index_bits(max_rows + 1)), "set": unsigned(index_bits(param_sets)),
                "eps": unsigned(self.v_width - 1), "shifts": data.ArrayLayout(unsigned(6), outputs)}))),
            "input": In(stream.Signature(data.ArrayLayout(signed(width), lanes))),
            "output": Out(stream.Signature(data.StructLayout({
                "data": data.StructLayout({f"y{o}": data.ArrayLayout(signed(b), lanes)
                                           for o, b in enumerate(output_bits)}),
                "last": 1}))),
            "params_write": Out(WritePort.Signature(addr_width=index_bits(param_sets * self.beats),
                                                    shape=self.params_layout)),
            "busy": Out(1),
        })

    @classmethod
    def for_model(cls, model, accel) -> "LayerNorm":
        """The unit `accel` builds for `model`'s LayerNorms: two outputs, the array's operand and the router's
        input (used by the MoE blocks' LayerNorm₂, ignored elsewhere); two parameter sets, the norm running and
        the next one, loaded from DRAM by the controller (the instruction's γ/β address)."""
        return cls(model.embed_dim, accel.vector_lanes, output_bits=(accel.operand_width, accel.residual_width),
                   width=accel.residual_width, param_sets=2, max_rows=model.num_tokens)

    @staticmethod
    def model(x, eps, outputs):
        """`golden.ops.layernorm`: x [rows, D] int16, outputs [(gamma [D], beta [D], shift, bits)]."""
        return ops.layernorm(x, eps, outputs)

    def params_words(self, outputs) -> list[dict]:
        """One parameter set [(gamma [D], beta [D])] per output → its ⌈D / lanes⌉ words for `params_write`
        (channels past D zero). A gamma or beta too wide for the unit raises ValueError."""
        if len(outputs) != len(self.output_bits):
            raise ValueError(f"LayerNorm: {len(outputs)} outputs' parameters for a unit of "
                             f"{len(self.output_bits)} outputs")
        padded = self.beats * self.lanes
        columns = []                    # per output, gamma and beta as ints, padded to whole beats
        for o, (gamma, beta) in enumerate(outputs):
            for name, values, bits in (("gamma", gamma, GAMMA_BITS), ("beta", beta, BETA_BITS)):
                values = [int(v) for v in values]
                if len(values) != self.dim:
                    raise ValueError(f"LayerNorm {name} of output {o}: {len(values)} values for D = {self.dim}")
                if any(not -(1 << (bits - 1)) <= v < 1 << (bits - 1) for v in values):
                    raise ValueError(f"LayerNorm {name} of output {o}: a value outside {bits}-bit signed")
                columns.append((name, values + [0] * (padded - len(values))))
        return [{name: [values[beat * self.lanes:(beat + 1) * self.lanes] for n, values in columns if n == name]
                 for name in ("gamma", "beta")} for beat in range(self.beats)]

    def elaborate(self, platform):
        m = Module()
        lanes, beats, dim = self.lanes, self.beats, self.dim
        params_reads = self._parameter_memories(m)
        command = Signal.like(self.command.payload, reset_less=True)      # taken with `busy`
        busy = Signal()
        m.d.comb += [self.busy.eq(busy), self.command.ready.eq(~busy)]
        # the banks' statistics are data, valid with the banks' states: not reset
        sums = [Signal(signed(self.sum_width), name=f"bank{b}_sum", reset_less=True) for b in range(2)]
        squares = [Signal(unsigned(self.square_width), name=f"bank{b}_squares", reset_less=True) for b in range(2)]
        recips = [Signal(unsigned(32), name=f"bank{b}_r", reset_less=True) for b in range(2)]
        offsets = [Signal(signed(self.sum_width + 32), name=f"bank{b}_offset", reset_less=True)     # S·r
                   for b in range(2)]
        exponents = [Signal(range(self.max_e + 1), name=f"bank{b}_e", reset_less=True) for b in range(2)]
        row_halves = [Signal(SHIFT_BASE + self.max_e, name=f"bank{b}_half", reset_less=True)       # 2^(18+e) − 1
                      for b in range(2)]
        # a bank's r, S·r, e and half are read by its row's beats up to the stage after `scaled`; its memory only
        # up to the last beat's read: so the bank is freed at that read, and its next row's statistics wait for this
        # flag (they take longer than the stages unless the output stalls)
        statistics_held = [Signal(name=f"bank{b}_statistics_held") for b in range(2)]
        set_base = Signal(range(self.param_sets * beats), reset_less=True)
        with m.If(self.command.valid & self.command.ready):
            m.d.sync += [command.eq(self.command.payload), busy.eq(self.command.payload.rows != 0),
                         set_base.eq(times_constant(self.command.payload.set, beats))]

        # --- 1. Sums -----------------------------------------------------------------------------------------
        rows = RowBuffer(m, "rows", self.input, length=dim, lanes=lanes, shape=signed(self.width), fill=0,
                         rows=command.rows, enable=busy)
        state = rows.state
        # stages: the beat, its squares, the two adder trees, into the bank's accumulators
        sides = rows.intake_sides(m, "sum_side", self.SUM_STAGES)
        # (the beat's values, squares and sums are data, valid with `sides`: not reset)
        values = Signal.like(rows.masked, reset_less=True)
        values2 = Signal.like(rows.masked, reset_less=True)
        lane_squares = Signal(data.ArrayLayout(unsigned(2 * self.width - 1), lanes), reset_less=True)
        beat_sum = Signal(signed(self.sum_width), reset_less=True)
        beat_squares = Signal(unsigned(self.square_width), reset_less=True)
        m.d.sync += [values.eq(rows.masked), values2.eq(values)]
        for lane in range(lanes):
            m.d.sync += lane_squares[lane].eq(values[lane] * values[lane])
        m.d.sync += [beat_sum.eq(tree_sum(values2[lane] for lane in range(lanes))),
                     beat_squares.eq(tree_sum(lane_squares[lane] for lane in range(lanes)))]
        final = sides[-1]
        for b in range(2):
            with m.If(final.valid & (final.bank == b)):
                m.d.sync += [sums[b].eq(Mux(final.first, 0, sums[b]) + beat_sum),
                             squares[b].eq(Mux(final.first, 0, squares[b]) + beat_squares)]
                with m.If(final.last):
                    m.d.sync += state[b].eq(BankState.REDUCED)

        # --- 2. Statistics -------------------------------------------------------------------------------------
        self._statistics(m, rows, command.eps, sums, squares, recips, offsets, exponents, row_halves,
                         statistics_held)

        # --- 3. Normalise --------------------------------------------------------------------------------------
        out_rows = Signal.like(command.rows)
        valid = [Signal(name=f"normalise{stage}_valid") for stage in range(self.NORMALISE_STAGES - 1)]
        advance, staged = skid_stage(m, valid[-1], self.output)      # the last stage (stage 13)
        m.d.comb += [rows.issue.eq(busy & advance & rows.readable), rows.read_enable.eq(advance)]
        side = data.StructLayout({"bank": 1, "beat": unsigned(len(rows.read_beat)), "last": 1})
        sides = [Signal(side, name=f"normalise_side{stage}", reset_less=True)      # valid with `valid`
                 for stage in range(self.NORMALISE_STAGES - 1)]
        with m.If(advance):
            m.d.sync += [valid[0].eq(rows.issue), sides[0].bank.eq(rows.read_bank),
                         sides[0].beat.eq(rows.read_beat), sides[0].last.eq(rows.read_last)]
            m.d.sync += [valid[i].eq(valid[i - 1]) for i in range(1, self.NORMALISE_STAGES - 1)]
            m.d.sync += [sides[i].eq(sides[i - 1]) for i in range(1, self.NORMALISE_STAGES - 1)]
        # sides[scaled_stage]: the beat whose x·r is in `scaled`, the multiplier's output (stage 1 + SCALE_STAGES)
        scaled_stage = self.SCALE_STAGES
        # the parameter word is read two stages early and registered, to enter the gain's DSP block with x̂ (stage
        # 8) from a register (no block RAM output drives a multiplier); β is held a stage longer, for stage 9
        params = [Signal.like(read.data, name=f"params{o}_held", reset_less=True)
                  for o, read in enumerate(params_reads)]
        betas = [Signal.like(read.data.beta, name=f"betas{o}", reset_less=True)
                 for o, read in enumerate(params_reads)]
        for read, held, beta in zip(params_reads, params, betas):
            m.d.comb += [read.addr.eq(set_base + sides[scaled_stage].beat), read.en.eq(advance)]
            with m.If(advance):
                m.d.sync += [held.eq(read.data), beta.eq(held.beta)]
        row_r = pick(sides[0].bank, recips)
        row_offset = pick(sides[scaled_stage].bank, offsets)
        # A bank is free once its last beat is read (stage 1); its statistics once that beat has read S·r, e and
        # half (the stage after `scaled`): a stalled pipeline must not see them overwritten by the next row's.
        rows.set_state(m, sides[0].bank, BankState.FREE, advance & valid[0] & sides[0].last)
        released = sides[scaled_stage + 1]
        for b in range(2):
            with m.If(advance & valid[scaled_stage + 1] & released.last & (released.bank == b)):
                m.d.sync += statistics_held[b].eq(0)
        out_halves, saturating = self._output_constants(m)
        edge_lanes = lane_mask(m, "edge_lanes", lanes, rows.edge, sides[-1].last)
        # the bank's e and 2^(18+e) − 1 for x̂'s stage, picked a stage early into registers (as the beat enters
        # `centred`; the bank's statistics stay held until it leaves it)
        row_e = Signal.like(exponents[0], name="normalise_e", reset_less=True)
        row_half = Signal.like(row_halves[0], name="normalise_half", reset_less=True)
        with m.If(advance):
            m.d.sync += [row_e.eq(pick(sides[scaled_stage].bank, exponents)),
                         row_half.eq(pick(sides[scaled_stage].bank, row_halves))]
        for lane in range(lanes):        # the lanes' stages are data, valid with `valid`: not reset
            # x·r: the beat's value and the bank's r into the DSP blocks' registers as the beat is read (stage 1)
            multiplier = m.submodules[f"scale{lane}"] = WideMultiplier(signed(self.width), unsigned(32))
            m.d.comb += [multiplier.a.eq(rows.read_data[lane]), multiplier.b.eq(row_r), multiplier.en.eq(advance)]
            scaled = multiplier.p
            centred = Signal(signed(max(self.width + 33 + dim.bit_length(), self.sum_width + 33) + 1),
                             name=f"centred{lane}", reset_less=True)
            # round_shift by 19 + e, e ≤ max_e: the kept bit from a window of max_e + 1 bits
            kept = centred[SHIFT_BASE:SHIFT_BASE + self.max_e + 1].bit_select(row_e, 1)
            normalised = Signal(signed(NORMALISED_BITS), name=f"normalised{lane}", reset_less=True)      # x̂
            with m.If(advance):     # x̂ in a register beside its logic (stage 7), then the route to the DSP blocks
                m.d.sync += [centred.eq(times_constant(scaled, dim) - row_offset),                  # stage 6
                             normalised.eq(shift_right((centred + row_half + kept) >> SHIFT_BASE, row_e,
                                                       NORMALISED_BITS))]
            for o, bits in enumerate(self.output_bits):
                # x̂ and γ into the DSP block's input registers (stage 8), x̂·γ out of its output register (stage 9)
                gain = m.submodules[f"gain{o}_{lane}"] = Multiplier(signed(NORMALISED_BITS), signed(GAMMA_BITS))
                m.d.comb += [gain.a.eq(normalised), gain.b.eq(params[o].gamma[lane]), gain.en.eq(advance)]
                gained = gain.p
                beta = Signal(signed(BETA_BITS), name=f"beta{o}_{lane}", reset_less=True)
                affine, to_round = (Signal(signed(BETA_BITS + 1), name=f"{n}{o}_{lane}", reset_less=True)
                                    for n in ("affine", "to_round"))
                kept = Signal(name=f"kept{o}_{lane}", reset_less=True)      # bit sh of the value to round
                rounded = Signal(signed(ROUNDING_BITS), name=f"rounded{o}_{lane}", reset_less=True)
                y = staged.data[f"y{o}"][lane]
                high, low = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
                above, below = beyond(rounded, saturating[o])
                saturated = Mux(above, high, Mux(below, low, shift_right(rounded, command.shifts[o], bits)))
                with m.If(advance):
                    m.d.sync += [
                        beta.eq(betas[o][lane]),                                                     # stage 9
                        affine.eq(gained + beta),                                                    # stage 10
                        to_round.eq(affine), kept.eq(kept_bit(affine, command.shifts[o])),           # stage 11
                        rounded.eq(to_round + out_halves[o] + kept),                                 # stage 12
                    ]
                m.d.comb += y.eq(Mux(edge_lanes[lane], saturated, 0))            # into stage 13: the skid buffer
        m.d.comb += staged.last.eq(sides[-1].last)
        with m.If(self.output.valid & self.output.ready & self.output.payload.last):
            m.d.sync += out_rows.eq(out_rows + 1)
            with m.If(out_rows + 1 == command.rows):
                m.d.sync += busy.eq(0)
        with m.If(self.command.valid & self.command.ready):
            m.d.sync += out_rows.eq(0)
            rows.reset(m)
        return m

    def _output_constants(self, m):
        """Per output, set with the command: 2^(sh−1) − 1 and the mask of the bits at and above sh+b−1, so each
        lane rounds with one adder and saturates at ±2^(sh+b−1) by an OR and an AND of its bits (`beyond`)."""
        outputs = len(self.output_bits)
        halves = [Signal(ROUNDING_BITS, name=f"half{o}", reset_less=True) for o in range(outputs)]
        saturating = [Signal(ROUNDING_BITS - 1, name=f"saturating{o}", reset_less=True) for o in range(outputs)]
        with m.If(self.command.valid & self.command.ready):
            for o, bits in enumerate(self.output_bits):
                shift = self.command.payload.shifts[o]
                m.d.sync += [halves[o].eq(half_minus_one(shift)),
                             saturating[o].eq(bits_from(shift + (bits - 1), ROUNDING_BITS - 1))]
        return halves, saturating

    def _parameter_memories(self, m) -> list:
        """One memory of γ and β per output (words of a few thousand bits are more than the simulator compiles),
        written from `params_write`: their read ports."""
        layout = data.StructLayout({"gamma": data.ArrayLayout(signed(GAMMA_BITS), self.lanes),
                                    "beta": data.ArrayLayout(signed(BETA_BITS), self.lanes)})
        reads = []
        for o in range(len(self.output_bits)):
            memory = m.submodules[f"params{o}"] = Memory(shape=layout, depth=self.param_sets * self.beats, init=[])
            write = memory.write_port()
            m.d.comb += [write.addr.eq(self.params_write.addr), write.en.eq(self.params_write.en),
                         write.data.gamma.eq(self.params_write.data.gamma[o]),
                         write.data.beta.eq(self.params_write.data.beta[o])]
            reads.append(memory.read_port())
        return reads

    def _statistics(self, m, rows, eps, sums, squares, recips, offsets, exponents, row_halves, held):
        """One row at a time, from the bank `rows` marks REDUCED: v = D·Q − S² + eps, e, 2^62 // (v >> 2e) by
        restoring division, its integer square root r digit by digit beside it, and S·r; then, once the bank's
        registers are no longer `held` by its previous row, r, S·r, e and 2^(18+e) − 1 into them, the bank READY
        and its registers held."""
        dim, state = self.dim, rows.state
        stats_bank = Signal()
        # the statistics' registers are data, each set before the state that reads it: not reset
        s = Signal(signed(self.sum_width), reset_less=True)
        q = Signal(unsigned(self.square_width), reset_less=True)
        operand = Signal(unsigned(32), reset_less=True)                  # S · operand: S itself, then r
        m.submodules.statistics_multiplier = multiplier = WideMultiplier(operand.shape(), s.shape())
        product = multiplier.p
        waiting = Signal(range(WideMultiplier.LATENCY))  # for the product of the operands set on entering a wait
        v = Signal(unsigned(self.v_width), reset_less=True)
        e = Signal(range(self.max_e + 1), reset_less=True)
        # 2^(18+e) − 1, decoded from a signal (an expression would be copied into each of its patterns)
        row_shift, half = Signal(range(SHIFT_BASE + self.max_e + 1)), Signal.like(row_halves[0], name="row_half")
        m.d.comb += [row_shift.eq(SHIFT_BASE + e), half.eq(half_minus_one(row_shift, len(half)))]
        divisor = Signal(unsigned(32), reset_less=True)
        v_top = Signal(range(self.v_width), reset_less=True)             # bitlen(v) − 1 (v ≥ eps ≥ 1)
        # bitlen(divisor) − 1: the first quotient bit that can be 1
        top = Signal(range(32), name="divisor_top", reset_less=True)
        remainder = Signal(unsigned(33), reset_less=True)
        triple = Signal(unsigned(34), reset_less=True)                   # 3 · divisor, for the radix-4 step
        step = Signal(range(DIVIDEND_BITS + 1), reset_less=True)        # the position of the next quotient bit
        pair = Signal(2, reset_less=True)                # the quotient's last two bits, the root's next pair
        # the root's remainder, < 2·r + 1, with the pair shifted in
        radicand = Signal(unsigned(ROOT_BITS + 3), reset_less=True)
        root = Signal(unsigned(ROOT_BITS), reset_less=True)
        # One step of the root, digit by digit: bring the pair down, try (r << 2) | 1 (with the pair, remainder and
        # root all 0, as the division starts, a step leaves them 0).
        shifted = Signal.like(radicand)
        difference = Signal(signed(len(radicand) + 1))
        fits = Signal()
        m.d.comb += [shifted.eq(Cat(pair, radicand)), difference.eq(shifted - Cat(Const(1, 2), root)),
                     fits.eq(~difference[-1])]
        next_radicand, next_root = Mux(fits, difference, shifted), Cat(fits, root)
        # One step of the division, two quotient bits (radix 4), or the first bit alone
        first_bit, second_bit, kept, half_kept = radix4_step(m, remainder, divisor, triple, "division")
        m.d.comb += [multiplier.a.eq(operand), multiplier.b.eq(s)]
        with m.FSM(name="statistics"):
            with m.State("IDLE"):
                summed = pick(stats_bank, sums)
                with m.If(pick(stats_bank, state) == BankState.REDUCED):
                    m.d.sync += [s.eq(summed), q.eq(pick(stats_bank, squares)),
                                 operand.eq(Mux(summed < 0, -summed, summed))]
                    rows.set_state(m, stats_bank, BankState.STATISTICS)
                    m.d.sync += waiting.eq(0)
                    m.next = "SQUARE"
            with m.State("SQUARE"):        # product ← S · |S|
                m.d.sync += waiting.eq(waiting + 1)
                with m.If(waiting == WideMultiplier.LATENCY - 1):
                    m.next = "VARIANCE"
            with m.State("VARIANCE"):
                scaled_q = times_constant(q, dim)
                m.d.sync += v.eq(Mux(s < 0, scaled_q + product, scaled_q - product) + eps)   # product: S·|S|
                m.next = "EXPONENT"
            with m.State("EXPONENT"):
                # e = ⌈(bitlen(v) − 32)/2⌉ when positive: the highest j ≥ 1 whose bit pair 30 + 2j, 31 + 2j of v
                # holds a 1 (a priority encoder over the pairs, beside the one over v's bits)
                pairs = Cat(Const(0, 1), *(v[30 + 2 * j:min(32 + 2 * j, self.v_width)].any()
                                           for j in range(1, self.max_e + 1)))
                m.d.sync += [e.eq(highest_bit(m, pairs, "e_pairs")), v_top.eq(highest_bit(m, v, "v_bits"))]
                m.next = "NORMALISE"
            with m.State("NORMALISE"):       # the divisor v >> 2e, of bit length bitlen(v) − 2e (31 to 32 when e > 0)
                m.d.sync += [divisor.eq(shift_right(v, e << 1, len(divisor))), top.eq(v_top - (e << 1))]
                m.next = "DIVIDE_START"
            with m.State("DIVIDE_START"):
                m.d.sync += [remainder.eq(Const(1, 33) << top), step.eq(DIVIDEND_BITS - top), pair.eq(0),
                             radicand.eq(0), root.eq(0), triple.eq(times_constant(divisor, 3))]
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                # Two quotient bits a cycle, one in the first when the first position is even, so that every
                # cycle's bits are one of the root's pairs (2j + 1, 2j); the root takes the pair of the cycle
                # before, a bit a cycle.
                single = ~step[0]
                m.d.sync += [remainder.eq(Mux(single, half_kept, kept << 1)[:len(remainder)]),
                             step.eq(step - Mux(single, 1, 2)),
                             pair.eq(Mux(single, Cat(first_bit, 0), Cat(second_bit, first_bit))),
                             radicand.eq(next_radicand), root.eq(next_root)]
                with m.If(~single & (step == 1)):
                    m.next = "ROOT"
            with m.State("ROOT"):          # the last pair's step; product ← S · r next
                m.d.sync += [radicand.eq(next_radicand), root.eq(next_root), operand.eq(next_root), waiting.eq(0)]
                m.next = "OFFSET_WAIT"
            with m.State("OFFSET_WAIT"):
                m.d.sync += waiting.eq(waiting + 1)
                with m.If(waiting == WideMultiplier.LATENCY - 1):
                    m.next = "DONE"
            with m.State("DONE"):
                with m.If(~pick(stats_bank, held)):
                    for b in range(2):
                        with m.If(stats_bank == b):
                            m.d.sync += [recips[b].eq(root), offsets[b].eq(product), exponents[b].eq(e),
                                         row_halves[b].eq(half), held[b].eq(1)]
                    rows.set_state(m, stats_bank, BankState.READY)
                    m.d.sync += stats_bank.eq(~stats_bank)
                    m.next = "IDLE"
