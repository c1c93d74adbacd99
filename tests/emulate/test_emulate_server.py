"""The emulated fleet over real HTTP on 127.0.0.1: OpenAI/vLLM wire format, token counts, errors, metrics,
cancellation, and timing that follows the step model."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from fleet_helpers import metric_values, sse_events

from balanceroute.emulate.protocol import COMPLETIONS_DEFAULT_MAX_TOKENS
from balanceroute.protocol.headers import WORKER_HEADER
from balanceroute.sim.presets import get_preset
from tests.support.waiting import wait_for

TINY = get_preset("tiny")


def words(n: int) -> str:
    return " ".join(["word"] * n)


# ---- wire format --------------------------------------------------------------------------------------------------
async def test_completions_stream_is_vllm_sse_with_exact_usage(start_fleet, session):
    _, urls = await start_fleet(ranks=2, time_scale=0.2)
    body = {"model": "tiny", "prompt": words(7), "max_tokens": 5, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    async with session.post(urls.front + "/v1/completions", json=body, headers={"X-Request-Id": "abc"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["X-Request-Id"] == "abc"
        assert resp.headers[WORKER_HEADER] in ("0", "1")
        events = sse_events(await resp.read())
    assert events[-1] == "[DONE]"
    tokens, usage = events[:-2], events[-2]
    assert len(tokens) == 5  # one token per chunk: the client keeps up
    assert all(e["object"] == "text_completion" and e["id"] == "cmpl-abc" and e["model"] == "tiny" for e in tokens)
    assert [e["choices"][0]["finish_reason"] for e in tokens] == [None] * 4 + ["length"]
    assert all(len(e["choices"][0]["text"].split()) == 1 and "usage" not in e for e in tokens)
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 7, "total_tokens": 12,
                                                         "completion_tokens": 5}


async def test_chat_stream_opens_with_the_role_and_counts_continuous_usage(start_fleet, session):
    _, urls = await start_fleet(ranks=1, time_scale=0.2)
    body = {"model": "tiny", "messages": [{"role": "system", "content": words(3)},
                                          {"role": "user", "content": [{"type": "text", "text": words(4)}]}],
            "max_completion_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    async with session.post(urls.ranks[0] + "/v1/chat/completions", json=body) as resp:
        events = sse_events(await resp.read())
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    deltas = events[1:-2]
    assert [e["usage"]["completion_tokens"] for e in deltas] == [1, 2, 3]
    assert all(e["usage"]["prompt_tokens"] == 7 for e in deltas)
    assert events[-2]["usage"]["completion_tokens"] == 3 and events[-1] == "[DONE]"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_non_streamed_response_has_the_whole_text_and_usage(start_fleet, session, path):
    _, urls = await start_fleet(ranks=2, time_scale=0.2)
    chat = "chat" in path
    body = {"model": "tiny", "max_tokens": 4, "ignore_eos": False}
    body.update({"messages": [{"role": "user", "content": words(6)}]} if chat else {"prompt": list(range(9))})
    async with session.post(urls.ranks[1] + path, json=body) as resp:
        assert resp.status == 200 and resp.headers[WORKER_HEADER] == "1"
        out = await resp.json()
    choice = out["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    assert len(text.split()) == 4 and choice["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 6 if chat else 9, "total_tokens": 10 if chat else 13,
                            "completion_tokens": 4}


async def test_completions_default_max_tokens_is_vllms(start_fleet, session):
    _, urls = await start_fleet(ranks=1, time_scale=0.05)
    async with session.post(urls.front + "/v1/completions", json={"prompt": "a b"}) as resp:
        assert (await resp.json())["usage"]["completion_tokens"] == COMPLETIONS_DEFAULT_MAX_TOKENS


async def test_models_and_health(start_fleet, session):
    _, urls = await start_fleet(ranks=2, served_model_name="my-model", max_model_len=1000)
    for url in (urls.front, *urls.ranks):
        async with session.get(url + "/health") as resp:
            assert resp.status == 200
        async with session.get(url + "/v1/models") as resp:
            card = (await resp.json())["data"]
        assert [(c["id"], c["max_model_len"]) for c in card] == [("my-model", 1000)]


# ---- errors -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b'["a list"]', 400, "JSON object"),
    (b'{"model": "other", "prompt": "a"}', 404, "`other` does not exist"),
    (b'{"prompt": "a", "max_tokens": 0}', 400, "max_tokens must be an integer >= 1"),
    (b'{"prompt": ["a", "b"]}', 400, "batched prompts"),
    (b'{"prompt": ""}', 400, "empty"),
    (b'{"prompt": "a b c", "max_tokens": 998}', 400, "maximum context length is 1000 tokens"),
])
async def test_bad_requests_get_openai_style_errors(start_fleet, session, body, status, message):
    fleet, urls = await start_fleet(ranks=1, max_model_len=1000)
    async with session.post(urls.ranks[0] + "/v1/completions", data=body,
                            headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert message in error["message"]
    assert error["code"] == status and error["type"] == ("NotFoundError" if status == 404 else "BadRequestError")
    assert fleet.engine.req.n == 0  # nothing reached the engine


async def test_a_request_beyond_a_ranks_kv_cache_is_rejected(start_fleet, session):
    _, urls = await start_fleet(ranks=1, max_model_len=10 * TINY.kv_capacity_tokens)
    body = {"prompt": list(range(TINY.kv_capacity_tokens)), "max_tokens": 2}
    async with session.post(urls.front + "/v1/completions", json=body) as resp:
        assert resp.status == 400
        assert "KV cache" in (await resp.json())["error"]["message"]


# ---- metrics and cancellation --------------------------------------------------------------------------------------
async def metrics(session, url: str) -> str:
    async with session.get(url + "/metrics") as resp:
        return await resp.text()


async def test_metrics_count_requests_and_tokens_per_engine(start_fleet, session):
    _, urls = await start_fleet(ranks=2, time_scale=0.1)
    bodies = [(urls.ranks[0], 5, 3), (urls.ranks[1], 8, 2), (urls.ranks[1], 4, 6)]
    await asyncio.gather(*(session.post(url + "/v1/completions", json={"prompt": words(p), "max_tokens": m})
                           for url, p, m in bodies))

    async def all_finished() -> bool:
        done = metric_values(await metrics(session, urls.front), "vllm:request_success_total")
        return sum(done.values()) == 3

    await wait_for(all_finished, what="the three requests to be counted")
    text = await metrics(session, urls.front)
    assert metric_values(text, "vllm:request_success_total") == {0: 1, 1: 2}
    assert metric_values(text, "vllm:prompt_tokens_total") == {0: 5, 1: 12}
    assert metric_values(text, "vllm:generation_tokens_total") == {0: 3, 1: 8}
    assert metric_values(text, "vllm:num_requests_running") == {0: 0, 1: 0}
    assert metric_values(await metrics(session, urls.ranks[1]), "vllm:prompt_tokens_total") == {1: 12}


async def test_cancelled_streams_free_their_slots_and_kv(start_fleet, session):
    fleet, urls = await start_fleet(ranks=2, time_scale=0.2)
    body = {"prompt": words(50), "max_tokens": 500, "stream": True}
    responses = [await session.post(urls.ranks[g] + "/v1/completions", json=body) for g in (0, 1, 1)]
    for resp in responses:
        await resp.content.readline()  # the first token arrived: all three run
    text = await metrics(session, urls.front)
    assert metric_values(text, "vllm:num_requests_running") == {0: 1, 1: 2}
    usage = metric_values(text, "vllm:kv_cache_usage_perc")
    assert usage[1] > usage[0] > 0
    for resp in responses:
        resp.close()  # the client goes away mid-stream
    for _ in range(100):
        text = await metrics(session, urls.front)
        if sum(metric_values(text, "vllm:num_requests_running").values()) == 0:
            break
        await asyncio.sleep(0.02)
    assert metric_values(text, "vllm:num_requests_running") == {0: 0, 1: 0}
    assert metric_values(text, "vllm:kv_cache_usage_perc") == {0: 0, 1: 0}
    assert metric_values(text, "vllm:request_success_total") == {0: 0, 1: 0}
    assert len(fleet.engine.tracker) == 0 and not fleet.engine.tracker.kv_load.any()
    assert fleet.engine.requests_aborted.tolist() == [1, 2]


async def test_requests_beyond_the_slots_wait(start_fleet, session):
    _, urls = await start_fleet(ranks=1, time_scale=0.2)
    body = {"prompt": "a b", "max_tokens": 200, "stream": True}
    responses = [await session.post(urls.ranks[0] + "/v1/completions", json=body)
                 for _ in range(TINY.max_num_seqs + 3)]
    await responses[TINY.max_num_seqs - 1].content.readline()  # the last one admitted has its first token
    text = await metrics(session, urls.front)
    assert metric_values(text, "vllm:num_requests_running") == {0: TINY.max_num_seqs}
    assert metric_values(text, "vllm:num_requests_waiting") == {0: 3}
    for resp in responses:
        resp.close()


# ---- timing ------------------------------------------------------------------------------------------------------
async def token_times(session, url: str, prompt: int, max_tokens: int) -> np.ndarray:
    """Arrival times of each token chunk, relative to sending the request."""
    body = {"prompt": words(prompt), "max_tokens": max_tokens, "stream": True}
    start = time.perf_counter()
    times = []
    async with session.post(url + "/v1/completions", json=body) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {"):
                times.append(time.perf_counter() - start)
    return np.array(times)


def decode_step(loads: list[int], barrier: bool) -> float:
    """The tiny preset's step time (ALGORITHMS.md section 3) with per-rank KV loads ``loads`` and no prefill."""
    m = TINY
    if barrier:
        return max(m.cw + m.a * load for load in loads) + m.b * np.mean(loads) + m.c0
    return m.cw + m.a * loads[0] + m.b * loads[0] + m.c0


