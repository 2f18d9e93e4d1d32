"""`InterleavedMemory` (the two-ported memories of the top level, SCRATCH's banks): random writes and reads on
every port against its `model` under the port rules of its docstring, each read a cycle after its enable (`read`
and `wide` two with `registered`) and held while the enable is low (port A's until its next user); port B's read
of the word written in the same cycle;
one copy of block RAM a bank in synthesis; parameter checks; Verilog that elaborates."""

import numpy as np
import pytest

from hw.flow.export import to_verilog
from hw.memory.interleaved import InterleavedMemory
from hw.sim import simulate


@pytest.mark.parametrize("banks, wide, registered", [(1, False, False), (1, True, False), (2, True, False),
                                                     (4, True, False), (4, False, False), (1, True, True),
                                                     (4, True, True)])
def test_every_port_reads_what_the_model_says(banks, wide, registered):
    width, depth, cycles = 8, 16, 400
    memory = InterleavedMemory(width, depth, banks, wide=wide, registered=registered)
    rng = np.random.default_rng(banks + 8 * wide + 16 * registered)
    words = [0] * depth
    port_a_users = ["write", "shared"] + (["wide"] if wide else [])

    async def testbench(ctx):
        expected = {}             # port → the word its data must show this cycle (a cycle after the read)
        late = {}                 # with `registered`: `read`'s and `wide`'s, a cycle later
        collisions = 0
        for _ in range(cycles):
            user = rng.choice(port_a_users + [None])             # port A: at most one user a cycle
            write, addr, value = user == "write", int(rng.integers(depth)), int(
                rng.choice([0, 0x80, 0x7F, 0xFF, rng.integers(256)]))
            ctx.set(memory.write.en, write)
            ctx.set(memory.write.addr, addr)
            ctx.set(memory.write.data, value)
            reads = [("narrow", memory.read, depth, rng.random() < 0.7)]
            reads.append(("narrow", memory.shared, depth, user == "shared"))
            if wide:
                reads.append(("wide", memory.wide, depth // banks, user == "wide"))
            for op, port, span, enable in reads:
                read_addr = addr if port is memory.read and write and rng.random() < 0.3 else int(rng.integers(span))
                ctx.set(port.en, enable)
                ctx.set(port.addr, read_addr)
                if enable:
                    if port is memory.read and write and read_addr == addr:     # port B sees the new word
                        collisions += 1
                        expected[port] = memory.model(words[:addr] + [value] + words[addr + 1:], op, read_addr)
                    else:
                        expected[port] = memory.model(words, op, read_addr)
            if user is not None:          # port A's other users' data is not held past this cycle
                for op, port, _, enable in reads[1:]:
                    if not enable:
                        expected.pop(port, None)
            await ctx.tick()
            if write:
                words[addr] = value
            for op, port, _, _ in reads:
                seen = expected.get(port)
                if registered and port is not memory.shared:
                    seen, late[port] = late.get(port), seen
                if seen is not None:
                    assert ctx.get(port.data) == seen, (op, banks)
        assert collisions > 10

    simulate(memory, testbench)


@pytest.mark.parametrize("width, depth, banks, blocks, registered", [
    (64, 2560, 1, 12, False),      # 1024 × 18: 4 wide, 3 deep; a copy a read port would be 20 (two of 512 × 36)
    (32, 4096, 2, 8, False),       # a bank of 2048 × 32: 2048 × 9, 4 wide
    (32, 4096, 2, 8, True),
    (16, 2048, 1, 2, False),
])
def test_a_bank_is_one_copy_of_true_dual_port_blocks(width, depth, banks, blocks, registered):
    """Yosys maps each bank to one copy of DP16KD blocks, as the fit plan counts a two-ported memory (with its
    outputs registered too), and emulates no transparent read of port B in the fabric (its flip-flops would hold the
    written word: a width of them a bank), the flow's `UNDEFINED_COLLISIONS` leaving that read undefined."""
    from hw.flow.fit import target
    from hw.flow.synth import cell_counts
    dp16kd = target("ulx3s-85f").memory_blocks[0]
    assert banks * dp16kd.blocks_for(width, depth // banks, two_ports=True) == blocks
    cells = cell_counts(InterleavedMemory(width, depth, banks, wide=True, registered=registered), "memory")
    assert cells["DP16KD"] == blocks
    output_registers = 2 * width * banks if registered else 0        # port B's and the wide port's, bank by bank
    assert cells["TRELLIS_FF"] - output_registers < width // 2, cells


@pytest.mark.parametrize("args, text", [((8, 10, 4), "power of two dividing depth"), ((8, 12, 3), "power of two"),
                                        ((0, 8, 1), "width"), ((8, 8, 0), "banks")])
def test_bad_parameters_are_named(args, text):
    with pytest.raises(ValueError, match=text):
        InterleavedMemory(*args)


def test_verilog_elaborates():
    assert "module" in to_verilog(InterleavedMemory(16, 64, 2, wide=True), name="interleaved")
