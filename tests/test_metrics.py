"""Metrics pinned to hand-computed cases: the record schema, vLLM-named summary keys, ITL, balance, empty runs."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balanceroute.metrics import (
    REQUEST_COLUMNS,
    BalanceAccumulator,
    Summary,
    itl_from_token_times,
    per_worker_counts,
    records_frame,
    summarize,
    weighted_percentiles,
)
from balanceroute.results import jsonable

NAN = math.nan


@pytest.fixture
def run() -> pd.DataFrame:
    """Five requests: three completed (one with a single output token), one failed, one unfinished.

    completed: TTFT 0.5, 0.1, 0.3 s; E2EL 2.5, 0.1, 2.3 s; TPOT (2.5-0.5)/4 = 0.5 and (2.3-0.3)/2 = 1.0 s
    (request 1 has one output token: no TPOT). Duration = last finish 4.3 - first arrival 0.
    """
    return records_frame(
        request_id=[0, 1, 2, 3, 4],
        worker=[0, 1, 0, -1, 1],
        arrival_s=[0.0, 1.0, 2.0, 3.0, 4.0],
        first_token_s=[0.5, 1.1, 2.3, NAN, 4.2],
        finish_s=[2.5, 1.1, 4.3, 3.5, NAN],
        prompt_len=[100, 10, 50, 70, 30],
        output_len=[5, 1, 3, 0, 2],
        target_output_len=[5, 1, 3, 8, 9],
        status=["completed", "completed", "completed", "failed", "unfinished"],
        error=["", "", "", "timeout", ""],
        preemptions=[2, 0, 0, 0, 1],
    )


# ---- records ----------------------------------------------------------------------------------------------------

def test_records_frame_schema_and_defaults():
    df = records_frame(request_id=[0, 1], arrival_s=[0.0, 1.0], prompt_len=[3, 4], output_len=[1, 0],
                       target_output_len=[1, 2], status=["completed", "unfinished"])
    assert tuple(df.columns) == REQUEST_COLUMNS
    assert df["worker"].tolist() == [-1, -1] and df["preemptions"].tolist() == [0, 0]
    assert df["error"].tolist() == ["", ""] and df["first_token_s"].isna().all()
    assert df["request_id"].dtype == np.int64 and df["arrival_s"].dtype == np.float64
    assert isinstance(df["status"].dtype, pd.CategoricalDtype)
    assert list(df["status"].cat.categories) == ["completed", "failed", "unfinished"]
    assert len(records_frame(request_id=[], arrival_s=[], prompt_len=[], output_len=[], target_output_len=[],
                             status=[])) == 0


@pytest.mark.parametrize("kwargs, needle", [
    ({"status": ["done", "completed"]}, r"status 'done' \(row 0\) is not valid"),
    ({"colour": [1, 2]}, r"unknown request column\(s\) \['colour'\]"),
    ({"prompt_len": [1, 2, 3]}, "different lengths"),
])
def test_records_frame_rejects_bad_input(kwargs, needle):
    base = {"request_id": [0, 1], "arrival_s": [0.0, 1.0], "prompt_len": [3, 4], "output_len": [1, 1],
            "target_output_len": [1, 1], "status": ["completed", "completed"]}
    with pytest.raises(ValueError, match=needle):
        records_frame(**{**base, **kwargs})
    with pytest.raises(ValueError, match=r"missing request column\(s\) \['status'\]"):
        records_frame(**{k: v for k, v in base.items() if k != "status"})


def test_records_roundtrip_parquet(tmp_path, run):
    run.to_parquet(tmp_path / "r.parquet")
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert jsonable(summarize(back).as_dict()) == jsonable(summarize(run).as_dict())  # parquet keeps float64 exactly


# ---- summary ----------------------------------------------------------------------------------------------------

def test_summary_counts_and_throughput(run):
    s = summarize(run, num_workers=3)
    assert isinstance(s, Summary)
    assert (s.completed, s.failed, s.unfinished, s.num_requests) == (3, 1, 1, 5)
    assert s.duration == pytest.approx(4.3)
    assert s.total_input_tokens == 160 and s.total_output_tokens == 9  # completed requests only
    assert s.request_throughput == pytest.approx(3 / 4.3)
    assert s.output_throughput == pytest.approx(9 / 4.3)
    assert s.total_token_throughput == pytest.approx(169 / 4.3)
    assert s.request_goodput is None
    assert s.max_concurrent_requests == 2
    assert s.preemptions == 3
    assert s.num_workers == 3
    assert s.worker_requests == [2, 2, 0]
    assert s.worker_prompt_tokens == [150, 40, 0]
    assert s.worker_output_tokens == [8, 3, 0]  # generated tokens, unfinished request included


def test_summary_record_keys_in_vllm_order_then_balance(run):
    """as_dict is result.json: vLLM's keys in its order, each latency expanded, the balance keys last."""
    acc = BalanceAccumulator(2)
    acc.add_step(np.array([1.0, 3.0]), np.array([1.0, 2.0]))
    record = summarize(run, balance=acc.summary()).as_dict()
    latency = [f"{stat}_{metric}_ms" for metric in ("ttft", "tpot", "itl", "e2el")
               for stat in ("mean", "median", "std", "p50", "p90", "p95", "p99")]
    assert list(record) == [
        "duration", "completed", "failed", "unfinished", "num_requests", "total_input_tokens",
        "total_output_tokens", "request_throughput", "request_goodput", "output_throughput",
        "total_token_throughput", "max_concurrent_requests", *latency, "preemptions", "num_workers",
        "worker_requests", "worker_prompt_tokens", "worker_output_tokens",
        "num_steps", "mean_imbalance", "mean_spread", "mean_kv_load", "barrier_idle_fraction"]
    assert record["num_workers"] == 2 and record["mean_imbalance"] == 2


