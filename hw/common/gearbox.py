"""`Gearbox`: a `lib.stream` of `in_width`-bit words into one of `out_width`-bit words, one a whole multiple of
the other; the narrow words are the wide word's slices, least significant first.

Widening (out = n · in): n input words make one output word, which waits in a register until taken; the next
group's words are taken meanwhile only into a free register, so it takes a word a cycle while the output moves
a word every n cycles. Narrowing (in = n · out): an input word is taken once its last slice leaves; slices leave
one a cycle. Equal widths pass straight through. Neither side's `ready` depends on its own `valid`.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Gearbox"]


class Gearbox(wiring.Component):
    def __init__(self, in_width: int, out_width: int):
        for name, value in (("in_width", in_width), ("out_width", out_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Gearbox {name} = {value!r}: must be a positive integer")
        if max(in_width, out_width) % min(in_width, out_width):
            raise ValueError(f"Gearbox {in_width} → {out_width} bits: one width must be a multiple of the other")
        self.in_width, self.out_width = in_width, out_width
        super().__init__({"input": In(stream.Signature(in_width)), "output": Out(stream.Signature(out_width))})

    def elaborate(self, platform):
        m = Module()
        source, sink = self.input, self.output
        if self.in_width == self.out_width:
            wiring.connect(m, wiring.flipped(source), wiring.flipped(sink))
            return m
        if self.out_width > self.in_width:
            ratio = self.out_width // self.in_width
            # A word goes straight into its own slice (a one-hot `slot` picks it: no shifter, and each slice's
            # enable is its own); the last with the slices before it into the output register. The data
            # registers are not reset (their validity is `slot` and `sink.valid`), and their enables are not
            # the input's `valid`: a slice takes the input every cycle its `slot` bit is set, the output
            # register every cycle it is free at the last slot, so the last take is the handshake's.
            slices = [Signal(self.in_width, name=f"slice{i}", reset_less=True) for i in range(ratio - 1)]
            payload = Signal(self.out_width, reset_less=True)
            slot = Signal(ratio, init=1)
            free = ~sink.valid | sink.ready
            m.d.comb += [source.ready.eq(free | ~slot[-1]), sink.payload.eq(payload)]
            for i, part in enumerate(slices):
                with m.If(slot[i]):
                    m.d.sync += part.eq(source.payload)
            with m.If(slot[-1] & free):
                m.d.sync += payload.eq(Cat(*slices, source.payload))
            with m.If(sink.valid & sink.ready):
                m.d.sync += sink.valid.eq(0)
            with m.If(source.valid & source.ready):
                m.d.sync += slot.eq(slot.rotate_left(1))
                with m.If(slot[-1]):
                    m.d.sync += sink.valid.eq(1)
            return m
        ratio = self.in_width // self.out_width
        index = Signal(range(ratio))
        m.d.comb += [sink.valid.eq(source.valid), sink.payload.eq(source.payload.word_select(index, self.out_width)),
                     source.ready.eq(sink.ready & (index == ratio - 1))]
        with m.If(sink.valid & sink.ready):
            m.d.sync += index.eq(Mux(index == ratio - 1, 0, index + 1))
        return m
