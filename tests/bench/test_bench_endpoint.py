"""One request's protocol: request bodies, SSE parsing, exact token counts and per-token times."""
from __future__ import annotations

import numpy as np
import pytest

from balanceroute.bench import benchmark, endpoint_kind, run_benchmark
from balanceroute.bench.endpoint import build_payload, token_times
from tests.support.bench import make_workload

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


# ---- token time attribution -------------------------------------------------------------------------------------
def test_one_token_per_chunk_gives_the_chunk_times():
    times = np.array([1.0, 1.5, 1.75])
    assert token_times(times, np.array([1, 1, 1]), 3).tolist() == times.tolist()
    assert token_times(times, None, 3).tolist() == times.tolist()


def test_first_chunk_tokens_arrive_together_later_chunks_are_spread_over_their_gap():
    # chunk 0 holds 2 tokens at t=1; chunk 1 holds 4 tokens arriving at t=3 (gap 2 s -> 0.5 s per token)
    got = token_times(np.array([1.0, 3.0]), np.array([2, 4]), 6)
    assert got.tolist() == [1.0, 1.0, 1.5, 2.0, 2.5, 3.0]


def test_unknown_per_chunk_counts_spread_the_total_with_at_least_one_token_in_the_first_chunk():
    got = token_times(np.array([1.0, 2.0, 3.0]), None, 7)  # cumulative ceil(7/3*i) = 3, 5, 7
    assert got.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.5, 2.0, 2.5, 3.0])
    assert token_times(np.array([1.0, 2.0, 3.0]), None, 2).tolist() == [1.0, 2.0]  # fewer tokens than chunks


def test_no_chunks_or_no_tokens_give_no_times():
    assert token_times(np.array([]), None, 5).size == 0
    assert token_times(np.array([1.0]), None, 0).size == 0


# ---- endpoint and body ------------------------------------------------------------------------------------------
def test_endpoint_kind_from_the_full_url():
    assert endpoint_kind("http://h:1/v1/completions") == "openai"
    assert endpoint_kind("http://h:1/v1/chat/completions/") == "openai-chat"
    with pytest.raises(ValueError, match=r"'http://h:1/v1'.*/v1/completions or /v1/chat/completions"):
        endpoint_kind("http://h:1/v1")


def test_payloads_follow_each_api_and_the_vllm_switches():
    import json
    chat = json.loads(build_payload("openai-chat", "m", "hi", 7, stream=True, ignore_eos=True,
                                    continuous_usage=True))
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and chat["max_completion_tokens"] == 7
    assert chat["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert chat["ignore_eos"] is True
    plain = json.loads(build_payload("openai", "m", "hi", 7, stream=False, ignore_eos=False,
                                     continuous_usage=True, extra_body={"temperature": 0}))
    assert plain == {"model": "m", "prompt": "hi", "max_tokens": 7, "stream": False, "temperature": 0}


# ---- against the test server ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
async def test_streaming_counts_tokens_exactly_and_sends_the_trace_lengths(server, path):
    wl = make_workload(5, output_len=12)
    res = await run_benchmark(server.url + path, wl, model="test-model")
    req = res.requests
    assert (req["status"] == "completed").all()
    assert req["output_len"].tolist() == [12] * 5
    assert (req["token_count_source"] == "usage").all() and res.summary["token_count_source"] == "usage"
    assert [len(t) for t in res.token_times] == [12] * 5
    assert res.summary["total_output_tokens"] == 60
    for body in server.bodies:
        assert body["ignore_eos"] is True and body["stream"] is True
        assert body.get("max_tokens", body.get("max_completion_tokens")) == 12
    # prompt lengths are the server's usage count (the test server counts words)
    assert req["prompt_len"].tolist() == [16] * 5


async def test_bundled_tokens_are_counted_from_continuous_usage(server_factory):
    srv = await server_factory(tokens_per_chunk=4, tpot_s=0.002)
    res = await run_benchmark(srv.url + COMPLETIONS, make_workload(3, output_len=10), model="m")
    req = res.requests
    assert req["output_len"].tolist() == [10, 10, 10]
    assert req["num_chunks"].tolist() == [3, 3, 3]  # 4 + 4 + 2 tokens
    assert all(len(t) == 10 and np.all(np.diff(t) >= 0) for t in res.token_times)


async def test_without_usage_the_count_falls_back_to_chunks_and_says_so(server_factory):
    srv = await server_factory(usage=False)
    res = await run_benchmark(srv.url + CHAT, make_workload(3, output_len=6), model="m")
    assert res.requests["output_len"].tolist() == [6, 6, 6]  # one token per chunk; the role chunk not counted
    assert (res.requests["token_count_source"] == "chunks").all()
    assert res.summary["token_count_source"] == "chunks"


async def test_without_ignore_eos_the_server_may_stop_early(server_factory):
    srv = await server_factory(eos_after=3)
    res = await run_benchmark(srv.url + COMPLETIONS, make_workload(2, output_len=10), model="m", ignore_eos=False)
    assert res.requests["output_len"].tolist() == [3, 3]
    assert res.requests["target_output_len"].tolist() == [10, 10]
    assert all("ignore_eos" not in b for b in srv.bodies)


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
async def test_non_streaming_measures_end_to_end_latency_only(server_factory, path):
    srv = await server_factory(ttft_s=0.02, tpot_s=0.005)
    res = await run_benchmark(srv.url + path, make_workload(3, output_len=5), model="m", stream=False,
                              save_texts=True)
    s = res.summary
    assert s["completed"] == 3 and s["total_output_tokens"] == 15
    assert s["mean_ttft_ms"] != s["mean_ttft_ms"]  # NaN: no first-token time without streaming
    assert 40 <= s["mean_e2el_ms"] < 80  # 20 ms + 4 x 5 ms
    assert res.texts == [" t0 t1 t2 t3 t4"] * 3


async def test_worker_header_is_recorded(server_factory):
    srv = await server_factory(headers={"x-worker": "3"})
    res = await run_benchmark(srv.url + COMPLETIONS, make_workload(2), model="m", worker_header="x-worker")
    assert res.requests["worker"].tolist() == [3, 3]
    assert res.summary["worker_requests"] == [0, 0, 0, 2]


async def test_requests_carry_ids_a_server_log_can_be_joined_on(server_factory):
    srv = await server_factory()
    res = await run_benchmark(srv.url + COMPLETIONS, make_workload(3), model="m", warmup=1, request_id_prefix="run7")
    assert sorted(srv.handler.request_ids) == ["run7-0", "run7-1", "run7-2", "run7-warmup-0"]
    assert res.summary["request_id_prefix"] == "run7"
    again = await run_benchmark(srv.url + COMPLETIONS, make_workload(1), model="m")
    assert again.summary["request_id_prefix"] != res.summary["request_id_prefix"]  # random per run
    assert srv.handler.request_ids[-1] == again.summary["request_id_prefix"] + "-0"


def test_sync_wrapper_runs_in_its_own_loop():
    import asyncio

    from tests.support.openai_server import serve

    async def with_server():
        async with serve() as srv:
            return srv.url
    # the sync wrapper cannot share a loop with a server fixture, so it meets a closed port here: a result
    url = asyncio.run(with_server())
    res = benchmark(url + COMPLETIONS, make_workload(2), model="m", timeout_s=5)
    assert res.summary["failed"] == 2 and set(res.requests["error"]) == {"connection_refused"}
