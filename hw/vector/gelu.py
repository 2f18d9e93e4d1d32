"""GELU on `lanes` int16 values per cycle, bit for bit `golden.ops.gelu` (docs/numerics.md, section 8).

GELU(z) = ReLU(z) − δ(|z|), δ from a 1/32-step table with linear interpolation: for z in Q.f (5 ≤ f ≤ 15),
the table index is |z| >> (f − 5) (the last interval's end clamps it), the fraction the bits shifted out,
δ in Q.15 = T[i] + round_shift((T[i+1] − T[i]) · fraction, f − 5), then round_shift(δ, 15 − f). A 177-word
table holds T[i] and T[i+1] − T[i] side by side, one block RAM for two lanes (its two read ports); one small
multiplier per lane.

`input` (stream): {data: [lanes] signed(16), fraction_bits: [lanes] f}, each lane in its own Q.f (the GEMM
engine gives each column of fc1 its own); `output` (stream): [lanes] signed(16), the same beats in order,
`LATENCY` = 13 cycles later when nothing stalls (one adder, shifter, lookup or multiplier a stage; the table's
word lands in a register beside the block RAM, then in one before the multiplier; each rounding adds
2^(s−1) − 1 while it picks the kept bit, then adds that bit). The last stage is a skid buffer's
(`hw.common.pipeline.skid_stage`): the output's `ready` reaches only its registers, and the twelve stages before it
(and `input.ready`) stop as a whole once its skid entry is full and stage 12 holds a beat. An f outside 5…15 in
any lane sets the sticky `error` (that lane's output is meaningless).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import ops

from ..common.arith import half_minus_one, kept_bit
from ..common.pipeline import skid_stage

__all__ = ["Gelu"]

LAST_INDEX = len(ops.GELU_TABLE) - 2     # the last interval's start: |z| beyond it takes δ(5.5) ≈ 0
MIN_FRACTION_BITS, MAX_FRACTION_BITS = ops.GELU_STEP_BITS, 15


class Gelu(wiring.Component):
    LATENCY = 13

    def __init__(self, lanes: int = 16, width: int = 16):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"Gelu lanes = {lanes!r}: must be a positive integer")
        if width != 16:
            raise ValueError(f"Gelu width = {width!r}: the numerics put GELU's input in int16")
        self.lanes, self.width = lanes, width
        super().__init__({
            "input": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(width), lanes),
                "fraction_bits": data.ArrayLayout(unsigned(4), lanes)}))),
            "output": Out(stream.Signature(data.ArrayLayout(signed(width), lanes))),
            "error": Out(1),
        })

    @staticmethod
    def model(z, fraction_bits):
        return ops.gelu(z, fraction_bits)

    def elaborate(self, platform):
        m = Module()
        table = [int(v) for v in ops.GELU_TABLE]
        low_width = max(table).bit_length()
        differences = [table[i + 1] - table[i] for i in range(LAST_INDEX + 1)]
        difference_width = max(abs(d) for d in differences).bit_length() + 1
        rom = [table[i] | ((differences[i] & ((1 << difference_width) - 1)) << low_width)
               for i in range(LAST_INDEX + 1)]
        # one block RAM (two read ports) serves two lanes
        reads = []
        for pair in range(-(-self.lanes // 2)):
            memory = m.submodules[f"table{pair}"] = Memory(shape=unsigned(low_width + difference_width),
                                                           depth=len(rom), init=rom, attrs={"rom_style": "block"})
            reads += [memory.read_port(), memory.read_port()]

        valid = [Signal(name=f"valid{stage}") for stage in range(self.LATENCY - 1)]
        advance, staged = skid_stage(m, valid[-1], self.output)      # stage 13
        m.d.comb += self.input.ready.eq(advance)
        with m.If(advance):
            m.d.sync += [valid[0].eq(self.input.valid)]
            m.d.sync += [valid[i].eq(valid[i - 1]) for i in range(1, self.LATENCY - 1)]
            fractions = self.input.payload.fraction_bits
            with m.If(self.input.valid & Cat(*(f < MIN_FRACTION_BITS for f in fractions)).any()):   # 4 bits: ≤ 15
                m.d.sync += self.error.eq(1)
        for lane in range(self.lanes):
            z = self.input.payload.data[lane]
            # The lane's shifts travel with its value: step = f − 5 (the interpolation's) and tail = 15 − f
            # (δ's), and a stage ahead of each rounding its 2^(s−1) − 1, so no shift is decoded on the data path.
            # The lane's registers carry data whose validity is `valid`: they are not reset.
            f = self.input.payload.fraction_bits[lane]
            step = [Signal(4, name=f"step{lane}_{stage}", reset_less=True) for stage in range(9)]
            tail = [Signal(4, name=f"tail{lane}_{stage}", reset_less=True) for stage in range(12)]
            step_half = Signal(1 << 4, name=f"step_half{lane}", reset_less=True)       # for stage 8
            tail_half = Signal(1 << 4, name=f"tail_half{lane}", reset_less=True)       # for stage 11
            with m.If(advance):
                m.d.sync += [step[0].eq((f - MIN_FRACTION_BITS)[:4]), tail[0].eq((MAX_FRACTION_BITS - f)[:4])]
                m.d.sync += [step[i].eq(step[i - 1]) for i in range(1, len(step))]
                m.d.sync += [tail[i].eq(tail[i - 1]) for i in range(1, len(tail))]
                m.d.sync += [step_half.eq(half_minus_one(step[5], len(step_half))),
                             tail_half.eq(half_minus_one(tail[8], len(tail_half)))]
            magnitude = Signal(unsigned(self.width), name=f"magnitude{lane}", reset_less=True)
            relu = [Signal(signed(self.width), name=f"relu{lane}_{stage}", reset_less=True)
                    for stage in range(self.LATENCY - 1)]
            whole = Signal(unsigned(self.width), name=f"whole{lane}", reset_less=True)
            index = Signal(range(LAST_INDEX + 1), name=f"index{lane}", reset_less=True)
            fraction = [Signal(unsigned(10), name=f"fraction{lane}_{stage}", reset_less=True) for stage in range(5)]
            entry = Signal(low_width + difference_width, name=f"entry{lane}")   # the table's word: stage 4
            word = Signal.like(entry, name=f"word{lane}", reset_less=True)
            low = [Signal(unsigned(low_width), name=f"low{lane}_{stage}", reset_less=True) for stage in range(4)]
            difference = Signal(signed(difference_width), name=f"difference{lane}", reset_less=True)
            product = Signal(signed(difference_width + 11), name=f"product{lane}", reset_less=True)
            interpolation = Signal(signed(difference_width + 12), name=f"interpolation{lane}",     # before its shift
                                   reset_less=True)
            halfway = Signal.like(interpolation, name=f"halfway{lane}", reset_less=True)
            delta15 = Signal(signed(low_width + 2), name=f"delta15_{lane}", reset_less=True)
            delta = Signal(signed(low_width + 3), name=f"delta{lane}", reset_less=True)             # before its shift
            delta_halfway = Signal.like(delta, name=f"delta_halfway{lane}", reset_less=True)
            kept = [Signal(name=f"kept{lane}_{stage}", reset_less=True) for stage in range(2)]
            beyond = whole >= LAST_INDEX
            m.d.comb += [reads[lane].addr.eq(index), reads[lane].en.eq(advance), entry.eq(reads[lane].data)]
            with m.If(advance):
                m.d.sync += [
                    magnitude.eq(Mux(z < 0, -z, z)), relu[0].eq(Mux(z < 0, 0, z)),                     # stage 1
                    whole.eq(magnitude >> step[0]), fraction[0].eq(magnitude & ((1 << step[0]) - 1)),   # stage 2
                    index.eq(Mux(beyond, LAST_INDEX, whole)), fraction[1].eq(Mux(beyond, 0, fraction[0])),  # 3
                    fraction[2].eq(fraction[1]),                                                        # stage 4
                    word.eq(entry), fraction[3].eq(fraction[2]),                                        # stage 5
                    low[0].eq(word[:low_width]), difference.eq(word[low_width:]),                       # stage 6
                    fraction[4].eq(fraction[3]),
                    low[1].eq(low[0]), product.eq(difference * fraction[4]),                            # stage 7
                    low[2].eq(low[1]), halfway.eq(product + step_half),                                 # stage 8
                    kept[0].eq(kept_bit(product, step[6])),
                    low[3].eq(low[2]), interpolation.eq(halfway + kept[0]),                             # stage 9
                    delta15.eq(low[3] + (interpolation >> step[8])),                                    # stage 10
                    delta_halfway.eq(delta15 + tail_half), kept[1].eq(kept_bit(delta15, tail[9])),      # stage 11
                    delta.eq(delta_halfway + kept[1]),                                                  # stage 12
                ]
                m.d.sync += [relu[i].eq(relu[i - 1]) for i in range(1, self.LATENCY - 1)]
            m.d.comb += staged[lane].eq(relu[-1] - (delta >> tail[11]))                                 # into 13
        return m
