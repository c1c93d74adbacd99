"""Faults are results: every failure is counted under its error class and the run goes on."""
from __future__ import annotations

import collections
import socket

import pytest

from balanceroute.bench import run_benchmark
from tests.support.bench import make_workload
from tests.support.waiting import wait_for

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
FAULTS = {"http_429": "http_429", "http_500": "http_500", "http_400": "http_400", "timeout": "timeout",
          "malformed": "malformed_sse", "bad_choice": "malformed_sse", "disconnect": "disconnected",
          "error_event": "server_error"}


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
async def test_each_fault_is_classified_and_the_other_requests_complete(server_factory, path):
    srv = await server_factory(tpot_s=0.001)
    prompts = [f"hello FAULT={f}" for f in FAULTS] + ["hello world"] * 3
    wl = make_workload(len(prompts), output_len=6, gap_s=0.002, prompts=prompts)
    res = await run_benchmark(srv.url + path, wl, model="m", timeout_s=0.5)
    req = res.requests.set_index("request_id")
    for i, expected in enumerate(FAULTS.values()):
        assert req.loc[i, "status"] == "failed" and req.loc[i, "error"] == expected, (i, req.loc[i].to_dict())
    assert (req["status"].iloc[len(FAULTS):] == "completed").all()
    s = res.summary
    assert s["completed"] == 3 and s["failed"] == len(FAULTS)
    assert s["error_counts"] == dict(collections.Counter(FAULTS.values()))
    assert s["total_output_tokens"] == 18  # failed requests add nothing, as in vLLM
    assert "injected http_429" in req.loc[0, "error_detail"]


async def test_non_streaming_faults(server):
    prompts = ["FAULT=malformed", "FAULT=bad_choice", "FAULT=http_503", "fine"]
    res = await run_benchmark(server.url + CHAT, make_workload(4, prompts=prompts), model="m", stream=False)
    assert res.requests["error"].tolist() == ["malformed_response", "malformed_response", "http_503", ""]
    assert res.requests["token_count_source"].tolist() == ["none", "none", "none", "usage"]


async def test_a_stream_cut_mid_way_keeps_what_arrived(server_factory):
    srv = await server_factory(tpot_s=0.001)
    res = await run_benchmark(srv.url + COMPLETIONS, make_workload(1, output_len=8, prompts=["FAULT=disconnect"]),
                              model="m")
    row = res.requests.iloc[0]
    assert row["error"] == "disconnected" and row["num_chunks"] == 2 and row["first_token_s"] < row["finish_s"]


async def test_timeout_is_per_request_and_bounds_the_run(server_factory):
    srv = await server_factory()
    res = await run_benchmark(srv.url + COMPLETIONS,
                              make_workload(3, prompts=["FAULT=timeout", "FAULT=timeout", "ok"]), model="m",
                              timeout_s=0.3)
    assert res.requests["error"].tolist() == ["timeout", "timeout", ""]
    assert res.summary["duration"] < 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_connection_refused_is_a_result():
    res = await run_benchmark(f"http://127.0.0.1:{_closed_port()}{COMPLETIONS}", make_workload(4, gap_s=0.001),
                              model="m")
    s = res.summary
    assert s["completed"] == 0 and s["failed"] == 4 and s["error_counts"] == {"connection_refused": 4}
    assert s["mean_ttft_ms"] != s["mean_ttft_ms"] and s["output_throughput"] == 0


async def test_stop_event_marks_in_flight_requests_unfinished(server_factory):
    import asyncio
    srv = await server_factory(tpot_s=0.05)
    stop = asyncio.Event()
    wl = make_workload(20, output_len=50, gap_s=0.05)
    task = asyncio.create_task(run_benchmark(srv.url + COMPLETIONS, wl, model="m", stop=stop))
    await wait_for(lambda: srv.handler.served >= 3, what="three requests at the server")
    stop.set()
    res = await asyncio.wait_for(task, 5)
    s = res.summary
    assert s["interrupted"] is True and res.interrupted
    assert 3 <= s["num_sent"] < 20 and s["unfinished"] == s["num_sent"] and s["completed"] == 0
    assert (res.requests["status"] == "unfinished").all()
    assert res.requests["output_len"].max() > 0  # progress of the cancelled streams is kept


async def test_a_stalled_run_is_ended_by_the_watchdog_and_says_so(server_factory):
    """The server takes every request and never answers: the run ends once nothing finished for the stall
    timeout, not after the 600 s per-request timeout."""
    srv = await server_factory()
    wl = make_workload(3, prompts=["FAULT=timeout"] * 3)
    res = await run_benchmark(srv.url + COMPLETIONS, wl, model="m", stall_timeout_s=0.3)
    s = res.summary
    assert s["stalled"] is True and s["interrupted"] is True
    assert s["num_sent"] == 3 and s["unfinished"] == 3 and s["completed"] == 0


async def test_a_run_that_keeps_finishing_requests_is_not_stalled(server_factory):
    srv = await server_factory(tpot_s=0.01)
    res = await run_benchmark(srv.url + COMPLETIONS, make_workload(6, output_len=20, gap_s=0.05), model="m",
                              stall_timeout_s=5.0)
    assert res.summary["stalled"] is False and res.summary["completed"] == 6
