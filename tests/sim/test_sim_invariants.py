"""Simulator invariants, failures and dispatch modes, on the tiny preset.

Every run here has ``check_invariants`` on: at every step boundary the engine re-derives its KV blocks (within
capacity), running and waiting counts, and the load tracker's per-worker load from scratch, and fails on any
difference.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_helpers import random_workload, run, workload

from balanceroute.metrics import REQUEST_COLUMNS
from balanceroute.results import jsonable
from balanceroute.policies import Assignment, make_policy
from balanceroute.policies.kv import JsqLoad
from balanceroute.sim import SimConfig, simulate
from balanceroute.sim.presets import TINY


def assert_accounted(result, sim) -> None:
    """Each request ended exactly once; completed ones produced exactly their target; nothing left in the tracker."""
    req = result.requests
    assert list(req.columns) == list(REQUEST_COLUMNS)
    assert req.request_id.tolist() == list(range(len(req)))
    assert set(req.status.astype(str)) <= {"completed", "failed", "unfinished"}
    done = req[req.status == "completed"]
    assert (done.output_len == done.target_output_len).all()
    assert (done.first_token_s >= done.arrival_s).all() and (done.finish_s >= done.first_token_s).all()
    assert (req.output_len <= req.target_output_len).all()
    failed = req[req.status == "failed"]
    assert failed.error.isin(["timeout", "kv_capacity"]).all()
    assert (req[req.status != "failed"].error == "").all()
    assert req[req.status == "unfinished"].finish_s.isna().all()
    assert len(sim.tracker) == 0 and np.allclose(sim.tracker.kv_load, 0)
    assert (sim.tracker.running == 0).all() and (sim.tracker.waiting == 0).all()
    s = result.summary
    assert s["completed"] + s["failed"] + s["unfinished"] == len(req)
    # tokens conserved: the ITL samples stand for one gap per generated token but each request's first
    assert sim.itl.arrays()[1].sum() == (req.output_len - 1).clip(lower=0).sum()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), g=st.integers(1, 4), dispatch=st.sampled_from(["on_arrival", "pool"]),
       prefill=st.sampled_from(["colocated", "disaggregated"]), barrier=st.booleans(),
       capacity=st.sampled_from([256, 1024, 4096]), budget=st.sampled_from([8, 48, 256]))
def test_random_runs_keep_every_invariant(seed, g, dispatch, prefill, barrier, capacity, budget):
    model = TINY.with_overrides(kv_capacity_tokens=capacity, max_num_batched_tokens=budget)
    result, sim = run(random_workload(40, seed=seed, rate=8.0), num_workers=g, dispatch=dispatch,
                      prefill=prefill, barrier=barrier, model=model, timeout_s=60.0)
    assert_accounted(result, sim)
    assert (result.timeline.kv_load <= capacity).all()
    # a request fails for KV exactly when prompt + output - 1 tokens exceed the capacity
    too_big = result.requests.prompt_len + result.requests.target_output_len - 1 > capacity
    assert (result.requests.error == "kv_capacity").tolist() == too_big.tolist()


@pytest.mark.parametrize("prefill", ["colocated", "disaggregated"])
def test_every_token_after_the_first_is_one_inter_token_gap(prefill):
    """Tokens are conserved: the ITL samples stand for exactly one gap per generated token but the first."""
    model = TINY.with_overrides(kv_capacity_tokens=512)  # with preemptions (gaps spanning a recompute)
    result, sim = run(random_workload(80, seed=4, rate=15.0), num_workers=2, model=model, prefill=prefill,
                      horizon_s=20.0)
    assert result.summary["preemptions"] > 0
    assert_accounted(result, sim)
    assert (sim.itl.arrays()[0] > 0).all()


def test_same_seed_same_result_and_a_different_policy_seed_differs():
    wl = random_workload(200, seed=5, rate=20.0)
    first, _ = run(wl, make_policy("power_of_two", seed=1), num_workers=4)
    again, _ = run(wl, make_policy("power_of_two", seed=1), num_workers=4)
    other, _ = run(wl, make_policy("power_of_two", seed=2), num_workers=4)
    pd.testing.assert_frame_equal(first.requests, again.requests)
    pd.testing.assert_frame_equal(first.timeline, again.timeline)
    drop = {"sim_wall_time_s"}
    # same seed, same numbers to the last bit (jsonable maps NaN to None so that equal NaNs compare equal)
    assert jsonable({k: v for k, v in first.summary.items() if k not in drop}) == jsonable(
        {k: v for k, v in again.summary.items() if k not in drop})
    assert first.requests.worker.tolist() != other.requests.worker.tolist()


def test_a_request_that_can_never_fit_fails_at_once_and_the_rest_complete():
    big = TINY.kv_capacity_tokens  # prompt + output - 1 = capacity + 1 tokens
    result, sim = run(workload([30, big, 40], [10, 2, 10]), num_workers=1, timeout_s=math.inf)
    req = result.requests
    assert req.status.tolist() == ["completed", "failed", "completed"]
    assert req.error.tolist() == ["", "kv_capacity", ""]
    assert req.worker[1] == -1 and req.finish_s[1] == req.arrival_s[1]  # never routed
    assert_accounted(result, sim)


@pytest.mark.timeout(20)
def test_kv_capacity_failure_never_loops_even_without_timeout():
    result, _ = run(workload([TINY.kv_capacity_tokens + 5] * 3, 4), num_workers=2, timeout_s=math.inf)
    assert (result.requests.error == "kv_capacity").all()
    assert result.summary["num_steps"] == 0


def test_requests_past_their_timeout_fail_at_the_next_step_boundary():
    wl = workload(np.full(60, 100), 40)  # all at t=0, far more than 2 workers x 8 slots can serve in 3 s
    result, sim = run(wl, num_workers=2, timeout_s=3.0)
    req = result.requests
    late = req[req.status == "failed"]
    assert len(late) > 0 and (late.error == "timeout").all()
    assert (late.finish_s >= 3.0).all() and (late.finish_s < 3.0 + 1.0).all()  # a step is < 1 s here
    assert (req[req.status == "completed"].finish_s <= 3.0 + 1.0).all()
    assert_accounted(result, sim)


def test_preemption_happens_and_every_preempted_request_recovers():
    model = TINY.with_overrides(kv_capacity_tokens=320)  # 20 blocks; 6 requests growing to 99 tokens each
    result, sim = run(workload(np.full(6, 40), 60), num_workers=1, model=model, timeout_s=math.inf)
    req = result.requests
    assert result.summary["preemptions"] > 0 and (req.preemptions > 0).any()
    assert (req.status == "completed").all() and (req.output_len == 60).all()
    assert (result.timeline.kv_load <= 320).all()
    assert_accounted(result, sim)


def test_horizon_leaves_requests_unfinished_and_releases_them():
    result, sim = run(random_workload(50, seed=2, rate=10.0), num_workers=2, horizon_s=10.0)
    req = result.requests
    assert (req.status == "unfinished").sum() > 0 and (req.status == "completed").sum() > 0
    assert (req[req.status == "completed"].finish_s <= 10.0).all()
    assert_accounted(result, sim)


class SlotWatcher(JsqLoad):
    """jsq_load that records, at every pool round, the free slots it was offered and what it placed."""

    name = "slot_watcher"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.rounds: list[tuple[np.ndarray, np.ndarray, int]] = []

    def assign(self, snap, pending):
        out = super().assign(snap, pending)
        self.rounds.append((snap.free_slots.copy(), np.bincount(out.worker, minlength=snap.num_workers),
                            len(pending)))
        return out


def test_pool_mode_places_only_into_free_slots_and_holds_the_rest():
    policy = SlotWatcher()
    wl = workload(np.full(80, 20), 30)  # 80 requests at once; 2 workers x 8 slots
    result, sim = run(wl, policy, num_workers=2, dispatch="pool")
    assert_accounted(result, sim)
    assert (result.requests.status == "completed").all()
    assert policy.rounds and all((placed <= free).all() for free, placed, _ in policy.rounds)
    assert max(pending for _, _, pending in policy.rounds) > 2 * TINY.max_num_seqs  # requests waited centrally
    assert result.timeline.running.max() <= TINY.max_num_seqs and result.timeline.waiting.max() == 0


def test_requests_waiting_in_the_pool_past_their_timeout_fail_unrouted_at_their_deadline():
    wl = workload(np.full(60, 100), 40)
    result, sim = run(wl, num_workers=2, dispatch="pool", timeout_s=3.0, pool_window=8)
    never_placed = result.requests[result.requests.worker == -1]
    assert len(never_placed) > 0
    assert (never_placed.status == "failed").all() and (never_placed.error == "timeout").all()
    assert never_placed.finish_s.tolist() == pytest.approx((never_placed.arrival_s + 3.0).tolist())
    assert_accounted(result, sim)


class Greedy(JsqLoad):
    """A broken pool policy: everything to worker 0, slots or not."""

    def assign(self, snap, pending):
        out = Assignment()
        for i in range(len(pending)):
            out.add(i, 0)
        return out


def test_a_pool_policy_that_overfills_a_worker_is_reported():
    with pytest.raises(RuntimeError, match="beyond their free slots"):
        simulate(workload(np.full(20, 10), 5), Greedy(), SimConfig(num_workers=2, model="tiny", dispatch="pool"))


def test_oracle_output_lengths_reach_the_tracker():
    """The simulator passes the true output length at routing, so remaining = target - generated."""
    seen = []

    class Peek(JsqLoad):
        needs_requests = True

        def choose(self, snap, prompt_len, **request):
            seen.append((request.get("output_len"), snap.requests.remaining.copy(),
                         snap.requests.generated.copy()))
            return super().choose(snap, prompt_len, **request)

    wl = workload([20, 20, 20], [7, 9, 11], arrival=[0.0, 0.05, 0.1])  # all three still running at 0.1 s
    run(wl, Peek(), num_workers=1)
    assert [s[0] for s in seen] == [7, 9, 11]
    _, remaining, generated = seen[-1]
    assert sorted((remaining + generated).tolist()) == [7, 9] and generated.max() > 0


def test_timeline_stays_within_its_row_budget():
    result, _ = run(random_workload(300, seed=1, rate=30.0), num_workers=2, timeline_max_rows=64,
                    check_invariants=False)
    tl = result.timeline
    assert 0 < len(tl) <= 64
    steps = np.sort(tl.step.unique())
    assert len(set(np.diff(steps))) == 1  # evenly thinned
    assert result.summary["num_steps"] > len(steps)


@pytest.mark.parametrize("bad, match", [
    (dict(num_workers=0), "num_workers"), (dict(dispatch="batch"), "on_arrival, pool"),
    (dict(prefill="remote"), "colocated, disaggregated"), (dict(timeout_s=0), "timeout_s"),
    (dict(model="gpt5"), "valid presets: tiny"), (dict(barrier="yes"), "barrier"),
])
def test_bad_config_names_the_value_and_the_choices(bad, match):
    with pytest.raises(ValueError, match=match):
        SimConfig(**{"num_workers": 2, **bad})