@pytest.mark.wallclock
async def test_a_lone_requests_ttft_and_tpot_follow_the_step_model(start_fleet, session):
    scale = 0.5
    _, urls = await start_fleet(ranks=2, time_scale=scale)
    s, n = 20, 8
    times = await token_times(session, urls.ranks[0], s, n)
    m = TINY
    ttft = m.cw + (m.a + m.p) * s + m.b * s / 2 + m.c0  # one prefill step; the other rank idles
    gaps = [decode_step([s + j, 0], True) for j in range(1, n)]  # decode step j holds s + j tokens
    assert len(times) == n
    assert times[0] == pytest.approx(ttft * scale, abs=0.010)  # plus HTTP and the loop: a few ms
    assert times[-1] - times[0] == pytest.approx(sum(gaps) * scale, rel=0.05)


@pytest.mark.wallclock
async def test_the_barrier_makes_a_rank_wait_for_the_slowest(start_fleet, session):
    """Rank 0 holds a long prompt, rank 1 a short one: with the barrier, rank 1's decode steps last as long as rank
    0's; without it, rank 1 runs at its own pace."""
    scale = 0.5
    gaps = {}
    for barrier in (True, False):
        _, urls = await start_fleet(ranks=2, barrier=barrier, time_scale=scale)
        slow = asyncio.create_task(token_times(session, urls.ranks[0], 60, 14))
        await asyncio.sleep(0.08 * scale)  # rank 0 is decoding when rank 1's request arrives
        fast = await token_times(session, urls.ranks[1], 2, 6)
        await slow
        gaps[barrier] = float(np.mean(np.diff(fast[1:]))) / scale  # decode steps only
    assert gaps[True] == pytest.approx(decode_step([64, 5], True), rel=0.1)
    assert gaps[False] == pytest.approx(decode_step([5], False), rel=0.15)
