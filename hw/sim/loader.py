"""The weight loader in a testbench: a DRAM model on its AXI4 port, descriptors in, and a consumer that takes
each loaded buffer in order, optionally reads it back through the read port, holds it for a given number of
cycles and releases it. Shared by the tests and `m3vit bench loader`; runs under either simulator."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw.sim.dram import AXI4ReadModel
from hw.common.bits import pack
from hw.memory.loader import WeightLoader

__all__ = ["LoaderRun", "run_loads", "ideal_cycles", "buffer_words"]


@dataclass
class LoaderRun:
    """What a run measured: total cycles (first descriptor offered → last release), per load the cycle its
    buffer was taken and released, and the words read back per load (when asked)."""
    cycles: int = 0
    taken: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    words: list[np.ndarray] = field(default_factory=list)


def buffer_words(unit, raw: list[int]) -> np.ndarray:
    """Read-port words (ints of load_rows·C·operand bits) → their bytes, uint8 [words, feed_bytes]."""
    return np.array([list(word.to_bytes(unit.feed_bytes, "little")) for word in raw], dtype=np.uint8).reshape(
        -1, unit.feed_bytes)


async def run_loads(ctx, unit, dram: AXI4ReadModel, feeds: list[tuple[object, list]], buffers: list[int],
                    holds: list[int], *, read_words: list[int] | None = None,
                    rng: np.random.Generator | None = None, feed_gaps: float = 0.0,
                    timeout: int = 1_000_000) -> LoaderRun:
    """Run a `WeightLoader` or `WeightPath` (`unit`) against `dram`: offer each feed's payloads in order on its
    stream (`feeds`: (stream, payloads) pairs: descriptors, or expert ids and dense slabs); the consumer takes
    `buffers[i]` for load i, reads back `read_words[i]` feed words of it (one per cycle, if given), holds it
    `holds[i]` cycles in all and releases it. With `rng`, each feed is withheld with probability `feed_gaps`
    each cycle. Raises TimeoutError (a deadlock) after `timeout` cycles."""
    run = LoaderRun()
    span = unit.buffer_span
    offered = [0] * len(feeds)
    taken = released = 0
    holding = None            # (load, cycles held so far, words requested)
    received: list[int] = []
    read_at = [False] * WeightLoader.READ_LATENCY        # whether a word was read, a cycle each, the oldest first
    cycle = 0
    while released < len(buffers):
        if cycle > timeout:
            raise TimeoutError(f"loader: {released} of {len(buffers)} loads released after {timeout} cycles")
        dram.drive(ctx, unit.axi)
        accepted = []
        for index, (port, payloads) in enumerate(feeds):
            offering = offered[index] < len(payloads) and not (rng is not None and rng.random() < feed_gaps)
            ctx.set(port.valid, offering)
            if offering:
                ctx.set(port.payload, payloads[offered[index]])
            accepted.append(offering and bool(ctx.get(port.ready)))
        ctx.set(unit.release.valid, 0)
        ctx.set(unit.take.valid, 0)
        ctx.set(unit.read.en, 0)
        take_now = release_now = reading = False
        if holding is None and taken < len(buffers):
            ctx.set(unit.take.valid, 1)
            ctx.set(unit.take.payload, buffers[taken])
            take_now = bool(ctx.get(unit.take.ready))
        if holding is not None:
            load, held, requested = holding
            wanted = read_words[load] if read_words is not None else 0
            if requested < wanted:
                ctx.set(unit.read.addr, buffers[load] * span + requested)
                ctx.set(unit.read.en, 1)
                reading = True
            if held + 1 >= max(holds[load], wanted + 1) and len(received) == wanted and requested >= wanted:
                ctx.set(unit.release.valid, 1)
                ctx.set(unit.release.payload, buffers[load])
                release_now = True
        await ctx.tick()
        dram.advance()
        read_at = read_at[1:] + [reading]
        if read_at[0]:
            received.append(pack(unit.read.data.shape(), ctx.get(unit.read.data)))
        offered = [count + took for count, took in zip(offered, accepted)]
        if take_now:
            run.taken.append(cycle)
            holding = (taken, 0, 0)
            taken += 1
        elif holding is not None:
            load, held, requested = holding
            if release_now:
                run.released.append(cycle)
                run.words.append(buffer_words(unit, received))
                received = []
                released += 1
                holding = None
            else:
                holding = (load, held + 1, requested + reading)
        cycle += 1
    run.cycles = cycle
    return run


def ideal_cycles(loads: list[int], computes: list[int]) -> int:
    """The ideal double-buffered schedule: L₁ + Σᵢ max(Cᵢ, Lᵢ₊₁) (L_{n+1} = 0)."""
    return loads[0] + sum(max(compute, following) for compute, following in zip(computes, [*loads[1:], 0]))
