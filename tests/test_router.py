"""The router against `golden.ops.route` and `golden.model.expert_queues`: ids, gate weights, the expert list
and the queues, bit for bit, for several expert counts, k, both gate variants and task switching."""

import numpy as np
import pytest

from golden import ops
from golden.config import accelerator_preset, model_preset
from golden.model import expert_queues
from hw.flow.export import lint, to_verilog
from hw.moe.router import Router
from hw.moe.router.geometry import RouterGeometry
from hw.moe.router.topk import ExponentTopK
from hw.sim import simulate
from hw.sim.router import route_layer, write_router

LAYERS, TASKS = 2, 3


def _golden(tokens, weights, multiplier, shift, k, gate):
    logits = ops.exact_matmul(tokens.astype(np.int16), weights.astype(np.int8))
    ids, gates = ops.route(logits, k, gate, int(multiplier), int(shift))
    queues = expert_queues(ids, weights.shape[1])
    bases = np.concatenate([[0], np.cumsum(queues.counts)[:-1]])
    experts = [(int(e), int(bases[e]), int(queues.counts[e])) for e in queues.active]
    queue = [(int(t), int(gates[t, s])) for t, s in zip(queues.tokens, queues.slots)]
    return ids, gates, experts, queue


def _run(router, jobs, weights, multipliers, shifts, **stalls):
    """Route each (layer, task, tokens) job in one simulation; returns the routed layers."""
    results = []

    async def testbench(ctx):
        rng = np.random.default_rng(1)
        ctx.set(router.queue_read.en, 1)
        await write_router(ctx, router, weights, multipliers, shifts)
        for layer, task, tokens in jobs:
            results.append(await route_layer(ctx, router, layer, task, tokens, rng=rng, **stalls))

    simulate(router, testbench)
    return results


def _check(router, jobs, weights, multipliers, shifts, results):
    for (layer, task, tokens), got in zip(jobs, results):
        if task >= router.tasks:
            assert got.error and len(got.ids) == 0
            continue
        ids, gates, experts, queue = _golden(tokens, weights[layer, task], multipliers[layer, task],
                                             shifts[layer, task], router.top_k, router.gate)
        assert not got.error
        assert np.array_equal(got.ids, ids) and np.array_equal(got.weights, gates)
        assert got.experts == experts
        assert got.queue == queue


def _tables(rng, dim, experts):
    weights = rng.integers(-127, 128, (LAYERS, TASKS, dim, experts))
    multipliers = rng.integers(1 << 14, 1 << 15, (LAYERS, TASKS))
    shifts = rng.integers(22, 34, (LAYERS, TASKS))
    return weights, multipliers, shifts


@pytest.mark.parametrize("experts, top_k, gate", [(2, 1, "vmoe"), (4, 4, "noisy"), (16, 2, "vmoe"), (64, 4, "noisy")])
def test_the_stage_models_compose_to_the_golden_route(experts, top_k, gate):
    """`Router.model` is the stages' models one after the other; it must be the golden route, ties and the
    extreme inputs included."""
    rng = np.random.default_rng(experts + top_k)
    weights, multipliers, shifts = _tables(rng, 12, experts)
    for case in range(4):
        tokens = rng.integers(-(1 << 15), 1 << 15, (int(rng.integers(1, 30)), 12))
        if case == 1:
            tokens[:] = rng.choice([-(1 << 15), (1 << 15) - 1], tokens.shape)
        w = weights[0, 0].copy()
        if case == 2:                  # equal logits: identical columns
            w[:, 1::2] = w[:, ::2][:, :w[:, 1::2].shape[1]]
        if case == 3:
            w[:] = rng.choice([-127, 127], w.shape)
        got = Router.model(tokens, w, int(multipliers[0, 0]), int(shifts[0, 0]), top_k, gate)
        expected = _golden(tokens, w, multipliers[0, 0], shifts[0, 0], top_k, gate)
        assert all(np.array_equal(a, b) for a, b in zip(got[:2], expected[:2])) and got[2:] == expected[2:]


@pytest.mark.parametrize("experts, top_k, gate, dim, macs", [
    (2, 1, "vmoe", 12, 8), (4, 2, "noisy", 20, 8), (4, 4, "vmoe", 9, 4), (16, 2, "vmoe", 24, 32),
    (16, 4, "noisy", 16, 128), (64, 2, "vmoe", 8, 16), (64, 4, "noisy", 6, 128), (16, 1, "noisy", 5, 3)])
def test_routes_and_queues_are_bit_exact(experts, top_k, gate, dim, macs):
    rng = np.random.default_rng(experts * 100 + top_k * 10 + dim)
    router = Router(embed_dim=dim, experts=experts, top_k=top_k, gate=gate, tasks=TASKS, layers=LAYERS,
                    max_tokens=9, macs=macs)
    weights, multipliers, shifts = _tables(rng, dim, experts)
    jobs = []
    for index in range(6):   # switching layers and tasks
        tokens = rng.integers(-(1 << 15), 1 << 15, (int(rng.integers(1, 10)), dim))
        if index == 1:
            tokens[:] = rng.choice([-(1 << 15), (1 << 15) - 1], tokens.shape)
        jobs.append((index % LAYERS, (index * 2) % TASKS, tokens))
    _check(router, jobs, weights, multipliers, shifts, _run(router, jobs, weights, multipliers, shifts))