def test_summary_latency_statistics_by_hand(run):
    s = summarize(run, duration_s=10.0)
    assert s.duration == 10.0 and s.request_throughput == pytest.approx(0.3)
    assert (s.ttft.mean_ms, s.tpot.std_ms, s.e2el.percentiles_ms["p90"]) == pytest.approx((300, 250, 2460))
    s = s.as_dict()
    expected = {
        # TTFT [0.5, 0.1, 0.3] s; sorted, p90 sits at virtual index 0.9*2 = 1.8: 0.3 + 0.8*0.2
        "mean_ttft_ms": 300, "median_ttft_ms": 300, "std_ttft_ms": 1000 * math.sqrt(0.08 / 3),
        "p90_ttft_ms": 460, "p95_ttft_ms": 480, "p99_ttft_ms": 496,
        # TPOT [0.5, 1.0] s (the one-token request is excluded)
        "mean_tpot_ms": 750, "median_tpot_ms": 750, "std_tpot_ms": 250, "p90_tpot_ms": 950, "p99_tpot_ms": 995,
        # E2EL [2.5, 0.1, 2.3] s
        "mean_e2el_ms": 4900 / 3, "median_e2el_ms": 2300, "p90_e2el_ms": 2460, "p50_e2el_ms": 2300,
    }
    for key, value in expected.items():
        assert s[key] == pytest.approx(value), key
    assert math.isnan(s["mean_itl_ms"]) and math.isnan(s["p99_itl_ms"])  # no ITL samples given


def test_summary_percentile_keys_follow_vllm(run):
    s = summarize(run, percentiles=(99.9, 25)).as_dict()
    assert "p99.9_ttft_ms" in s and "p25_e2el_ms" in s and "p99_ttft_ms" not in s
    for metric in ("ttft", "tpot", "itl", "e2el"):
        assert {f"mean_{metric}_ms", f"median_{metric}_ms", f"std_{metric}_ms"} <= s.keys()


def test_tpot_undefined_when_every_output_is_one_token():
    df = records_frame(request_id=[0, 1], arrival_s=[0.0, 0.0], first_token_s=[1.0, 2.0], finish_s=[1.0, 2.0],
                       prompt_len=[5, 5], output_len=[1, 1], target_output_len=[1, 1], status="completed")
    s = summarize(df)
    assert math.isnan(s.tpot.mean_ms) and s.ttft.mean_ms == pytest.approx(1500)


def test_goodput_by_hand(run):
    # TTFT SLO 350 ms passes requests 1 and 2; TPOT SLO 800 ms fails request 2 (1.0 s); request 1 has one
    # token, so its TPOT counts as 0 (vLLM): one good request.
    s = summarize(run, goodput_slo_ms={"ttft": 350, "tpot": 800})
    assert s.request_goodput == pytest.approx(1 / 4.3)
    assert summarize(run, goodput_slo_ms={"e2el": 2400}).request_goodput == pytest.approx(2 / 4.3)
    with pytest.raises(ValueError, match="valid: \\['ttft', 'tpot', 'e2el'\\]"):
        summarize(run, goodput_slo_ms={"itl": 10})


