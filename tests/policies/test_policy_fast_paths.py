"""The latency-trimmed decision paths against their definitions, on random snapshots and event streams.

``project_loads`` bins requests and multiplies by a constant matrix, ``bf_io``'s on-arrival choice sums only the
look-ahead steps the new request is projected to stay, ``fast_phi`` sums its first node without products and the
others one bincount per node: all are checked here against the plain formulas of ALGORITHMS.md, computed one
(request, step) pair at a time (a presence matrix; the new request's increment over the whole horizon; the
conditional survival of each request at each node), decision for decision, with ties (small integer lengths make
them common) and with eligibility masks. The streams drive a :class:`LoadTracker` through arrivals routed by the
policy, admissions, decode steps, preemptions, finishes (which teach the estimate) and aborts (which free slots
that later requests reuse, so the request table is not in arrival order), and check every decision on its way.
"""
from __future__ import annotations

import numpy as np
import pytest
from policy_snapshots import table_snapshot

from balanceroute.load import LoadTracker
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
def test_new_step_is_new_steps_of_one(predictor):
    policy = make_policy("bf_io", H=30, predictor=predictor, prior_mean=12.0, max_len=200)
    for length in (3, 9, 14, 40):
        policy.observe_finished(length, prompt_hash=2)
    for prompt_hash in (0, 2, 3):
        for output_len in (1, 5, 31, 80):
            batch = policy.predictor.new_steps(np.array([prompt_hash]), np.array([output_len]), 1, 31)
            assert policy.predictor.new_step(prompt_hash, output_len, 31) == int(batch[0])


def br_h_reference(policy, snap, prompt_len, prompt_hash=0, output_len=None):
    """BR-H as ALGORITHMS.md states it: argmax_g α (Σ_h d_h) s - β Σ_h d_h (s - m_{g,h})_+ on the dense projection."""
    table, horizon, g = snap.requests, policy.H, snap.num_workers
    loads = dense_projection(table.worker, table.prompt_len + table.generated,
                             policy.predictor.steps(table, horizon + 1), g, horizon)
    margin = loads.max(axis=0) - loads
    discount = policy.gamma ** np.arange(horizon + 1)
    beta = g if policy.beta is None else policy.beta
    score = policy.alpha * discount.sum() * prompt_len - beta * (discount * np.maximum(prompt_len - margin, 0)).sum(1)
    return policy.pick_min(snap, -score, snap.kv_load)


def fast_phi_reference(policy, snap, prompt_len, prompt_hash=0, output_len=None):
    """fast_phi as ALGORITHMS.md states it: argmin_g Σ_j c_j (s + h_j - m_g(h_j))_+ with
    L̄_g(h_j) = Σ_i P(O_i > a_i + h_j | O_i > a_i) (w_i + h_j), one request at a time (nodes and weights c_j are
    the policy's quadrature, which these tests do not optimise)."""
    nodes, coeff, _ = policy.quadrature()
    table, estimator = snap.requests, policy.estimator
    expected = np.zeros((snap.num_workers, len(nodes)))
    for i in range(len(table)):
        age = np.full(len(nodes), min(int(table.generated[i]), estimator.max_len))
        alive = estimator.conditional(age, nodes.astype(np.int64))
        expected[table.worker[i]] += alive * (table.prompt_len[i] + table.generated[i] + nodes)
    margin = expected.max(axis=0) - expected
    cost = (coeff * np.maximum(prompt_len + nodes - margin, 0.0)).sum(axis=1)
    return policy.pick_min(snap, cost, snap.kv_load)


#: (policy, parameters, reference rule) for every on-arrival path checked against its definition.
ON_ARRIVAL = [
    ("br_h", {"H": 12}, br_h_reference),
    ("br_h", {"H": 0}, br_h_reference),
    ("br_h", {"H": 25, "gamma": 0.9, "alpha": 2.0, "beta": 3.0}, br_h_reference),
    ("br_h", {"H": 25, "predictor": "exact_match"}, br_h_reference),
    ("br_h", {"H": 25, "predictor": "oracle"}, br_h_reference),
    ("bf_io", {"H": 20}, bf_io_reference),
    ("bf_io", {"H": 0}, bf_io_reference),
    ("bf_io", {"H": 3, "predictor": "exact_match"}, bf_io_reference),
    ("bf_io", {"H": 20, "predictor": "oracle"}, bf_io_reference),
    ("fast_phi", {}, fast_phi_reference),
    ("fast_phi", {"K": 1}, fast_phi_reference),
    ("fast_phi", {"K": 3}, fast_phi_reference),
    ("fast_phi", {"K": 1000}, fast_phi_reference),  # K >= D: every h of the support is a node
]
LEARNING = {"prior_mean": 12.0, "max_len": 200}


