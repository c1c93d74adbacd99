"""The output-length estimate, the BR-H predictors and the horizon projections, by hand."""
from __future__ import annotations

import numpy as np
import pytest
from policy_snapshots import table_snapshot

from balanceroute.policies import SurvivalEstimator, make_policy
from balanceroute.policies.horizon import project_loads
from balanceroute.policies.predictors import PromptLengthTable


# ---- SurvivalEstimator ----------------------------------------------------------------------------------------
def test_geometric_prior_is_memoryless_with_the_given_mean():
    est = SurvivalEstimator(prior_mean=50.0, prior_weight=5.0, max_len=4096)
    s = est.survival(np.arange(4))
    assert np.allclose(s, (1 - 1 / 50) ** np.arange(4))
    assert est.mean() == pytest.approx(50.0, rel=1e-6)
    # memoryless: P(O > a + h | O > a) does not depend on a
    assert np.allclose(est.conditional(np.array([0, 10, 300]), 7), (1 - 1 / 50) ** 7)


def test_empirical_prior_from_lengths_is_exact():
    est = SurvivalEstimator(prior_lengths=[5, 5, 10, 10], prior_weight=1.0, max_len=64)
    assert est.survival(np.array([0, 4, 5, 9, 10, 11, 500])).tolist() == [1, 1, 0.5, 0.5, 0, 0, 0]
    assert est.support_end() == 10
    assert est.mean() == 7.5
    assert est.quantile(np.array([0.0, 0.5, 0.51, 1.0])).tolist() == [0, 5, 10, 10]
    # alive at age 5 -> it is a 10: P(O > 5 + h | O > 5) = 1 for h < 5, then 0
    assert est.conditional(5, np.array([0, 4, 5])).tolist() == [1, 1, 0]
    # E[min(R, cap)]: age 0 -> 0.5*5 + 0.5*10 = 7.5 (cap 10), age 5 -> 5; capped at 3 -> 3
    assert est.expected_steps(np.array([0, 5]), 10).tolist() == [7.5, 5.0]
    assert est.steps_table(10)[[0, 5, 7, 9]].tolist() == [8, 5, 3, 1]
    assert est.steps_table(3)[[0, 5]].tolist() == [3, 3]


def test_ages_beyond_everything_seen_finish_now():
    est = SurvivalEstimator(prior_lengths=[4], prior_weight=1.0, max_len=8)
    assert est.conditional(np.array([6, 100]), 0).tolist() == [1, 1]
    assert est.conditional(np.array([6, 100]), 1).tolist() == [0, 0]
    assert est.steps_table(5)[6] == 1


def test_observations_outweigh_a_weak_prior_and_lengths_past_max_len_are_capped():
    est = SurvivalEstimator(prior_mean=500.0, prior_weight=1.0, max_len=100)
    est.observe_many([10] * 999)
    assert est.survival(9) > 0.99 and est.survival(10) < 0.01
    est.observe(10_000)  # counted at max_len
    assert est.count == 1000
    assert est.survival(99) > 0 and est.survival(100) == 0
    with pytest.raises(ValueError, match=">= 0"):
        est.observe(-1)


def test_recompute_is_lazy_and_only_after_new_observations():
    est = SurvivalEstimator(prior_mean=20.0)
    est.survival(3)
    version = est.version
    table = est.steps_table(10)
    est.survival(5), est.mean(), est.steps_table(10)
    assert est.version == version and est.steps_table(10) is table  # cached
    est.observe(3)
    est.observe(4)
    assert est.version == version  # nothing recomputed yet
    est.survival(1)
    assert est.version == version + 1 and est.steps_table(10) is not table


def test_refresh_is_amortised_once_the_estimate_holds_many_observations():
    est = SurvivalEstimator(prior_mean=20.0, prior_weight=0.0, max_len=256)
    est.observe_many([10] * 6400)
    est.survival(0)
    version = est.version
    for _ in range(99):  # 99 < 6400 / 64: not yet worth an O(max_len) recompute
        est.observe(30)
    assert est.survival(10) == 0 and est.version == version  # still the estimate without the 30s
    est.observe(30)  # 100 = 6400 / 64 new observations: taken in at the next query
    assert est.survival(10) == pytest.approx(100 / 6500) and est.version == version + 1
    est.observe(40)
    est.refresh()  # forced
    assert est.survival(30) == pytest.approx(1 / 6501)


def test_zero_prior_weight_uses_the_prior_only_until_data_arrive():
    est = SurvivalEstimator(prior_lengths=[3], prior_weight=0.0, max_len=16)
    assert est.survival(2) == 1 and est.survival(3) == 0
    est.observe(6)
    assert est.survival(5) == 1 and est.survival(6) == 0