def test_itl_weighted_equals_expanded(run):
    rng = np.random.default_rng(0)
    values = rng.exponential(0.03, 400)
    weights = rng.integers(0, 6, 400)
    weighted = summarize(run, itl_s=values, itl_weights=weights, percentiles=(1, 33.3, 50, 90, 95, 99)).itl
    expanded = summarize(run, itl_s=np.repeat(values, weights), percentiles=(1, 33.3, 50, 90, 95, 99)).itl
    assert list(weighted.percentiles_ms) == ["p1", "p33.3", "p50", "p90", "p95", "p99"]
    assert weighted.median_ms == expanded.median_ms
    assert weighted.percentiles_ms == expanded.percentiles_ms  # exact: same arithmetic as np.percentile
    assert weighted.mean_ms == pytest.approx(expanded.mean_ms, rel=1e-12)
    assert weighted.std_ms == pytest.approx(expanded.std_ms, rel=1e-12)
    plain = summarize(run, itl_s=values).itl
    assert plain.percentiles_ms["p99"] == pytest.approx(np.percentile(values, 99) * 1000)
    assert plain.std_ms == pytest.approx(np.std(values) * 1000)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6, allow_nan=False), st.integers(0, 5)), min_size=1, max_size=40),
       st.lists(st.floats(0, 100), min_size=1, max_size=5))
def test_weighted_percentiles_match_numpy_on_expanded_samples(pairs, percentiles):
    values = np.array([v for v, _ in pairs])
    weights = np.array([w for _, w in pairs])
    got = weighted_percentiles(values, weights, percentiles)
    if weights.sum() == 0:
        assert np.isnan(got).all()
    else:
        np.testing.assert_array_equal(got, np.percentile(np.repeat(values, weights), percentiles))


@pytest.mark.parametrize("weights, needle", [
    (np.array([1, -1]), "non-negative integers"), (np.array([1.5, 1]), "non-negative integers"),
    (np.array([1, 1, 1]), "must match"),
])
def test_itl_weight_validation(run, weights, needle):
    with pytest.raises(ValueError, match=needle):
        summarize(run, itl_s=np.array([0.1, 0.2]), itl_weights=weights)


def test_itl_from_token_times():
    gaps = itl_from_token_times([np.array([]), np.array([0.0, 0.1, 0.3]), np.array([5.0]), np.array([]),
                                 np.array([1.0, 1.5])])
    np.testing.assert_allclose(gaps, [0.1, 0.2, 0.5])
    assert itl_from_token_times([]).size == 0 and itl_from_token_times([np.array([3.0])]).size == 0


def test_empty_and_all_failed_runs_do_not_crash():
    empty = records_frame(request_id=[], arrival_s=[], prompt_len=[], output_len=[], target_output_len=[],
                          status=[])
    s = summarize(empty)
    assert s.completed == 0 and s.failed == 0 and math.isnan(s.duration)
    assert math.isnan(s.request_throughput) and math.isnan(s.ttft.mean_ms)
    assert s.worker_requests == [] and s.max_concurrent_requests == 0
    json.dumps(jsonable(s.as_dict()), allow_nan=False)  # strict JSON: NaN became null

    failed = records_frame(request_id=[0, 1], worker=[0, 1], arrival_s=[0.0, 1.0], finish_s=[2.0, 3.0],
                           prompt_len=[4, 4], output_len=[0, 0], target_output_len=[4, 4], status="failed",
                           error=["http_503", "connection_refused"])
    s = summarize(failed, goodput_slo_ms={"ttft": 100})
    assert (s.completed, s.failed, s.duration) == (0, 2, 3.0)
    assert s.request_throughput == 0.0 and s.request_goodput == 0.0 and math.isnan(s.e2el.percentiles_ms["p99"])


def test_summary_input_validation(run):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['status'\]"):
        summarize(run.drop(columns="status"))
    odd = run.assign(status=run["status"].astype(object).replace("failed", "crashed"))
    with pytest.raises(ValueError, match=r"unknown request status\(es\) \['crashed'\]"):
        summarize(odd)
    with pytest.raises(ValueError, match="percentiles"):
        summarize(run, percentiles=(101,))
    with pytest.raises(ValueError, match="num_workers=1"):
        summarize(run, num_workers=1)


