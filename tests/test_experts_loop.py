"""The controller's EXPERTS loop on its own: a body issued once from the fetch buffer, then replayed from the body
buffer once per further expert in the router's order, with each pass's expert, token queue and DRAM offset; the
body dropped when no expert is active; the experts of a previous ROUTE forgotten at restart."""

import random

import pytest
from amaranth import unsigned
from amaranth.lib import data

from hw.control.loop import ExpertsLoop
from hw.sim import simulate

ENTRY = data.StructLayout({"expert": unsigned(4), "base": unsigned(9), "count": unsigned(8)})


def _loop(depth=4):
    return ExpertsLoop(ENTRY, experts=16, depth=depth)


# bodies of one (one expert, and five) and of the depth too; a buffer of 32 (m3vit-tiny-cityscapes on 4×4: a body
# of 23)
@pytest.mark.parametrize("depth,seed,length", [(4, 0, 3), (4, 1, 3), (4, 2, 1), (4, 6, 1), (4, 3, 4), (32, 4, 23),
                                               (32, 5, 32)])
def test_each_expert_replays_the_body(depth, seed, length):
    rng = random.Random(seed)
    experts = sorted(rng.sample(range(16), rng.randint(1, 6)))
    entries = [{"expert": e, "base": 20 * i, "count": rng.randint(1, 30)} for i, e in enumerate(experts)]
    body = [rng.getrandbits(128) for _ in range(length)]
    loop = _loop(depth)
    passes = []

    async def testbench(ctx):
        ctx.set(loop.router_busy, 1)
        ctx.set(loop.enter, 1)              # nothing known yet: the caller waits (here: asks, sees no expert)
        assert not ctx.get(loop.expert_ready) and not ctx.get(loop.no_more)
        ctx.set(loop.enter, 0)
        for entry in entries:               # the router's experts arrive, with random gaps
            ctx.set(loop.experts.payload, entry)
            ctx.set(loop.experts.valid, 1)
            await ctx.tick()
            ctx.set(loop.experts.valid, 0)
            for _ in range(rng.randint(0, 2)):
                await ctx.tick()
        ctx.set(loop.router_busy, 0)
        assert ctx.get(loop.expert_ready)
        ctx.set(loop.body, len(body))
        ctx.set(loop.stride, 1000)
        ctx.set(loop.first_pc, 7)
        ctx.set(loop.enter, 1)
        await ctx.tick()
        ctx.set(loop.enter, 0)
        waited = 0
        while ctx.get(loop.active):
            if ctx.get(loop.waiting):
                jumped = ctx.get(loop.jump)
                await ctx.tick()
                if jumped:
                    assert ctx.get(loop.jump_pc) == 7
                waited += 1
                assert waited < 3 * len(entries), "the loop waits with its next expert known"
                continue
            assert len(passes) < len(entries), "a pass more than the experts, or a body that does not end"
            words = []
            current = (ctx.get(loop.expert), ctx.get(loop.base), ctx.get(loop.count), ctx.get(loop.offset))
            for word in body:
                assert not ctx.get(loop.waiting)
                if ctx.get(loop.replay):
                    words.append(ctx.get(loop.instruction))
                else:
                    ctx.set(loop.fetched, word)
                    words.append(word)
                ctx.set(loop.issued, 1)
                await ctx.tick()
                ctx.set(loop.issued, 0)
                for _ in range(rng.randint(0, 2)):
                    await ctx.tick()
            passes.append((words, *current))

    simulate(loop, testbench)
    assert [(e, b, c) for _, e, b, c, _ in passes] == [(x["expert"], x["base"], x["count"]) for x in entries]
    assert all(words == body for words, *_ in passes)
    assert [offset for *_, offset in passes] == [1000 * e for e in experts]


def test_no_expert_drops_the_body_and_restart_forgets():
    loop = _loop()

    async def testbench(ctx):
        ctx.set(loop.experts.payload, {"expert": 3, "base": 0, "count": 5})
        ctx.set(loop.experts.valid, 1)
        await ctx.tick()
        ctx.set(loop.experts.valid, 0)
        ctx.set(loop.restart, 1)            # a new ROUTE: the last layer's experts are gone
        await ctx.tick()
        ctx.set(loop.restart, 0)
        assert not ctx.get(loop.expert_ready) and ctx.get(loop.no_more)
        ctx.set(loop.body, 2)
        ctx.set(loop.enter, 1)
        await ctx.tick()
        ctx.set(loop.enter, 0)
        assert ctx.get(loop.skipping) and not ctx.get(loop.active)
        for _ in range(2):
            ctx.set(loop.dropped, 1)
            await ctx.tick()
        ctx.set(loop.dropped, 0)
        assert not ctx.get(loop.skipping) and not ctx.get(loop.active)

    simulate(loop, testbench)
