"""The controller's program fetch on its own: instructions asked for a chunk at a time as room allows, delivered by a
reader with random gaps, popped at random; every instruction comes out once, in order, from the head register, and
`drained` holds only when nothing asked for is still to come and the buffer is empty."""

import random

import pytest

from hw.control.fetch import ProgramFetch
from hw.control.isa import INSTRUCTION_BITS
from hw.sim import simulate


@pytest.mark.parametrize("seed, bus_bytes, depth, chunk", [(0, 16, 8, 4), (1, 16, 4, 4), (2, 32, 4, 2),
                                                           (3, 8, 2, 1)])
def test_every_instruction_once_in_order_under_gaps(seed, bus_bytes, depth, chunk):
    rng = random.Random(seed)
    fetch = ProgramFetch(bus_bytes=bus_bytes, addr_width=32, depth=depth, chunk=chunk)
    program = [rng.getrandbits(INSTRUCTION_BITS) for _ in range(60)]
    per_word = 8 * bus_bytes // INSTRUCTION_BITS            # instructions a bus word (0: a word is a part of one)
    popped = []

    async def testbench(ctx):
        pending = []                # bus words asked for, not yet taken: (word, instructions it completes)
        completed = 0               # instructions whose last bus word was taken
        ctx.set(fetch.program_addr, 0x1000)
        cycle = 0
        while cycle < 800 or pending or ctx.get(fetch.head_valid) or not ctx.get(fetch.drained):
            running = cycle < 800   # then no more asked for; what was asked for is delivered and popped
            rate = 0.5 if running else 1.0
            ctx.set(fetch.running, running)
            ctx.set(fetch.fetch.ready, running and rng.random() < 0.6)
            deliver = bool(pending) and rng.random() < rate
            ctx.set(fetch.program.valid, deliver)
            if deliver:
                ctx.set(fetch.program.payload, pending[0][0])
            ctx.set(fetch.reader_idle, not pending)
            pop = ctx.get(fetch.head_valid) and rng.random() < rate
            ctx.set(fetch.pop, pop)
            if pop:
                popped.append(ctx.get(fetch.head))
            held = completed - (len(popped) - pop)          # in the buffer: taken, not yet popped
            assert not ctx.get(fetch.drained) or (not pending and held == 0)
            if ctx.get(fetch.fetch.valid) and ctx.get(fetch.fetch.ready):
                first = (ctx.get(fetch.fetch.payload.address) - 0x1000) // (INSTRUCTION_BITS // 8)
                count = ctx.get(fetch.fetch.payload.length) // (INSTRUCTION_BITS // 8)
                assert count == chunk
                words = program[first:first + count] + [0] * max(0, first + count - len(program))
                if per_word:
                    pending += [(sum(w << (INSTRUCTION_BITS * i) for i, w in enumerate(words[j:j + per_word])),
                                 per_word) for j in range(0, count, per_word)]
                else:
                    parts = INSTRUCTION_BITS // (8 * bus_bytes)
                    pending += [((w >> (8 * bus_bytes * i)) & ((1 << 8 * bus_bytes) - 1), int(i == parts - 1))
                                for w in words for i in range(parts)]
            if deliver and ctx.get(fetch.program.ready):
                completed += pending.pop(0)[1]
            await ctx.tick()
            cycle += 1

    simulate(fetch, testbench)
    assert len(popped) >= len(program) and popped[:len(program)] == program


def test_a_buffer_of_one_instruction_is_refused():
    with pytest.raises(ValueError, match="depth at least 2"):
        ProgramFetch(bus_bytes=16, addr_width=32, depth=1, chunk=1)
