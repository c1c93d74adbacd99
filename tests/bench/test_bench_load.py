"""Load generation against a server with known timing: TTFT/TPOT, arrival schedule, concurrency, warm-up."""
from __future__ import annotations

import numpy as np
import pytest

from balanceroute.bench import run_benchmark
from balanceroute.metrics import REQUEST_COLUMNS
from balanceroute.workload import synthetic
from tests.support.bench import make_workload

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


# Bounds: the server schedules chunks on absolute deadlines, so a chunk is never early and a late one (a loaded
# machine) does not delay the next; TPOT = (E2EL - TTFT) / (n - 1) then moves by at most lateness / (n - 1).
# Upper bounds allow ~25 ms of scheduling delay on a busy CI machine. (In chat streams the server sends the
# role-only chunk at once: a client taking it for the first token would see TTFT ~0.)
@pytest.mark.wallclock
@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
async def test_ttft_tpot_itl_match_the_servers_timing(server_factory, path):
    srv = await server_factory(ttft_s=0.1, tpot_s=0.02)
    res = await run_benchmark(srv.url + path, make_workload(8, output_len=11, gap_s=0.02), model="m")
    s = res.summary
    assert s["completed"] == 8 and s["failed"] == 0
    assert 100 <= s["mean_ttft_ms"] <= 125
    assert 18 <= s["mean_tpot_ms"] <= 22
    assert s["mean_itl_ms"] == pytest.approx(s["mean_tpot_ms"])
    assert 19 <= s["median_itl_ms"] <= 22
    assert 300 <= s["mean_e2el_ms"] <= 325  # 100 + 10 x 20


@pytest.mark.wallclock
async def test_bundled_chunks_keep_tpot_and_spread_itl(server_factory):
    srv = await server_factory(ttft_s=0.02, tpot_s=0.01, tokens_per_chunk=3)
    res = await run_benchmark(srv.url + COMPLETIONS, make_workload(4, output_len=10), model="m")
    s = res.summary
    # chunks of 3, 3, 3, 1 tokens at 40, 70, 100, 110 ms: TTFT 40 ms, TPOT (110 - 40) / 9; the tokens of a later
    # chunk are 10 ms apart (spread over its 30 ms gap), the first chunk's 3 tokens arrive together
    assert 40 <= s["mean_ttft_ms"] <= 65
    assert 70 / 9 - 2.5 <= s["mean_tpot_ms"] <= 70 / 9 + 2.5
    assert s["mean_itl_ms"] == pytest.approx(s["mean_tpot_ms"])
    assert 8 <= s["median_itl_ms"] <= 12 and s["p99_itl_ms"] < 25  # chunk gaps would be 30 ms


async def test_requests_leave_on_the_poisson_schedule(server):
    wl = synthetic(150, rate=300.0, distribution="constant", prompt_mean=8, output_mean=2, seed=3)
    res = await run_benchmark(server.url + COMPLETIONS, wl, model="m")
    req = res.requests
    assert res.summary["completed"] == 150
    np.testing.assert_allclose(req["scheduled_s"], wl.arrival_s - wl.arrival_s[0])
    lateness = req["lateness_s"].to_numpy()
    assert np.all(lateness >= 0)  # never early
    # how late requests leave is a timing figure: benchmarks/bench_client_capacity.py measures it; here only
    # that the send order follows the schedule
    assert np.all(np.diff(req.sort_values("scheduled_s")["arrival_s"].to_numpy()) >= 0)
    np.testing.assert_allclose(req["arrival_s"] - req["lateness_s"], req["scheduled_s"])
    assert res.summary["p99_arrival_error_ms"] == pytest.approx(np.percentile(lateness, 99) * 1000)
    assert req["queue_s"].eq(0).all()  # no concurrency limit: nobody waits for a slot


async def test_arrivals_are_shifted_to_start_the_run(server):
    wl = make_workload(3, gap_s=0.01).with_arrivals(np.array([100.0, 100.01, 100.02]))
    res = await run_benchmark(server.url + COMPLETIONS, wl, model="m")
    np.testing.assert_allclose(res.requests["scheduled_s"], [0.0, 0.01, 0.02])
    assert res.summary["duration"] < 1


async def test_max_concurrency_bounds_requests_in_flight(server_factory):
    srv = await server_factory(ttft_s=0.03)
    res = await run_benchmark(srv.url + COMPLETIONS, make_workload(9, output_len=2), model="m", max_concurrency=3)
    req = res.requests
    s = res.summary
    assert s["completed"] == 9 and s["max_concurrent_requests"] == 3
    assert req["queue_s"].iloc[3:].min() > 0.02  # requests 3.. waited for a slot
    assert s["p99_client_queue_time_ms"] > 50  # the third wave waited for two earlier ones
    assert s["max_concurrency"] == 3


async def test_warm_up_requests_are_sent_but_not_recorded(server):
    res = await run_benchmark(server.url + COMPLETIONS, make_workload(4), model="m", warmup=2)
    assert len(server.bodies) == 6
    assert res.requests["request_id"].tolist() == [0, 1, 2, 3]
    assert res.summary["num_requests"] == 4 and res.summary["num_warmups"] == 2


async def test_records_have_the_shared_columns_and_consistent_times(server_factory):
    srv = await server_factory(ttft_s=0.01, tpot_s=0.002)
    res = await run_benchmark(srv.url + CHAT, make_workload(5, output_len=4, gap_s=0.005), model="m")
    req = res.requests
    assert list(req.columns[: len(REQUEST_COLUMNS)]) == list(REQUEST_COLUMNS)
    assert (req["arrival_s"] < req["first_token_s"]).all() and (req["first_token_s"] < req["finish_s"]).all()
    last_token = np.array([t[-1] for t in res.token_times])
    np.testing.assert_allclose(last_token, req["finish_s"])
    np.testing.assert_allclose([t[0] for t in res.token_times], req["first_token_s"])


async def test_same_seed_same_prompts_other_seed_other_prompts(server):
    wl = make_workload(3)
    for seed in (1, 1, 2):
        await run_benchmark(server.url + COMPLETIONS, wl, model="m", seed=seed)
    prompts = [b["prompt"] for b in server.bodies]
    assert prompts[0:3] == prompts[3:6] and prompts[0:3] != prompts[6:9]


@pytest.mark.parametrize("kwargs, match", [
    ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
    ({"warmup": -1}, "warmup must be an integer >= 0"),
    ({"timeout_s": 0}, "timeout_s must be a number > 0"),
])
async def test_bad_options_raise_one_clear_error(server, kwargs, match):
    with pytest.raises(ValueError, match=match):
        await run_benchmark(server.url + COMPLETIONS, make_workload(1), model="m", **kwargs)
