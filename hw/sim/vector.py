"""The vector units in a testbench: rows streamed in beat by beat (withheld at random), results taken (with
random back-pressure), the cycle count kept. Shared by the tests and `m3vit bench vector`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["StreamRun", "stream_through", "row_beats", "unbeat", "normalise_rows", "softmax_rows", "write_norm"]


@dataclass
class StreamRun:
    """The beats each output stream delivered, in order, and the cycles from the first offer to the end."""
    received: dict[str, list] = field(default_factory=dict)
    cycles: int = 0


def row_beats(rows: np.ndarray, lanes: int) -> np.ndarray:
    """Rows [n, length] → beats [n · ⌈length / lanes⌉, lanes], each row zero-padded to whole beats."""
    rows = np.asarray(rows, dtype=np.int64)
    beats = -(-rows.shape[1] // lanes)
    padded = np.zeros((rows.shape[0], beats * lanes), dtype=np.int64)
    padded[:, :rows.shape[1]] = rows
    return padded.reshape(-1, lanes)


def unbeat(beats, rows: int, length: int) -> np.ndarray:
    """Beats [lanes] of `rows` rows back into [rows, length]."""
    return np.asarray(beats, dtype=np.int64).reshape(rows, -1)[:, :length]


async def stream_through(ctx, source, beats: list, sinks: dict, *, busy=None, expected: dict | None = None,
                         rng=None, valid_probability: float = 1.0, ready_probability: float = 1.0,
                         timeout: int = 1_000_000) -> StreamRun:
    """Offer `beats` (payload values) on `source` and take every sink stream {name: (stream, convert)} until
    `busy` falls (or, without `busy`, until `expected[name]` beats came out of each sink)."""
    run = StreamRun({name: [] for name in sinks})

    def chance(p):
        return rng is None or p >= 1 or rng.random() < p

    def finished():
        if busy is not None:
            return not ctx.get(busy)
        return all(len(run.received[name]) >= count for name, count in expected.items())

    sent = 0
    while not finished():
        offering = sent < len(beats) and chance(valid_probability)
        ctx.set(source.valid, offering)
        if offering:
            ctx.set(source.payload, beats[sent])
        taking = {name: chance(ready_probability) for name in sinks}
        for name, (sink, _) in sinks.items():
            ctx.set(sink.ready, taking[name])
        took = offering and ctx.get(source.ready)
        for name, (sink, convert) in sinks.items():
            if taking[name] and ctx.get(sink.valid):
                run.received[name].append(convert(ctx.get(sink.payload)))
        await ctx.tick()
        sent += bool(took)
        run.cycles += 1
        if run.cycles > timeout:
            raise TimeoutError(f"{sent} of {len(beats)} beats in, "
                               f"{ {name: len(v) for name, v in run.received.items()} } out after {timeout} cycles")
    ctx.set(source.valid, 0)
    return run


def _check_rows(unit, rows: int):
    if not 1 <= rows <= unit.max_rows:
        raise ValueError(f"{type(unit).__name__}: {rows} rows in one command; the unit takes 1 to {unit.max_rows}")


async def _command(ctx, unit, payload: dict):
    ctx.set(unit.command.payload, payload)
    ctx.set(unit.command.valid, 1)
    while not ctx.get(unit.command.ready):
        await ctx.tick()
    await ctx.tick()
    ctx.set(unit.command.valid, 0)


async def write_norm(ctx, unit, parameter_set: int, outputs):
    """Write one LayerNorm parameter set [(gamma [D], beta [D]) per output] through `params_write`."""
    for index, word in enumerate(unit.params_words(outputs)):
        ctx.set(unit.params_write.addr, parameter_set * unit.beats + index)
        ctx.set(unit.params_write.data, word)
        ctx.set(unit.params_write.en, 1)
        await ctx.tick()
    ctx.set(unit.params_write.en, 0)


async def normalise_rows(ctx, unit, x: np.ndarray, eps: int, shifts, parameter_set: int = 0, **stalls):
    """LayerNorm of rows x [n, D] with a parameter set written before; returns ([y_o [n, D]], cycles)."""
    _check_rows(unit, len(x))
    await _command(ctx, unit, {"rows": len(x), "set": parameter_set, "eps": int(eps),
                               "shifts": [int(s) for s in shifts]})
    outputs = len(unit.output_bits)
    run = await stream_through(
        ctx, unit.input, [[int(v) for v in beat] for beat in row_beats(x, unit.lanes)],
        {"output": (unit.output, lambda p: [[int(v) for v in p.data[f"y{o}"]] for o in range(outputs)])},
        busy=unit.busy, **stalls)
    beats = run.received["output"]
    return [unbeat([beat[o] for beat in beats], len(x), unit.dim) for o in range(outputs)], run.cycles


async def softmax_rows(ctx, unit, scores: np.ndarray, exp_multiplier: int, exp_shift: int, out_multiplier: int,
                       out_shift: int, **stalls):
    """The softmax unit on score rows [n, T]: returns (P [n, T], row multipliers [n], row shifts [n], cycles)."""
    _check_rows(unit, len(scores))
    await _command(ctx, unit, {"rows": len(scores), "exp_multiplier": int(exp_multiplier),
                               "exp_shift": int(exp_shift), "out_multiplier": int(out_multiplier),
                               "out_shift": int(out_shift)})
    run = await stream_through(
        ctx, unit.input, [[int(v) for v in beat] for beat in row_beats(scores, unit.lanes)],
        {"output": (unit.output, lambda p: [int(v) for v in p.p]),
         "scales": (unit.scales, lambda p: (int(p.multiplier), int(p.shift)))},
        busy=unit.busy, **stalls)
    scales = np.array(run.received["scales"], dtype=np.int64).reshape(-1, 2)
    return unbeat(run.received["output"], len(scores), unit.length), scales[:, 0], scales[:, 1], run.cycles
