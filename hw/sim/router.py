"""The router in a testbench: write its weights and parameters, route one layer's tokens, collect the routes,
the non-empty expert list and the queues. Shared by the tests and `m3vit bench router`; runs under either
simulator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hw.moe.router import Router
from hw.moe.router.geometry import weight_words

__all__ = ["RoutedLayer", "write_router", "route_layer"]


@dataclass
class RoutedLayer:
    """One layer as the router left it: ids and weights [T, k], the expert list [(expert, base, count)], the
    queue [(token, weight)] of T·k entries, the cycles from the command to `busy` low, and `error`."""
    ids: np.ndarray
    weights: np.ndarray
    experts: list[tuple[int, int, int]]
    queue: list[tuple[int, int]]
    cycles: int
    error: bool


async def write_router(ctx, router: Router, weights: np.ndarray, multipliers: np.ndarray, shifts: np.ndarray):
    """Write every layer's and task's weights W [L, tasks, D, E] and exponent multipliers and shifts [L, tasks]."""
    per_table = router.groups * router.chunks
    for layer in range(weights.shape[0]):
        for task in range(weights.shape[1]):
            table = layer * router.tasks + task
            ctx.set(router.params_write.addr, table)
            ctx.set(router.params_write.data, {"multiplier": int(multipliers[layer, task]),
                                               "shift": int(shifts[layer, task])})
            ctx.set(router.params_write.en, 1)
            await ctx.tick()
            ctx.set(router.params_write.en, 0)
            for index, word in enumerate(weight_words(router, weights[layer, task])):
                ctx.set(router.weights_write.addr, table * per_table + index)
                ctx.set(router.weights_write.data, word)
                ctx.set(router.weights_write.en, 1)
                await ctx.tick()
            ctx.set(router.weights_write.en, 0)


async def route_layer(ctx, router: Router, layer: int, task: int, tokens: np.ndarray, *, rng=None,
                      valid_probability: float = 1.0, ready_probability: float = 1.0,
                      timeout: int = 1_000_000) -> RoutedLayer:
    """Route `tokens` [T, D] (int16) with `layer`'s weights for `task`: the tokens offered chunk by chunk
    (withheld with probability 1 − `valid_probability`), routes and experts taken with probability
    `ready_probability` each cycle; then the queue read back."""
    lanes, chunks = router.lanes, router.chunks
    padded = np.zeros((len(tokens), chunks * lanes), dtype=np.int64)
    padded[:, :tokens.shape[1]] = tokens
    beats = padded.reshape(-1, lanes)

    def chance(p):
        return rng is None or p >= 1 or rng.random() < p

    ctx.set(router.command.payload, {"layer": layer, "task": task, "tokens": len(tokens)})
    ctx.set(router.command.valid, 1)
    while not ctx.get(router.command.ready):
        await ctx.tick()
    await ctx.tick()
    ctx.set(router.command.valid, 0)
    cycles, sent = 1, 0
    routes, experts = [], []
    while ctx.get(router.busy):
        offering = sent < len(beats) and chance(valid_probability)
        ctx.set(router.tokens.valid, offering)
        if offering:
            ctx.set(router.tokens.payload, [int(v) for v in beats[sent]])
        taking_route, taking_expert = chance(ready_probability), chance(ready_probability)
        ctx.set(router.routes.ready, taking_route)
        ctx.set(router.experts.ready, taking_expert)
        sent_now = offering and ctx.get(router.tokens.ready)
        if taking_route and ctx.get(router.routes.valid):
            routes.append(ctx.get(router.routes.payload))
        if taking_expert and ctx.get(router.experts.valid):
            beat = ctx.get(router.experts.payload)
            experts.append((int(beat.expert), int(beat.base), int(beat.count)))
        await ctx.tick()
        sent += bool(sent_now)
        cycles += 1
        if cycles > timeout:
            raise TimeoutError(f"router: {len(routes)} of {len(tokens)} tokens routed after {timeout} cycles")
    ctx.set(router.tokens.valid, 0)
    queue = []
    for address in range(len(routes) * router.top_k):
        ctx.set(router.queue_read.addr, address)
        await ctx.tick()
        entry = ctx.get(router.queue_read.data)
        queue.append((int(entry.token), int(entry.weight)))
    ids = np.array([[int(v) for v in route.experts] for route in routes], dtype=np.int64).reshape(-1, router.top_k)
    weights = np.array([[int(v) for v in route.weights] for route in routes], dtype=np.int64).reshape(
        -1, router.top_k)
    assert [int(route.token) for route in routes] == list(range(len(routes)))
    return RoutedLayer(ids, weights, experts, queue, cycles, bool(ctx.get(router.error)))
