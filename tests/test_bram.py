"""The memory with registered reads: words two edges after their address, and on ECP5 DP16KD blocks with
their output register."""

import numpy as np
from amaranth.sim import Simulator

from hw.bram import RegisteredReadMemory
from hw.export import to_rtlil
from hw.synth import platform


def test_reads_leave_two_edges_after_their_address():
    rng = np.random.default_rng(0)
    memory = RegisteredReadMemory(width=40, depth=24, reads=2)
    shadow = np.zeros(24, dtype=object)
    seen = []

    async def testbench(ctx):
        history = []
        for cycle in range(300):
            write = rng.random() < 0.5
            address, value = int(rng.integers(24)), int(rng.integers(0, 1 << 40))
            reads = [int(rng.integers(24)) for _ in range(2)]
            ctx.set(memory.write_en, write)
            ctx.set(memory.write_addr, address)
            ctx.set(memory.write_data, value)
            for port in range(2):
                ctx.set(memory.read_addr[port], reads[port])
            # what a read issued now returns, unless a write to the same address is in this very cycle
            history.append([None if write and r == address else shadow[r] for r in reads])
            await ctx.tick()
            if write:
                shadow[address] = value
            if cycle >= 2:
                got = [ctx.get(memory.read_data[port]) for port in range(2)]
                seen.append((history[cycle - 1], got))

    simulator = Simulator(memory)
    simulator.add_clock(1e-8)
    simulator.add_testbench(testbench)
    simulator.run()
    checked = 0
    for expected, got in seen:
        for want, have in zip(expected, got):
            if want is not None:
                assert have == want
                checked += 1
    assert checked > 400


def test_ecp5_uses_dp16kd_with_the_output_register():
    text = to_rtlil(RegisteredReadMemory(width=100, depth=64, reads=2), "top", platform=platform("ulx3s-85f"))
    assert text.count("cell \\DP16KD") == 2 * 3          # ⌈100 / 36⌉ blocks per read port
    assert 'parameter \\REGMODE_B "OUTREG"' in text
    deep = to_rtlil(RegisteredReadMemory(width=8, depth=1024), "top", platform=platform("ulx3s-85f"))
    assert "DP16KD" not in deep                          # deeper than one block: left to Yosys