def test_edges_ties_one_expert_one_token_and_a_bad_task():
    rng = np.random.default_rng(3)
    experts, top_k, dim = 8, 2, 10
    router = Router(embed_dim=dim, experts=experts, top_k=top_k, gate="vmoe", tasks=TASKS, layers=LAYERS,
                    max_tokens=9, macs=16)
    weights, multipliers, shifts = _tables(rng, dim, experts)
    weights[0, 0] = 0                        # every logit equal: experts 0 and 1 win, equal weights
    weights[1, 1] = 0
    weights[1, 1, :, 5] = 127                # positive tokens all go to expert 5 first
    positive = rng.integers(1, 1 << 15, (9, dim))
    jobs = [(0, 0, rng.integers(-(1 << 15), 1 << 15, (9, dim))),
            (1, 1, positive),
            (0, TASKS, positive),            # a task the model does not have
            (1, 2, positive[:1]),            # one token only, and the error cleared
            (0, 1, np.full((9, dim), (1 << 15) - 1)), (0, 1, np.full((9, dim), -(1 << 15)))]
    results = _run(router, jobs, weights, multipliers, shifts)
    _check(router, jobs, weights, multipliers, shifts, results)
    assert np.all(results[0].ids == [0, 1]) and np.all(results[0].weights == (1 << 15) // experts)
    assert np.all(results[1].ids[:, 0] == 5)
    assert results[2].error and not results[3].error


def test_random_stalls_and_back_pressure():
    rng = np.random.default_rng(5)
    experts, dim = 16, 12
    router = Router(embed_dim=dim, experts=experts, top_k=2, gate="noisy", tasks=TASKS, layers=LAYERS,
                    max_tokens=9, macs=32)
    weights, multipliers, shifts = _tables(rng, dim, experts)
    jobs = [(i % LAYERS, i % TASKS, rng.integers(-(1 << 15), 1 << 15, (9, dim))) for i in range(4)]
    results = _run(router, jobs, weights, multipliers, shifts, valid_probability=0.4, ready_probability=0.3)
    _check(router, jobs, weights, multipliers, shifts, results)


def test_router_verilog_passes_lint():
    router = Router.for_model(model_preset("tiny"), accelerator_preset("4x4"))
    lint(to_verilog(router, "router"), "router")


def test_exponentials_and_their_sum_are_bit_exact():
    """`ExponentTopK` alone against its model (`golden.ops.route_winners`): each winner's e and the sum S, which
    the gate weights' rounding hides (an e one off moves a gate weight once in about 2^17 tokens). Logit
    distances put the whole part of the exponent from 0 past 31 (e = 0), so e's rounding meets its ties
    (odd table values shifted by one) and its range."""
    rng = np.random.default_rng(7)
    geometry = RouterGeometry(embed_dim=12, experts=16, top_k=2, gate="vmoe", tasks=1, layers=1, max_tokens=9)
    dut = ExponentTopK(geometry)
    experts, top_k = geometry.experts, geometry.top_k
    multiplier, shift = (1 << 14) + 12345, 24
    spread = [1 << 10, 1 << 14, 1 << 18, 1 << 24]       # logit distances from under one table step to past e's range
    tokens = [rng.integers(-spread[t % 4], spread[t % 4], experts) for t in range(12)]
    tokens[1][:] = 0                                      # every logit equal
    tokens[2][3::4] = tokens[2][0]                        # ties at the top
    memory, got = np.zeros(2 * experts, np.int64), []

    async def testbench(ctx):
        ctx.set(dut.params.multiplier, multiplier)
        ctx.set(dut.params.shift, shift)
        ctx.set(dut.winners.ready, 1)
        for index, logits in enumerate(tokens):
            half = index % 2
            memory[half * experts:(half + 1) * experts] = logits
            ctx.set(dut.l_max[half], int(logits.max()))
            ctx.set(dut.full, 1 << half)
            while True:
                address, valid, released = (ctx.get(dut.logit_read.addr), ctx.get(dut.winners.valid),
                                            ctx.get(dut.released))
                winners = ctx.get(dut.winners.payload)
                await ctx.tick()
                ctx.set(dut.logit_read.data, int(memory[address]))
                if released:
                    ctx.set(dut.full, 0)
                if valid:
                    got.append(([int(e) for e in winners.experts], [int(e) for e in winners.e], int(winners.total)))
                    break

    simulate(dut, testbench)
    for logits, (ids, e, total) in zip(tokens, got):
        expected = ExponentTopK.model(logits[None], top_k, multiplier, shift)
        assert ids == expected[0][0].tolist() and e == expected[1][0].tolist() and total == int(expected[2][0, 0])
    assert len(got) == len(tokens)
