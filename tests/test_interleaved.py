"""`InterleavedMemory` (SCRATCH's banks): random writes and reads on every port against its `model`, each read a
cycle after its enable and held while the enable is low; parameter checks; Verilog that elaborates."""

import numpy as np
import pytest

from hw.flow.export import to_verilog
from hw.memory.interleaved import InterleavedMemory
from hw.sim import simulate


@pytest.mark.parametrize("banks", [1, 2, 4])
def test_every_port_reads_what_the_model_says(banks):
    width, depth, cycles = 8, 16, 300
    memory = InterleavedMemory(width, depth, banks, narrow_reads=2)
    rng = np.random.default_rng(banks)
    words = [0] * depth
    narrow = [memory.read_0, memory.read_1]

    async def testbench(ctx):
        expected = {}             # port → the word its data must show this cycle
        for _ in range(cycles):
            ports = [("narrow", port, depth) for port in narrow] + [("wide", memory.wide, depth // banks)]
            reads = []
            for op, port, span in ports:
                enable, addr = int(rng.random() < 0.7), int(rng.integers(span))
                ctx.set(port.en, enable)
                ctx.set(port.addr, addr)
                reads.append((op, port, enable, addr))
            write, addr, value = rng.random() < 0.5, int(rng.integers(depth)), int(rng.choice([0, 0x80, 0x7F, 0xFF,
                                                                                              rng.integers(256)]))
            ctx.set(memory.write.en, write)
            ctx.set(memory.write.addr, addr)
            ctx.set(memory.write.data, value)
            for op, port, enable, read_addr in reads:       # a read in the write's cycle sees the old word
                if enable:
                    expected[port] = memory.model(words, op, read_addr)
            await ctx.tick()
            if write:
                words[addr] = value
            for op, port, _, _ in reads:
                if port in expected:
                    assert ctx.get(port.data) == expected[port], (op, banks)

    simulate(memory, testbench)


@pytest.mark.parametrize("args, text", [((8, 10, 4), "power of two dividing depth"), ((8, 12, 3), "power of two"),
                                        ((0, 8, 1), "width"), ((8, 8, 1, 0), "narrow_reads")])
def test_bad_parameters_are_named(args, text):
    with pytest.raises(ValueError, match=text):
        InterleavedMemory(*args)


def test_verilog_elaborates():
    assert "module" in to_verilog(InterleavedMemory(16, 64, 2, narrow_reads=2), name="interleaved")
