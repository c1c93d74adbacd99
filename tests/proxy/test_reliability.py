"""The proxy's Must-hold reliability properties, over real HTTP on 127.0.0.1 (issue 6):

- one of four backends killed mid-run: the proxy keeps serving, the streams on the dead backend fail cleanly
  (an error event), later requests go elsewhere, and the backend is readmitted when it comes back;
- 2,000 requests with random client disconnects leave the tracked load at exactly zero;
- malformed JSON gets a 400 from the proxy itself; an upstream 5xx (and 429) passes through;
- a connection refused before anything streamed is retried on another backend.
"""
from __future__ import annotations

import asyncio
import random

import aiohttp
import numpy as np

from tests.proxy.client import completion_body, post
from tests.proxy.conftest import free_port
from tests.support.waiting import wait_for


def streaming_on(proxy, worker: int) -> int:
    """Requests on ``worker`` that have streamed at least one token (the proxy's tracked state)."""
    table = proxy.tracker.snapshot(with_requests=True).requests
    return int(((table.worker == worker) & (table.generated > 0)).sum())


def assert_no_load(proxy) -> None:
    t = proxy.tracker
    assert len(t) == 0
    assert t.kv_load.tolist() == [0.0] * t.num_workers  # exact: every charge was released
    assert t.running.tolist() == [0] * t.num_workers and t.waiting.tolist() == [0] * t.num_workers


async def test_killed_backend_fails_its_streams_cleanly_then_is_avoided_and_readmitted(
        backend_factory, backend_process, proxy_factory):
    port = free_port()
    doomed = backend_process(port, tpot_s=0.005)
    others = [await backend_factory(tpot_s=0.002) for _ in range(3)]
    targets = [others[0].url, doomed.url, others[1].url, others[2].url]
    proxy = await proxy_factory(targets, router="round_robin")
    async with aiohttp.ClientSession() as session:
        # phase 1: 40 streams of 400 tokens (~2 s each); backend 1 is killed once its ten are all streaming
        first = [asyncio.create_task(post(session, proxy.url, completion_body(f"p{i}", 400))) for i in range(40)]
        await wait_for(lambda: streaming_on(proxy, 1) == 10, what="backend 1's ten streams to be under way")
        doomed.kill()
        replies = await asyncio.gather(*first)
        on_dead = [r for r in replies if r.worker == 1]
        assert len(on_dead) == 10  # round robin: a quarter went there before it died
        for r in on_dead:  # each failed cleanly: an HTTP 200 stream ending in an error event, then [DONE]
            assert r.status == 200 and r.error_events and r.done, r
            assert "broke off" in r.error_events[0]["error"]["message"] or "ended" in r.error_events[0]["error"][
                "message"]
        assert all(r.completed for r in replies if r.worker != 1)
        await wait_for(lambda: not proxy.proxy.upstreams.live[1], what="backend 1 taken out")

        # phase 2: the proxy keeps serving, and nothing goes to the dead backend
        later = await asyncio.gather(*(post(session, proxy.url, completion_body(f"q{i}", 10)) for i in range(40)))
        assert all(r.completed for r in later)
        assert {r.worker for r in later} == {0, 2, 3}
        assert_no_load(proxy)

        # phase 3: the backend returns on the same port and is readmitted
        backend_process(port, tpot_s=0.001)
        await wait_for(lambda: proxy.proxy.upstreams.live[1], what="backend 1 readmitted")
        back = await asyncio.gather(*(post(session, proxy.url, completion_body(f"r{i}", 5)) for i in range(8)))
        assert all(r.completed for r in back)
        assert sum(r.worker == 1 for r in back) == 2
        async with session.get(proxy.url + "/stats") as resp:
            stats = await resp.json()
    assert stats["backends"][1]["healthy"] is True
    assert stats["backends"][1]["failed"] == 10
    assert stats["tracked_requests"] == 0
    assert_no_load(proxy)


