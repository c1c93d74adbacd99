"""Properties that must hold on every snapshot (hypothesis)."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_snapshots import table_snapshot

from balanceroute.policies import ClusterSnapshot, PendingRequests, available_policies, make_policy
from balanceroute.policies import policy as policy_module

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def load_snapshots(draw, max_workers: int = 40):
    """Per-worker loads (integers or not), an optional eligibility mask with at least one eligible worker."""
    g = draw(st.integers(1, max_workers))
    integer = draw(st.booleans())
    value = st.integers(0, 5000) if integer else st.floats(0, 5000, allow_nan=False)
    loads = draw(st.lists(value, min_size=g, max_size=g))
    eligible = None
    if draw(st.booleans()):
        eligible = draw(st.lists(st.booleans(), min_size=g, max_size=g))
        eligible[draw(st.integers(0, g - 1))] = True
    return ClusterSnapshot.from_loads(loads, eligible=eligible)


@st.composite
def table_snapshots(draw, max_workers: int = 24, max_requests: int = 60):
    """Snapshots built from a request table (kv_load consistent with it), with oracle lengths and hashes."""
    g = draw(st.integers(1, max_workers))
    n = draw(st.integers(0, max_requests))
    ints = lambda lo, hi: st.lists(st.integers(lo, hi), min_size=n, max_size=n)
    eligible = None
    if draw(st.booleans()):
        eligible = draw(st.lists(st.booleans(), min_size=g, max_size=g))
        eligible[draw(st.integers(0, g - 1))] = True
    return table_snapshot(draw(ints(0, g - 1)), draw(ints(1, 3000)), draw(ints(0, 400)), num_workers=g,
                          remaining=draw(ints(1, 400)), prompt_hash=draw(ints(0, 5)), eligible=eligible)


prompts = st.lists(st.integers(0, 6000), min_size=1, max_size=6)


@SETTINGS
@given(load_snapshots(), prompts)
def test_on_arrival_br0_is_jsq_load(snap, sizes):
    """F_g = s - G(s - m_g)_+ never increases with L_g, and ties go to the lowest load: argmax F = argmin L."""
    br0, jsq_load = make_policy("br0"), make_policy("jsq_load")
    for s in sizes:
        assert br0.choose(snap, s) == jsq_load.choose(snap, s)


@SETTINGS
@given(table_snapshots(), prompts, st.floats(0.05, 1.0), st.sampled_from(["survival", "oracle", "exact_match"]))
def test_br_h_with_h0_alpha1_beta_g_is_br0(snap, sizes, gamma, predictor):
    br0 = make_policy("br0")
    br_h = make_policy("br_h", H=0, alpha=1.0, beta=float(snap.num_workers), gamma=gamma, predictor=predictor)
    for s in sizes:
        assert br_h.choose(snap, s) == br0.choose(snap, s)


@SETTINGS
@given(table_snapshots(max_workers=6), st.lists(st.integers(1, 3000), min_size=1, max_size=12),
       st.integers(0, 3), st.integers(0, 12), st.integers(1, 5))
def test_br_h_with_h0_is_br0_in_pool_mode(snap, pool, free_per_worker, s_greedy, r_max):
    snap.free_slots = np.full(snap.num_workers, free_per_worker)
    pending = PendingRequests(prompt_len=np.array(pool), output_len=np.array(pool))
    br0 = make_policy("br0", S_greedy=s_greedy, R_max=r_max)
    br_h = make_policy("br_h", H=0, S_greedy=s_greedy, R_max=r_max)
    a, b = br0.assign(snap, pending), br_h.assign(snap, pending)
    assert (a.index, a.worker) == (b.index, b.worker)


# fast_phi -> phi: an output-length distribution on 1..30 (no geometric tail), so "every node" is reachable.
SMALL = {"prior_lengths": list(range(1, 31)) + [3, 3, 5, 8, 8, 8, 13], "prior_weight": 1.0, "max_len": 40}


@SETTINGS
@given(table_snapshots(max_workers=8), st.integers(0, 3000))
def test_fast_phi_equals_phi_once_its_nodes_cover_the_support(snap, s):
    """With K >= D (the support size) every h < D is a node and the quadrature is the exact sum."""
    phi, fast = make_policy("phi", **SMALL), make_policy("fast_phi", K=1000, **SMALL)
    exact, approx = phi.cost(snap, s), fast.cost(snap, s)
    tol = 1e-9 * max(1.0, np.abs(exact).max())  # phi's FFT rounding
    assert np.allclose(approx, exact, rtol=1e-9, atol=tol)
    best = exact.min() if snap.eligible is None else exact[snap.eligible].min()
    assert exact[fast.choose(snap, s)] <= best + tol  # fast_phi's choice is optimal for phi


def test_fast_phi_error_shrinks_as_k_grows():
    """On a realistic (lognormal-like) distribution the relative ΔΦ error falls with K and vanishes at full cover."""
    rng = np.random.default_rng(3)
    lengths = np.clip(rng.lognormal(np.log(60), 0.8, 400), 1, 300).astype(int).tolist()
    params = {"prior_lengths": lengths, "prior_weight": 1.0, "max_len": 320}
    n = 300
    snap = table_snapshot(rng.integers(0, 8, n), rng.integers(50, 3000, n), rng.integers(0, 200, n), num_workers=8)
    exact = make_policy("phi", **params).cost(snap, 800)
    errors = {}
    for k in (2, 10, 80, 320):  # D <= max_len = 320
        approx = make_policy("fast_phi", K=k, **params).cost(snap, 800)
        errors[k] = float(np.abs(approx - exact).max() / np.abs(exact).max())
    assert errors[320] < 1e-9  # K >= D: the exact sum
    assert errors[80] < errors[10] < errors[2]  # (not monotone step by step, but it falls)
    assert errors[80] < 0.02


@SETTINGS
@given(table_snapshots(), st.integers(0, 4000), st.sampled_from(sorted(available_policies())))
def test_every_choice_is_a_valid_eligible_index(snap, s, name):
    policy = make_policy(name, **({"predictor": "oracle"} if name in ("br_h", "bf_io") else {}))
    for _ in range(3):
        w = policy.choose(snap, s, prompt_hash=1, output_len=50)
        assert isinstance(w, int) and 0 <= w < snap.num_workers
        assert snap.eligible is None or snap.eligible[w]


@SETTINGS
@given(table_snapshots(max_workers=10), st.lists(st.integers(1, 3000), min_size=1, max_size=10),
       st.sampled_from(sorted(available_policies())), st.integers(0, 2**31))
def test_decisions_are_deterministic_for_a_fixed_seed(snap, sizes, name, seed):
    snap.free_slots = np.full(snap.num_workers, 2)
    pending = PendingRequests(prompt_len=np.array(sizes), prompt_hash=np.ones(len(sizes), dtype=np.int64))
    runs = []
    for _ in range(2):
        policy = make_policy(name, seed=seed)
        for length in (10, 200, 35):
            policy.observe_finished(length, prompt_hash=1)
        choices = [policy.choose(snap, s) for s in sizes]
        assignment = policy.assign(snap, pending)
        runs.append((choices, assignment.index, assignment.worker))
    assert runs[0] == runs[1]


@SETTINGS
@given(table_snapshots(max_workers=6), st.lists(st.integers(1, 3000), min_size=0, max_size=15),
       st.sampled_from(sorted(available_policies())), st.lists(st.integers(0, 3), min_size=6, max_size=6))
def test_pool_assignment_respects_free_slots_and_places_what_fits(snap, sizes, name, free):
    g = snap.num_workers
    snap.free_slots = np.array(free[:g])
    pending = PendingRequests(prompt_len=np.array(sizes, dtype=np.int64), output_len=np.array(sizes))
    policy = make_policy(name, **({"predictor": "oracle"} if name in ("br_h", "bf_io") else {}))
    out = policy.assign(snap, pending)
    assert len(set(out.index)) == len(out.index)  # nobody placed twice
    per_worker = np.bincount(np.array(out.worker, dtype=np.int64), minlength=g)
    assert np.all(per_worker <= snap.free_slots)
    usable = snap.free_slots if snap.eligible is None else np.where(snap.eligible, snap.free_slots, 0)
    assert len(out) == min(len(sizes), int(usable.sum()))  # work-conserving: fills slots while requests wait
    assert snap.eligible is None or all(snap.eligible[w] for w in out.worker)


@SETTINGS
@given(st.integers(1, 30), st.data())
def test_pick_min_list_and_numpy_paths_agree(g, data):
    """pick_min scans Python lists for few workers and numpy otherwise: same answer, same cursor walk."""
    few = st.sampled_from([0.0, 1.0, 2.5, np.inf])  # few values: many ties
    score = np.array(data.draw(st.lists(few, min_size=g, max_size=g)))
    secondary = data.draw(st.none() | st.lists(st.sampled_from([0.0, 1.0, 3.0]), min_size=g, max_size=g))
    eligible = data.draw(st.none() | st.lists(st.booleans(), min_size=g, max_size=g))
    snap = ClusterSnapshot.from_loads(np.zeros(g), eligible=eligible)
    secondary = None if secondary is None else np.array(secondary)
    answers = []
    for threshold in (10**6, 0):  # lists always, numpy always
        policy_module._PY_PICK_MAX_WORKERS, saved = threshold, policy_module._PY_PICK_MAX_WORKERS
        try:
            policy = make_policy("jsq")
            picks = []
            for _ in range(g + 2):
                try:
                    picks.append(policy.pick_min(snap, score, secondary))
                except ValueError as err:
                    picks.append(str(err))
            answers.append(picks)
        finally:
            policy_module._PY_PICK_MAX_WORKERS = saved
    assert answers[0] == answers[1]
