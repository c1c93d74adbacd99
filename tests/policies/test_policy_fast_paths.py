"""The latency-trimmed decision paths against their definitions, on random snapshots.

``project_loads`` bins requests and multiplies by a mask, and ``bf_io``'s on-arrival choice sums only the look-ahead
steps the new request is projected to stay: both are checked here against the plain dense formulas of
ALGORITHMS.md (a (requests x steps) presence matrix; the new request's increment over the whole horizon), decision
for decision, with ties (small integer lengths make them common) and with eligibility masks.
"""
from __future__ import annotations

import numpy as np
import pytest
from policy_snapshots import table_snapshot

from balanceroute.policies import make_policy
from balanceroute.policies.horizon import project_loads


def dense_projection(worker, load, steps, num_workers, horizon):
    """L[g, h] = sum over requests i on g with steps_i > h of (load_i + h), one (request, step) cell at a time."""
    h = np.arange(horizon + 1)
    present = steps[:, None] > h[None, :]
    out = np.zeros((num_workers, horizon + 1))
    np.add.at(out, worker, np.where(present, load[:, None] + h[None, :], 0))
    return out


def random_snapshot(rng, num_workers, *, eligible=False):
    n = int(rng.integers(0, 12 * num_workers))
    prompt = rng.integers(1, 60, n)
    generated = rng.integers(0, 40, n)
    mask = None
    if eligible:
        mask = rng.random(num_workers) < 0.6
        mask[rng.integers(num_workers)] = True
    return table_snapshot(rng.integers(0, num_workers, n), prompt, generated, num_workers=num_workers,
                          remaining=rng.integers(1, 50, n), prompt_hash=rng.integers(0, 4, n), eligible=mask)


@pytest.mark.parametrize("seed", range(5))
def test_project_loads_equals_the_dense_definition(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        g, horizon = int(rng.integers(1, 10)), int(rng.integers(0, 90))
        n = int(rng.integers(0, 300))
        worker, load = rng.integers(0, g, n), rng.integers(1, 40_000, n)
        steps = rng.integers(1, horizon + 2, n)
        got = project_loads(worker, load, steps, g, horizon)
        assert np.array_equal(got, dense_projection(worker, load, steps, g, horizon))


def bf_io_reference(policy, snap, prompt_len, prompt_hash, output_len):
    """bf_io's on-arrival rule as ALGORITHMS.md states it: argmin_g sum_{h=0..H} (L_g(h) + inc(h) - M_h)_+."""
    table, horizon = snap.requests, policy.H
    steps = policy.predictor.steps(table, horizon + 1)
    loads = dense_projection(table.worker, table.prompt_len + table.generated, steps, snap.num_workers, horizon)
    k = policy.predictor.new_steps(np.array([prompt_hash]), np.array([output_len]), 1, horizon + 1)[0]
    h = np.arange(horizon + 1)
    inc = np.where(h < k, prompt_len + h, 0.0)
    score = np.maximum(loads + inc - loads.max(axis=0), 0.0).sum(axis=1)
    return policy.pick_min(snap, score, snap.kv_load)


@pytest.mark.parametrize("predictor", ["survival", "exact_match", "oracle"])
@pytest.mark.parametrize("horizon", [0, 3, 20])
def test_bf_io_choose_equals_the_full_horizon_rule(predictor, horizon):
    rng = np.random.default_rng(horizon)
    fast = make_policy("bf_io", H=horizon, predictor=predictor, prior_mean=12.0, max_len=200)
    slow = make_policy("bf_io", H=horizon, predictor=predictor, prior_mean=12.0, max_len=200)
    for i in range(300):
        if i % 7 == 0:  # the estimate changes as requests finish
            length, prompt_hash = int(rng.integers(1, 40)), int(rng.integers(0, 4))
            fast.observe_finished(length, prompt_hash)
            slow.observe_finished(length, prompt_hash)
        snap = random_snapshot(rng, int(rng.integers(1, 9)), eligible=i % 3 == 0)
        request = {"prompt_len": int(rng.integers(1, 60)), "prompt_hash": int(rng.integers(0, 4)),
                   "output_len": int(rng.integers(1, 50))}
        assert fast.choose(snap, **request) == bf_io_reference(slow, snap, **request)


@pytest.mark.parametrize("predictor", ["survival", "exact_match", "oracle"])
def test_new_step_is_new_steps_of_one(predictor):
    policy = make_policy("bf_io", H=30, predictor=predictor, prior_mean=12.0, max_len=200)
    for length in (3, 9, 14, 40):
        policy.observe_finished(length, prompt_hash=2)
    for prompt_hash in (0, 2, 3):
        for output_len in (1, 5, 31, 80):
            batch = policy.predictor.new_steps(np.array([prompt_hash]), np.array([output_len]), 1, 31)
            assert policy.predictor.new_step(prompt_hash, output_len, 31) == int(batch[0])