async def test_2000_requests_with_random_client_disconnects_leave_zero_load(backend_factory, proxy_factory):
    backends = [await backend_factory(tpot_s=0.001, ttft_s=0.002) for _ in range(4)]
    proxy = await proxy_factory([b.url for b in backends], router="jsq_load")
    rng = random.Random(7)
    sem = asyncio.Semaphore(64)
    cancelled = completed = 0
    peak = np.zeros(4)

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal cancelled, completed
        async with sem:
            stream = rng.random() < 0.8
            task = asyncio.create_task(post(session, proxy.url, completion_body(
                f"prompt {i} " * rng.randint(1, 30), rng.randint(1, 30), stream=stream,
                usage=rng.choice([None, True, False]))))
            if rng.random() < 0.5:  # disconnect at a random moment: before routing, mid-stream, or near the end
                await asyncio.sleep(rng.uniform(0, 0.03))
                np.maximum(peak, proxy.tracker.kv_load, out=peak)
                task.cancel()
            try:
                reply = await task
                completed += reply.completed or (not stream and reply.status == 200)
            except asyncio.CancelledError:
                cancelled += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(i, session) for i in range(2000)))
    assert cancelled > 500 and completed > 1000
    assert peak.sum() > 0  # the disconnects happened while load was tracked
    await wait_for(lambda: len(proxy.tracker) == 0, what="every handler to finish")
    assert_no_load(proxy)
    totals = proxy.proxy.telemetry.stats()["totals"]
    assert totals["cancelled"] > 200 and totals["failed"] == 0  # many disconnects reached a routed request
    assert completed <= totals["completed"] and totals["completed"] + totals["cancelled"] <= 2000


async def test_malformed_json_gets_400_from_the_proxy(backend_factory, proxy_factory):
    backend = await backend_factory()
    proxy = await proxy_factory([backend.url])
    async with aiohttp.ClientSession() as session:
        bad = await post(session, proxy.url, b'{"model": "m", "prompt": ')
        not_object = await post(session, proxy.url, b'["a", "list"]')
    assert bad.status == 400 and b"not valid JSON" in bad.body
    assert not_object.status == 400 and b"must be a JSON object" in not_object.body
    assert backend.bodies == []  # never forwarded
    assert proxy.proxy.telemetry.errors["bad_request"] == 2
    assert_no_load(proxy)


async def test_upstream_5xx_and_429_pass_through_with_their_body(backend_factory, proxy_factory):
    backend = await backend_factory()
    proxy = await proxy_factory([backend.url])
    async with aiohttp.ClientSession() as session:
        r503 = await post(session, proxy.url, completion_body("FAULT=http_503", stream=False))
        r500 = await post(session, proxy.url, completion_body("FAULT=http_500"))
        r429 = await post(session, proxy.url, completion_body("FAULT=http_429"))
    assert (r503.status, r500.status, r429.status) == (503, 500, 429)
    assert b"injected http_503" in r503.body and b"injected http_429" in r429.body
    assert len(backend.bodies) == 3  # passed through, not retried
    assert proxy.proxy.telemetry.stats()["backends"][0]["upstream_status"] == 3
    assert_no_load(proxy)


async def test_refused_connection_is_retried_on_another_backend(backend_factory, proxy_factory):
    alive = await backend_factory()
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # slow health checks: the first requests meet the dead backend before any check has taken it out
    proxy = await proxy_factory([dead_url, alive.url], router="round_robin", health_interval_s=60.0)
    proxy.proxy.upstreams.live[:] = True  # as if it had been healthy at the start
    async with aiohttp.ClientSession() as session:
        replies = [await post(session, proxy.url, completion_body(f"x{i}")) for i in range(4)]
    assert all(r.completed and r.worker == 1 for r in replies)
    assert not proxy.proxy.upstreams.live[0]  # taken out by the refused connection
    stats = proxy.proxy.telemetry.stats()
    assert stats["backends"][0]["connect_failed"] == 1 and stats["backends"][1]["completed"] == 4
    assert_no_load(proxy)


async def test_stream_dying_midway_ends_with_an_error_event_and_releases_load(backend_factory, proxy_factory):
    backend = await backend_factory(tpot_s=0.001)
    proxy = await proxy_factory([backend.url])
    async with aiohttp.ClientSession() as session:
        reply = await post(session, proxy.url, completion_body("FAULT=disconnect", 10))
        after = await post(session, proxy.url, completion_body("fine", 3))
    assert reply.status == 200 and len(reply.events) == 3 and reply.done  # two chunks, the error, [DONE]
    assert reply.error_events[0]["error"]["code"] == 502
    assert after.completed
    assert proxy.proxy.telemetry.stats()["backends"][0]["failed"] == 1
    assert_no_load(proxy)


async def test_no_live_backend_gets_503(proxy_factory):
    proxy = await proxy_factory([f"http://127.0.0.1:{free_port()}"])
    async with aiohttp.ClientSession() as session:
        reply = await post(session, proxy.url, completion_body())
        async with session.get(proxy.url + "/health") as resp:
            health = resp.status
    assert reply.status == 503 and b"no healthy backend" in reply.body
    assert health == 503