@pytest.mark.parametrize("name, params, reference", ON_ARRIVAL, ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_on_arrival_choice_equals_its_definition_on_random_snapshots(name, params, reference):
    rng = np.random.default_rng(11)
    fast, slow = make_policy(name, **params, **LEARNING), make_policy(name, **params, **LEARNING)
    for i in range(150):
        if i % 7 == 0:  # the estimate changes as requests finish
            length, prompt_hash = int(rng.integers(1, 40)), int(rng.integers(0, 4))
            fast.observe_finished(length, prompt_hash)
            slow.observe_finished(length, prompt_hash)
        snap = random_snapshot(rng, int(rng.integers(1, 9)), eligible=i % 3 == 0)
        request = {"prompt_len": int(rng.integers(1, 60)), "prompt_hash": int(rng.integers(0, 4)),
                   "output_len": int(rng.integers(1, 50))}
        assert fast.choose(snap, **request) == reference(slow, snap, **request), i


@pytest.mark.parametrize("name, params, reference", ON_ARRIVAL, ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_on_arrival_choice_equals_its_definition_along_an_event_stream(name, params, reference):
    """Every decision of a run with arrivals, admissions, decode steps, preemptions, finishes and aborts."""
    rng = np.random.default_rng(5)
    g = 4
    fast, slow = make_policy(name, **params, **LEARNING), make_policy(name, **params, **LEARNING)
    tracker = LoadTracker(g, max_num_seqs=6, initial_slots=16)  # small: the slot arrays grow, freed slots are reused
    output, live, next_id, decisions = {}, [], 0, 0
    for _ in range(400):
        event = int(rng.integers(8)) if live else 0
        rid = live[int(rng.integers(len(live)))] if live else None
        if event <= 1:  # an arrival, routed by the policy under test and checked against its definition
            prompt_len, prompt_hash, out_len = int(rng.integers(1, 60)), int(rng.integers(0, 4)), int(rng.integers(1, 40))
            snap = tracker.snapshot(with_requests=True)
            if rng.random() < 0.3:
                snap.eligible = rng.random(g) < 0.6
                snap.eligible[rng.integers(g)] = True
            request = {"prompt_hash": prompt_hash, "output_len": out_len}
            worker = fast.choose(snap, prompt_len, **request)
            assert worker == reference(slow, snap, prompt_len, **request), decisions
            decisions += 1
            tracker.routed(next_id, worker, prompt_len, prompt_hash=prompt_hash, output_len=out_len)
            output[next_id] = out_len
            live.append(next_id)
            next_id += 1
        elif event == 2:
            tracker.started(rid)
        elif event == 3:
            tracker.preempted(rid)
        elif event == 4:  # a decode step of every request
            tracker.tokens_bulk(np.array([tracker.slot_of(r) for r in live]), 1)
        elif event in (5, 6) and tracker.generated_of(rid) >= output[rid]:  # done: finished, or cut off
            live.remove(rid)
            if event == 5:
                prompt_hash = tracker.prompt_hash_of(rid)
                length = tracker.finished(rid)
                fast.observe_finished(length, prompt_hash)
                slow.observe_finished(length, prompt_hash)
            else:
                tracker.aborted(rid)
        elif event == 7 and rng.random() < 0.3:
            live.remove(rid)
            tracker.aborted(rid)
    assert decisions > 100


@pytest.mark.parametrize("name, params", [("br_h", {"H": 40, "gamma": 0.9}), ("br_h", {"H": 80, "gamma": 0.97}),
                                          ("fast_phi", {}), ("fast_phi", {"K": 12}), ("phi", {})])
def test_workers_holding_the_same_requests_tie_exactly(name, params):
    """Workers whose requests are the same have the same score to the last bit, wherever they sit, so the tie goes
    by ALGORITHMS.md's rule (lowest load, then the first from a rotating start: worker 0 for a new policy), not by
    how a sum happened to round (a BLAS matrix-vector product rounds identical rows differently by position)."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 60, 30).tolist()
    for trial in range(40):
        policy = make_policy(name, **params, **LEARNING)
        for length in lengths:
            policy.observe_finished(int(length))
        g, n = int(rng.integers(2, 9)), int(rng.integers(1, 12))
        prompt, generated = rng.integers(1, 60, n), rng.integers(0, 40, n)
        busier = int(rng.integers(g))  # one worker holds one more request: every other one ties
        worker = np.concatenate([np.repeat(np.arange(g), n), [busier]])
        extra = int(rng.integers(1, 60))
        snap = table_snapshot(worker, np.concatenate([np.tile(prompt, g), [extra]]),
                              np.concatenate([np.tile(generated, g), [0]]), num_workers=g)
        choice = policy.choose(snap, int(rng.integers(1, 60)))
        assert choice == (1 if busier == 0 else 0), (trial, g, busier)
