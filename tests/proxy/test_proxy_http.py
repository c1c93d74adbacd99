"""The proxy's request path over real HTTP: pass-through, usage handling, load accounting, headers, endpoints."""
from __future__ import annotations

import asyncio
import logging

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from balanceroute.bench import run_benchmark
from balanceroute.protocol.headers import WORKER_HEADER
from tests.proxy.client import completion_body, post
from tests.proxy.test_reliability import assert_no_load
from tests.support.bench import make_workload
from tests.support.waiting import wait_for


async def test_bench_client_through_proxy_records_the_worker_and_round_robin_spreads(backend_factory,
                                                                                      proxy_factory):
    backends = [await backend_factory() for _ in range(3)]
    proxy = await proxy_factory([b.url for b in backends], router="round_robin")
    result = await run_benchmark(proxy.url + "/v1/completions", make_workload(30, output_len=6), model="m",
                                 worker_header=WORKER_HEADER)
    req = result.requests
    assert result.summary["completed"] == 30
    assert sorted(np.bincount(req["worker"], minlength=3).tolist()) == [10, 10, 10]
    assert (req["output_len"] == 6).all()
    assert [len(b.bodies) for b in backends] == [10, 10, 10]
    assert_no_load(proxy)


async def test_usage_is_requested_upstream_and_stripped_unless_the_client_asked(backend_factory, proxy_factory):
    backend = await backend_factory()
    proxy = await proxy_factory([backend.url])
    async with aiohttp.ClientSession() as session:
        plain = await post(session, proxy.url, completion_body("a b c", 4))
        asked = await post(session, proxy.url, completion_body("a b c", 4, usage=True))
        refused = await post(session, proxy.url, completion_body("a b c", 4, usage=False))
    assert backend.bodies[0]["stream_options"] == {"include_usage": True}
    assert backend.bodies[2]["stream_options"] == {"include_usage": True}
    assert plain.completed and plain.usage_chunks == [] and len(plain.events) == 4
    assert refused.completed and refused.usage_chunks == []
    assert asked.completed and asked.usage_chunks[0]["usage"]["completion_tokens"] == 4
    assert_no_load(proxy)


async def test_tracked_load_is_prompt_from_usage_plus_tokens_streamed_so_far(backend_factory, proxy_factory):
    backend = await backend_factory(ttft_s=0.05, tpot_s=0.02)
    proxy = await proxy_factory([backend.url])
    prompt = "abcdefghijkl " * 10  # 10 tokens for the test server (words); the proxy estimates 130 / 4 -> 33
    seen = []

    async def watch():
        while True:
            seen.append(float(proxy.tracker.kv_load[0]))
            await asyncio.sleep(0.005)

    async with aiohttp.ClientSession() as session:
        watcher = asyncio.create_task(watch())
        reply = await post(session, proxy.url, completion_body(prompt, 20,
                                                               stream_options={"include_usage": True,
                                                                               "continuous_usage_stats": True}))
        watcher.cancel()
    assert reply.completed
    assert 33 in seen  # charged with the estimate when routed...
    corrected = [v for v in seen if v not in (0, 33)]
    assert corrected and all(10 < v <= 30 for v in corrected)  # ...then 10 prompt tokens + those generated
    assert np.all(np.diff(corrected) >= 0)
    assert_no_load(proxy)


async def test_learning_policy_is_taught_the_usage_output_length(backend_factory, proxy_factory):
    backend = await backend_factory(tokens_per_chunk=4)  # bundled chunks: per-delta counting undercounts
    proxy = await proxy_factory([backend.url], router="br_h", router_params={"predictor": "survival"})
    taught = []
    policy = proxy.proxy.router.policy
    original = policy.observe_finished
    policy.observe_finished = lambda n, prompt_hash=0: (taught.append(n), original(n, prompt_hash=prompt_hash))
    async with aiohttp.ClientSession() as session:
        await post(session, proxy.url, completion_body("x", 12))               # stream, usage stripped
        await post(session, proxy.url, completion_body("x", 7, stream=False))  # whole body
    assert taught == [12, 7]


async def test_chat_and_non_streaming_pass_through_with_request_id(backend_factory, proxy_factory):
    backend = await backend_factory()
    proxy = await proxy_factory([backend.url])
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi there"}], "max_completion_tokens": 3,
            "stream": True}
    async with aiohttp.ClientSession() as session:
        streamed = await post(session, proxy.url, chat, path="/v1/chat/completions", headers={"X-Request-Id": "abc"})
        whole = await post(session, proxy.url, {**chat, "stream": False}, path="/v1/chat/completions")
    assert streamed.completed and streamed.headers["X-Request-Id"] == "abc"
    assert backend.handler.request_ids[0] == "abc"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in streamed.events)
    assert text == " t0 t1 t2"
    assert whole.status == 200 and b'"completion_tokens": 3' in whole.body
    assert whole.headers[WORKER_HEADER] == "0" and whole.headers["X-Request-Id"]  # a new id when none was sent
    assert_no_load(proxy)


