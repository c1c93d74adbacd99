"""Dispatch: dead backends hidden from every policy, and pool mode (requests held until a backend frees a slot)."""
from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from balanceroute.load import LoadTracker
from balanceroute.policies import PendingRequests, available_policies, make_policy
from balanceroute.proxy import dispatch
from balanceroute.proxy.dispatch import LiveRouter, NoLiveBackendError, PoolDispatcher, make_dispatcher
from tests.proxy.client import completion_body, post
from tests.proxy.test_reliability import assert_no_load
from tests.support.waiting import wait_for


@pytest.mark.parametrize("name", available_policies())
def test_every_policy_avoids_a_dead_backend_on_arrival_and_in_the_pool(name):
    live = np.array([True, False, True, True])
    tracker = LoadTracker(4, max_num_seqs=3)
    router = LiveRouter(make_policy(name), tracker, live)
    for i in range(6):
        assert router.route(i, 10 + i, running=True) != 1
    assignment = router.place_pool(list(range(100, 106)), PendingRequests(np.full(6, 20)))
    assert 1 not in assignment.worker
    assert tracker.running[1] == 0 and tracker.running.sum() == 6 + len(assignment)


async def test_on_arrival_dispatch_refuses_when_no_backend_is_live():
    dispatcher = make_dispatcher("on_arrival", LiveRouter(make_policy("jsq_load"), LoadTracker(2),
                                                          np.zeros(2, dtype=bool)))
    with pytest.raises(NoLiveBackendError):
        await dispatcher.acquire("r", 10)


async def test_pool_holds_requests_until_slots_free_and_forgets_cancelled_ones():
    live = np.ones(2, dtype=bool)
    dispatcher = PoolDispatcher(LiveRouter(make_policy("br0"), LoadTracker(2, max_num_seqs=1), live))
    first = [asyncio.create_task(dispatcher.acquire(i, 10)) for i in range(2)]
    waiting = [asyncio.create_task(dispatcher.acquire(i, 10)) for i in (2, 3)]
    await wait_for(lambda: all(t.done() for t in first) and dispatcher.pending == 2, what="both slots taken")
    assert sorted([t.result() for t in first]) == [0, 1]
    waiting[0].cancel()  # the client left while queued: no load, no slot
    await wait_for(lambda: dispatcher.pending == 1, what="the cancelled request to leave the pool")
    assert len(dispatcher.router.tracker) == 2
    dispatcher.release(0, True)
    assert await waiting[1] == first[0].result()  # the freed slot goes to the next request
    dispatcher.release(1, True)
    dispatcher.release(3, False)
    assert len(dispatcher.router.tracker) == 0 and dispatcher.router.tracker.kv_load.sum() == 0


async def test_a_pool_round_considers_the_oldest_window_and_rounds_continue_while_slots_are_free(monkeypatch):
    monkeypatch.setattr(dispatch, "POOL_WINDOW", 1)
    live = np.ones(2, dtype=bool)
    dispatcher = PoolDispatcher(LiveRouter(make_policy("br0"), LoadTracker(2, max_num_seqs=1), live))
    rounds = []
    dispatcher.on_decision = rounds.append
    tasks = [asyncio.create_task(dispatcher.acquire(i, 10 * (i + 1))) for i in range(3)]
    await wait_for(lambda: tasks[0].done() and tasks[1].done(), what="two rounds")
    assert [t.done() for t in tasks] == [True, True, False]  # oldest first, one per round, both slots filled
    assert len(rounds) == 2 and dispatcher.pending == 1  # no third round: no slot is free
    dispatcher.release(0, True)
    assert await tasks[2] == tasks[0].result()
    dispatcher.release(1, True)
    dispatcher.release(2, True)
    assert dispatcher.router.tracker.kv_load.sum() == 0


async def test_pool_mode_over_http_keeps_each_backend_within_its_slots(backend_factory, proxy_factory):
    backends = [await backend_factory(tpot_s=0.004) for _ in range(2)]
    proxy = await proxy_factory([b.url for b in backends], router="br0", dispatch="pool", max_num_seqs=2)
    peak_inflight = np.zeros(2, dtype=np.int64)
    peak_pending = 0

    async def watch():
        nonlocal peak_pending
        while True:
            np.maximum(peak_inflight, proxy.tracker.running + proxy.tracker.waiting, out=peak_inflight)
            peak_pending = max(peak_pending, proxy.proxy.dispatcher.pending)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    async with aiohttp.ClientSession() as session:
        replies = await asyncio.gather(*(post(session, proxy.url, completion_body(f"p{i} " * (i + 1), 20))
                                         for i in range(12)))
        busy = [asyncio.create_task(post(session, proxy.url, completion_body("y", 20))) for _ in range(4)]
        await wait_for(lambda: len(proxy.tracker) == 4, what="every slot taken")
        leaver = asyncio.create_task(post(session, proxy.url, completion_body("x", 20)))
        await wait_for(lambda: proxy.proxy.dispatcher.pending == 1, what="a queued request")
        leaver.cancel()
        await asyncio.gather(*busy)
    watcher.cancel()
    assert all(r.completed for r in replies)
    assert peak_inflight.tolist() == [2, 2] and peak_pending >= 8
    await wait_for(lambda: proxy.proxy.dispatcher.pending == 0, what="the queue to empty")
    assert sum(len(b.bodies) for b in backends) == 16  # the request that left while queued was never sent
    assert_no_load(proxy)
