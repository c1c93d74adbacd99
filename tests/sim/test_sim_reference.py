"""Batched stretches against the per-step reference loop (``SimConfig(max_span=1)``).

The simulator schedules a step and times the pure decode steps that follow it in one go; with ``max_span=1`` it
schedules and times every step on its own, the plain loop the step model describes. The two must give the same
run: every count equal, every time and time statistic equal up to float rounding (the stretch sums its step
times in another order), bounded here by 1e-9 relative — the bound SimConfig documents.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sim_helpers import random_workload

from balanceroute.policies import make_policy
from balanceroute.sim import SimConfig, simulate
from balanceroute.sim.group import StepGroup
from balanceroute.sim.presets import TINY
from balanceroute.sim.step_model import StepModel
from balanceroute.workload import load_azure_trace

TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "azure_llm_2023_conv.csv"
RTOL = 1e-9
SKIP = {"sim_wall_time_s"}

CASES = {
    "colocated": {"policy": "jsq_load", "config": {}},
    "disaggregated": {"policy": "br0", "config": {"prefill": "disaggregated"}},
    "pool": {"policy": "br0", "config": {"dispatch": "pool"}},
    "pool_disaggregated": {"policy": "bf_io", "config": {"dispatch": "pool", "prefill": "disaggregated"}},
    "no_barrier": {"policy": "vllm_default", "config": {"barrier": False}},
    "preempting": {"policy": "round_robin", "config": {"model": TINY.with_overrides(kv_capacity_tokens=256),
                                                       "timeout_s": 10.0}, "rate": 2.0},
}


def both(wl, policy: str, **config):
    """The run batched and step by step."""
    config = {"num_workers": 3, "model": "tiny", **config}
    return (simulate(wl, make_policy(policy), SimConfig(**config)),
            simulate(wl, make_policy(policy), SimConfig(**config, max_span=1)))


def assert_same_run(batched, reference) -> None:
    a, b = batched.summary, reference.summary
    assert set(a) == set(b)
    for key in sorted(set(a) - SKIP):
        x, y = a[key], b[key]
        if isinstance(x, float) or isinstance(y, float):
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=RTOL, abs=1e-12), key
        else:
            assert x == y, key
    pd.testing.assert_frame_equal(batched.requests, reference.requests, check_exact=False, rtol=RTOL)
    pd.testing.assert_frame_equal(batched.timeline, reference.timeline, check_exact=False, rtol=RTOL)
    if batched.steps is None:
        assert reference.steps is None
    else:
        pd.testing.assert_frame_equal(batched.steps, reference.steps, check_exact=False, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_stretches_match_the_per_step_loop(case):
    spec = CASES[case]
    wl = random_workload(300, seed=4, rate=spec.get("rate", 1.0))
    batched, reference = both(wl, spec["policy"], **spec["config"])
    if case == "preempting":
        assert batched.summary["preemptions"] > 0 and batched.summary["failed"] > 0
    else:
        assert batched.summary["completed"] == len(wl)
    assert_same_run(batched, reference)


@pytest.mark.skipif(not TRACE.is_file(), reason=f"Azure conversation trace not found at {TRACE}")
def test_a_trace_slice_matches_the_per_step_loop():
    wl = load_azure_trace(TRACE, num_requests=600)
    batched, reference = both(wl, "jsq_load", num_workers=8, model="qwen3_30b_a3b")
    assert np.isfinite(batched.summary["mean_imbalance"])
    assert_same_run(batched, reference)


def test_the_reference_plans_every_step_on_its_own(monkeypatch):
    """... while the batched run plans stretches and defers the steps an arrival cuts (StepGroup.advance)."""
    with pytest.raises(ValueError, match="max_span"):
        SimConfig(num_workers=2, max_span=0)
    plans, deferred = [], []
    plan, count = StepModel.plan, StepGroup._count
    monkeypatch.setattr(StepModel, "plan", lambda self, step, *args, **kw: plans.append(step.max_steps) or plan(
        self, step, *args, **kw))
    monkeypatch.setattr(StepGroup, "_count", lambda self, k: deferred.append(k) or count(self, k))
    _, reference = both(random_workload(60, seed=2, rate=1.0), "jsq_load")
    steps = reference.summary["num_steps"]
    stretches, single = plans[:len(plans) - steps], plans[len(plans) - steps:]
    assert set(single) == {1} and max(stretches) > 1
    assert len(deferred) > 0 and sum(deferred) < steps