async def test_authorization_reaches_the_backend_and_is_never_logged(backend_factory, proxy_factory, caplog):
    seen = []

    @web.middleware
    async def record(request, handler):
        seen.append(request.headers.get("Authorization"))
        return await handler(request)

    backend = await backend_factory(middleware=record)
    secret = "Bearer sk-proxy-test-0123456789abcdef"
    with caplog.at_level(logging.DEBUG):
        proxy = await proxy_factory([backend.url])
        async with aiohttp.ClientSession() as session:
            ok = await post(session, proxy.url, completion_body(), headers={"Authorization": secret})
            failed = await post(session, proxy.url, completion_body("FAULT=disconnect"),
                                headers={"Authorization": secret})
            async with session.get(proxy.url + "/v1/models", headers={"Authorization": secret}) as resp:
                assert resp.status == 200
    assert ok.completed and failed.error_events
    assert seen.count(secret) == 3
    assert caplog.records and not any("sk-proxy-test" in r.getMessage() for r in caplog.records)


async def test_health_models_metrics_and_stats_endpoints(backend_factory, proxy_factory):
    backends = [await backend_factory() for _ in range(2)]
    proxy = await proxy_factory([b.url for b in backends], router="jsq_load")
    async with aiohttp.ClientSession() as session:
        reply = await post(session, proxy.url, completion_body())
        async with session.get(proxy.url + "/health") as resp:
            health = (resp.status, await resp.json())
        async with session.get(proxy.url + "/v1/models") as resp:
            models = await resp.json()
        async with session.get(proxy.url + "/metrics") as resp:
            metrics = await resp.text()
        async with session.get(proxy.url + "/stats") as resp:
            stats = await resp.json()
    assert health == (200, {"healthy_backends": 2, "backends": 2})
    assert models["data"][0]["id"] == "test-model"
    for name in ("balanceroute_proxy_requests_total", "balanceroute_proxy_request_latency_seconds_bucket",
                 "balanceroute_proxy_errors_total", "balanceroute_proxy_decision_seconds_count",
                 "balanceroute_proxy_kv_load_tokens", "balanceroute_proxy_backend_healthy",
                 "balanceroute_proxy_inflight", "balanceroute_proxy_pending"):
        assert name in metrics
    w, url = reply.worker, backends[reply.worker].url
    assert f'balanceroute_proxy_requests_total{{backend="{w}",outcome="completed",url="{url}"}} 1.0' in metrics
    assert "balanceroute_proxy_decision_seconds_count 1.0" in metrics
    assert stats["router"] == "jsq_load" and stats["totals"]["completed"] == 1
    assert [b["healthy"] for b in stats["backends"]] == [True, True]
    assert {"inflight", "kv_load", "completed", "failed", "cancelled", "url"} <= set(stats["backends"][0])
    # one decision, one balance sample: the prompt's estimate (ceil(11 bytes / 4) = 3) on one of two backends
    assert stats["balance"]["num_steps"] == 1 and stats["balance"]["balance_sampled_at"] == "routing decisions"
    assert stats["balance"]["mean_imbalance"] == 2 * 3 - 3 and stats["balance"]["mean_spread"] == 3


async def test_backend_failing_health_check_is_taken_out_and_readmitted(backend_factory, proxy_factory):
    healthy = {"ok": True}

    @web.middleware
    async def health(request, handler):  # /health answers 503 while the test says so
        if request.path == "/health" and not healthy["ok"]:
            return web.Response(status=503)
        return await handler(request)

    backend = await backend_factory(middleware=health)
    proxy = await proxy_factory([backend.url])
    healthy["ok"] = False
    await wait_for(lambda: not proxy.proxy.upstreams.live[0], what="take-out on a 503 health check")
    async with aiohttp.ClientSession() as session:
        refused = await post(session, proxy.url, completion_body())
        healthy["ok"] = True
        await wait_for(lambda: proxy.proxy.upstreams.live[0], what="readmission")
        served = await post(session, proxy.url, completion_body())
    assert refused.status == 503 and served.completed


@pytest.mark.parametrize("router", ["round_robin", "jsq_load", "br0", "vllm_default", "power_of_two"])
async def test_policies_route_only_to_live_backends(backend_factory, proxy_factory, router):
    backends = [await backend_factory() for _ in range(3)]
    proxy = await proxy_factory([b.url for b in backends], router=router, health_interval_s=60.0)
    proxy.proxy.upstreams.mark(1, False, "test")
    async with aiohttp.ClientSession() as session:
        replies = await asyncio.gather(*(post(session, proxy.url, completion_body(f"p{i}", 4)) for i in range(12)))
    assert all(r.completed for r in replies)
    assert {r.worker for r in replies} <= {0, 2}
    assert len(backends[1].bodies) == 0


async def test_request_ids_are_unique_across_proxies_and_an_oversized_body_is_a_json_413(backend_factory,
                                                                                           proxy_factory):
    backend = await backend_factory()
    first = await proxy_factory([backend.url])
    second = await proxy_factory([backend.url], max_body_bytes=2000)  # as a restarted proxy: its own counter
    async with aiohttp.ClientSession() as session:
        ids = [(await post(session, p.url, completion_body("hi", 2))).headers["X-Request-Id"]
               for p in (first, second, first, second)]
        too_big = await session.post(second.url + "/v1/completions", json=completion_body("x " * 2000, 2))
        error = await too_big.json()
    assert len(set(ids)) == 4 and ids[0].startswith("br-") and ids[0].rsplit("-", 1)[0] != ids[1].rsplit("-", 1)[0]
    assert too_big.status == 413 and too_big.content_type == "application/json"
    assert error["error"]["code"] == 413 and "limit of 2000 bytes" in error["error"]["message"]
    assert_no_load(second)