# ---- predictors -------------------------------------------------------------------------------------------------
def test_prompt_length_table_keeps_recent_lengths_per_hash():
    table = PromptLengthTable(bits=8, samples=2)
    for length in (20, 30, 40):
        table.observe(7, length)
    assert sorted(table.lengths(7).tolist()) == [30, 40]  # ring of 2
    table.observe(0, 99)  # hash 0 = unknown, ignored
    assert table.lengths(0).size == 0
    steps, found = table.expected_steps(np.array([7, 7, 7, 8]), np.array([0, 35, 40, 0]), 100)
    assert steps[:2].tolist() == [35, 5] and found.tolist() == [True, True, False, False]


def test_prompt_length_table_evicts_on_collision():
    table = PromptLengthTable(bits=1, samples=4)  # two entries: many hashes share one
    hashes = [h for h in range(1, 50) if table._slot(h) == table._slot(1)][:2]
    table.observe(hashes[0], 10)
    table.observe(hashes[1], 20)
    assert table.lengths(hashes[0]).size == 0 and table.lengths(hashes[1]).tolist() == [20]
    # negative hashes map like their unsigned 64-bit form, vectorised and scalar alike
    assert table._slots(np.array([-5])).tolist() == [table._slot(-5)]


def test_exact_match_predictor_prefers_the_prompt_history_and_falls_back_to_survival():
    policy = make_policy("br_h", predictor="exact_match", H=50, prior_lengths=[100], prior_weight=1.0)
    for _ in range(3):
        policy.observe_finished(12, prompt_hash=42)
    snap = table_snapshot([0, 0, 1], [10, 10, 10], [2, 2, 20], prompt_hash=[42, 5, 42], num_workers=2)
    # hash 42 at age 2: remaining 10; hash 5 unknown: survival (history 100 x1, 12 x3) at age 2;
    # hash 42 at age 20: older than every 12 -> survival fallback
    steps = policy.predictor.steps(snap.requests, 51)
    survival = policy.estimator.steps_table(51)
    assert steps.tolist() == [10, survival[2], survival[20]]


def test_oracle_predictor_uses_true_remaining_and_refuses_without_it():
    policy = make_policy("br_h", predictor="oracle", H=5)
    snap = table_snapshot([0, 1], [10, 10], remaining=[3, 50], num_workers=2)
    assert policy.predictor.steps(snap.requests, 6).tolist() == [3, 6]
    unknown = table_snapshot([0, 1], [10, 10], num_workers=2)
    with pytest.raises(ValueError, match="predictor 'oracle'.*simulator.*2 of 2 requests"):
        policy.choose(unknown, 5)


def test_router_feeds_finished_lengths_and_prompt_hashes(tmp_path):
    from balanceroute.load import LoadTracker, Router

    policy = make_policy("br_h", predictor="exact_match")
    router = Router(policy, LoadTracker(2))
    router.route("a", 100, prompt_hash=9)
    router.tracker.tokens("a", 17)
    assert router.finish("a") == 17
    assert policy.predictor.table.lengths(9).tolist() == [17]
    assert policy.estimator.count == 1


# ---- projections ---------------------------------------------------------------------------------------------------
def test_project_loads_by_hand():
    # worker 0: w = 10 staying 2 steps, w = 25 staying 1; worker 1: w = 30 staying 4 (H = 3 -> cap 4).
    loads = project_loads(np.array([0, 0, 1]), np.array([10, 25, 30]), np.array([2, 1, 4]), 2, 3)
    assert loads.tolist() == [[35, 11, 0, 0], [30, 31, 32, 33]]


def test_br_h_prefers_the_worker_that_empties_within_the_horizon():
    snap = table_snapshot([0, 1], [100, 90], remaining=[1, 50], num_workers=2)
    assert make_policy("br0").choose(snap, 20) == 1
    assert make_policy("br_h", H=10, predictor="oracle").choose(snap, 20) == 0
    # a strong discount makes it short-sighted again: 0.01^h leaves only h = 0
    assert make_policy("br_h", H=10, gamma=0.01, predictor="oracle").choose(snap, 20) == 1


def test_phi_by_hand():
    # every output is exactly 2 tokens: S = [1, 1, 0]
    params = {"prior_lengths": [2], "prior_weight": 1.0, "max_len": 8}
    phi = make_policy("phi", **params)
    fresh = table_snapshot([0], [10], [0], num_workers=2)  # L̄_0 = [10, 11], L̄_1 = [0, 0]
    assert phi.cost(fresh, 5) == pytest.approx([5 + 6, 0], abs=1e-9)  # (phi correlates by FFT)
    assert phi.cost(fresh, 12) == pytest.approx([12 + 13, (12 - 10) + (13 - 11)], abs=1e-9)
    old = table_snapshot([0], [10], [1], num_workers=2)  # age 1 of 2: gone after this step, L̄_0 = [11, 0]
    assert phi.cost(old, 5) == pytest.approx([5 + 6, 0 + (6 - 0)], abs=1e-9)
    assert phi.choose(old, 5) == 1
    fast = make_policy("fast_phi", K=2, **params)  # K >= D = 2 nodes: exact
    assert fast.cost(old, 5).tolist() == [11, 6]