# ---- balance ----------------------------------------------------------------------------------------------------

def test_balance_by_hand():
    acc = BalanceAccumulator(3)
    # step 1: L = [1, 2, 3] -> I = 3*3 - 6 = 3, spread 2; local times [1, 2, 3], step 4 -> idle 12 - 6 = 6
    acc.add_step(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]), 4.0)
    # step 2: L = [4, 4, 4] -> I = 0, spread 0; times [2, 2, 2], step defaults to max = 2 -> idle 0
    acc.add_step(np.array([4, 4, 4]), np.array([2.0, 2.0, 2.0]))
    assert acc.summary() == {"num_workers": 3, "num_steps": 2, "mean_imbalance": 1.5, "mean_spread": 1.0,
                             "mean_kv_load": 3.0, "barrier_idle_fraction": pytest.approx(6 / (3 * 6))}


def test_balance_across_blocks_matches_direct_computation():
    rng = np.random.default_rng(1)
    loads, times = rng.uniform(0, 100, (37, 4)), rng.uniform(0.5, 1, (37, 4))
    acc = BalanceAccumulator(4, block=5)
    for k in range(37):
        acc.add_step(loads[k], times[k] if k % 2 else None)
    s = acc.summary()
    assert s["num_steps"] == 37
    assert s["mean_imbalance"] == pytest.approx(np.mean(4 * loads.max(1) - loads.sum(1)))
    assert s["mean_spread"] == pytest.approx(np.mean(loads.max(1) - loads.min(1)))
    t = times[1::2]
    assert s["barrier_idle_fraction"] == pytest.approx(np.sum(t.max(1)[:, None] - t) / (4 * t.max(1).sum()))


def test_balance_without_times_and_without_steps():
    acc = BalanceAccumulator(2)
    s = acc.summary()
    assert s["num_steps"] == 0 and math.isnan(s["mean_imbalance"]) and "barrier_idle_fraction" not in s
    acc.add_step(np.array([0, 10]))
    assert "barrier_idle_fraction" not in acc.summary() and acc.summary()["mean_imbalance"] == 10


def test_balance_rejects_bad_steps():
    acc = BalanceAccumulator(2, block=4)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        acc.add_step(np.zeros(3))
    with pytest.raises(ValueError, match="needs local_time_s"):
        acc.add_step(np.zeros(2), step_time_s=1.0)
    acc.add_step(np.zeros(2), np.array([1.0, 2.0]), 1.5)
    with pytest.raises(ValueError, match="step 0: step_time_s=1.5 is shorter"):
        acc.summary()
    with pytest.raises(ValueError, match="num_workers"):
        BalanceAccumulator(0)


def test_summary_merges_balance_and_sizes_worker_lists(run):
    acc = BalanceAccumulator(4)
    acc.add_step(np.array([1, 1, 1, 5]))
    s = summarize(run, balance=acc.summary())
    assert s.balance["mean_imbalance"] == 12 and s.num_workers == 4 and s.worker_requests == [2, 2, 0, 0]
    with pytest.raises(ValueError, match=r"balance keys \['completed'\] clash"):
        summarize(run, balance={"completed": 1})
    with pytest.raises(ValueError, match=r"balance keys \['p99_ttft_ms'\] clash"):
        replace(s, balance={"p99_ttft_ms": 1.0})  # the check belongs to the type, however it is built
    assert per_worker_counts(run) == {"worker_requests": [2, 2], "worker_prompt_tokens": [150, 40],
                                      "worker_output_tokens": [8, 3]}


def test_add_steps_equals_one_add_step_per_row():
    """The simulator's batched feed must give exactly the per-step accounting, across block boundaries."""
    rng = np.random.default_rng(3)
    g, k = 4, 50
    loads = rng.integers(0, 1000, size=(k, g)).astype(float)
    local = rng.uniform(0.01, 0.02, size=(k, g))
    step = local.max(axis=1) + rng.uniform(0, 0.005, size=k)
    one, batched = BalanceAccumulator(g, block=16), BalanceAccumulator(g, block=16)
    for row in range(k):
        one.add_step(loads[row], local[row], float(step[row]))
    batched.add_steps(loads[:7], local[:7], step[:7])
    batched.add_steps(loads[7:], local[7:], step[7:])
    assert batched.summary() == pytest.approx(one.summary())
    with pytest.raises(ValueError, match="shape"):
        batched.add_steps(loads[:, :2], local[:, :2], step)
