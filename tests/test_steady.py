"""Steady-window metrics: the window each rule picks, the figures taken over it, and agreement with an independent
computation from a simulated run's timeline."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from balanceroute.metrics import records_frame
from balanceroute.policies import make_policy
from balanceroute.sim import SimConfig, simulate
from balanceroute.sim.presets import get_preset
from balanceroute.steady import SteadyWindow, StepTrace, steady_metrics
from balanceroute.workload import synthetic


def _requests(arrival, first, finish, output):
    n = len(arrival)
    return records_frame(request_id=np.arange(n), worker=np.zeros(n, dtype=np.int64), arrival_s=arrival,
                         first_token_s=first, finish_s=finish, prompt_len=np.full(n, 10), output_len=output,
                         target_output_len=output, status="completed")


def _trace(running, *, g=2, step_s=1.0):
    """Steps of 1 s; step k has loads (10, 10 + k) on two workers, so its imbalance is k, and sampled
    ``running[k]`` tokens."""
    trace = StepTrace()
    for k, r in enumerate(running):
        kv = np.array([[10.0, 10.0 + k]])
        busy = np.array([[step_s - 0.25, step_s]])  # worker 0 waits 0.25 s at every barrier
        trace.add(np.array([k * step_s]), np.array([step_s]), kv, busy, r, r)
    assert len(trace) == len(running)
    return trace.frame()


def test_the_saturated_window_spans_first_to_last_full_step_and_averages_over_it():
    running = [1, 2, 4, 4, 3, 4, 4, 2, 1]  # all 2 x 2 slots busy at steps 2, 3, 5, 6 (step 4 dips)
    steps = _trace(running)
    requests = _requests([0.0, 0.5], [2.5, 3.0], [6.5, 9.0], [5, 5])
    out = steady_metrics(requests, steps, num_workers=2, slots_per_worker=2,
                         window=SteadyWindow(min_saturated_steps=4))
    assert out["steady_window"] == "saturated"
    assert (out["steady_window_start_s"], out["steady_window_s"]) == (2.0, 5.0)  # steps 2..6
    assert out["steady_mean_imbalance"] == pytest.approx(np.mean([2, 3, 4, 5, 6]))
    assert out["steady_saturated_fraction"] == pytest.approx(4 / 5)
    assert out["steady_barrier_idle_fraction"] == pytest.approx(0.25 / 2)
    assert out["steady_output_throughput"] == pytest.approx((4 + 4 + 3 + 4 + 4) / 5.0)
    # only the first request's decode (2.5 .. 6.5) lies inside [2, 7]: TPOT (6.5 - 2.5) / 4 = 1 s
    assert out["steady_p95_tpot_ms"] == pytest.approx(1000.0)


def test_too_few_saturated_steps_fall_back_to_the_cut_arrival_span():
    steps = _trace([4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    arrival = np.linspace(0.0, 10.0, 11)
    requests = _requests(arrival, arrival + 0.5, arrival + 1.5, np.full(11, 3))
    out = steady_metrics(requests, steps, num_workers=2, slots_per_worker=2,
                         window=SteadyWindow(warmup_fraction=0.2, cooldown_fraction=0.1, min_saturated_steps=2))
    assert out["steady_window"] == "cut"
    assert (out["steady_window_start_s"], out["steady_window_s"]) == pytest.approx((2.0, 7.0))  # [2, 9]
    assert out["steady_mean_imbalance"] == pytest.approx(np.mean(range(2, 9)))  # steps starting in [2, 9)


def test_without_a_step_trace_tokens_are_spread_over_each_request_decode():
    requests = _requests([0.0, 10.0], [0.0, 10.0], [10.0, 20.0], [11, 11])  # 11 tokens over 10 s each
    out = steady_metrics(requests, None, num_workers=1, slots_per_worker=None,
                         window=SteadyWindow(warmup_fraction=0.0, cooldown_fraction=0.5))
    # arrival span [0, 10], the last half cut: window [0, 5] holds half of request 0's tokens
    assert out["steady_window"] == "cut" and out["steady_window_s"] == 5.0
    assert out["steady_output_throughput"] == pytest.approx(5.5 / 5.0)
    assert math.isnan(out["steady_mean_imbalance"]) and math.isnan(out["steady_barrier_idle_fraction"])


@pytest.mark.parametrize("kwargs, match", [
    ({"warmup_fraction": 1.0}, r"warmup_fraction \(a fraction of the run\) must be a number in \[0, 1\), got 1.0"),
    ({"cooldown_fraction": -0.1}, r"cooldown_fraction \(a fraction of the run\) must be a number"),
    ({"warmup_fraction": 0.6, "cooldown_fraction": 0.5}, r"warmup_fraction \+ cooldown_fraction must be < 1"),
    ({"min_saturated_steps": 0}, r"min_saturated_steps must be an integer >= 1, got 0"),
])
def test_bad_window_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SteadyWindow(**kwargs)


@pytest.fixture(scope="module")
def saturated_run():
    """A small run in the papers' shape: decode-only workers, few slots, the central pool never empty."""
    preset = get_preset("qwen3_30b_a3b").with_overrides(max_num_seqs=8)
    workload = synthetic(600, rate=40.0, prompt_mean=3200, output_mean=300, prompt_sigma=0.6, output_sigma=0.8,
                         seed=1)
    config = SimConfig(num_workers=4, model=preset, dispatch="pool", prefill="disaggregated",
                       timeline_max_rows=10**6)
    return simulate(workload, make_policy("jsq"), config)


def test_steady_imbalance_agrees_with_the_timeline_over_the_all_slots_busy_steps(saturated_run):
    """The timeline (an independent record: per worker and step, KV load and running requests) gives the same
    window and the same mean imbalance."""
    result = saturated_run
    out = steady_metrics(result.requests, result.steps, num_workers=4, slots_per_worker=8)
    assert out["steady_window"] == "saturated" and out["steady_saturated_fraction"] > 0.9

    tl = result.timeline
    per_step = tl.groupby("step").agg(time_s=("time_s", "first"), running=("running", "sum"),
                                      top=("kv_load", "max"), total=("kv_load", "sum"))
    assert len(per_step) == len(result.steps)  # nothing thinned
    full = per_step.index[per_step["running"] == 4 * 8]
    inside = per_step.loc[full[0]:full[-1]]
    independent = float((4 * inside["top"] - inside["total"]).mean())
    assert out["steady_mean_imbalance"] == pytest.approx(independent, rel=1e-9)
    assert out["steady_window_start_s"] == pytest.approx(float(inside["time_s"].iloc[0]))
    # the whole-run mean, with ramp-up and drain, is a different (and here larger) number
    assert result.summary["mean_imbalance"] != pytest.approx(out["steady_mean_imbalance"], rel=0.05)


def test_steady_throughput_counts_the_tokens_generated_inside_the_window(saturated_run):
    result = saturated_run
    out = steady_metrics(result.requests, result.steps, num_workers=4, slots_per_worker=8)
    # every busy slot samples one token per step, so tokens per step equal running while the slots are full
    steps: pd.DataFrame = result.steps
    start, end = out["steady_window_start_s"], out["steady_window_start_s"] + out["steady_window_s"]
    inside = steps[(steps["start_s"] >= start) & (steps["start_s"] < end)]
    assert (inside["tokens"] <= inside["running"]).all()
    assert out["steady_output_throughput"] == pytest.approx(inside["tokens"].sum() / out["steady_window_s"])
