"""Each policy pinned to hand-computed cases, tie-breaks, and make_policy's errors."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from policy_snapshots import table_snapshot

from balanceroute.policies import ClusterSnapshot, available_policies, make_policy
from balanceroute.policies.kv import br0_scores

ALL = ["bf_io", "br0", "br_h", "fast_phi", "jsq", "jsq_load", "phi", "power_of_two", "random", "round_robin",
       "vllm_default", "vllm_kv"]


def test_every_policy_of_the_study_is_registered():
    assert available_policies() == sorted(ALL)


# ---- BR-0 ----------------------------------------------------------------------------------------------------
def test_br0_scores_by_hand():
    # G = 4, M = 100, margins [0, 20, 40, 10]; s = 30 fits only under worker 2 (margin 40).
    f = br0_scores(np.array([100.0, 80, 60, 90]), 30)
    assert f.tolist() == [30 - 4 * 30, 30 - 4 * 10, 30, 30 - 4 * 20]


def test_br0_kink_slope_plus_one_inside_margin_minus_g_minus_one_past_it():
    load = np.array([100.0, 80, 60, 90])  # worker 2 has margin 40
    s = np.arange(0, 80)
    f = np.array([br0_scores(load, float(x))[2] for x in s])
    slope = np.diff(f)
    assert np.all(slope[:40] == 1)  # s = 0..40: F = s
    assert np.all(slope[40:] == -(len(load) - 1))  # past the margin every extra token costs G-1 idle tokens
    assert f[40] == 40 and f[50] == 50 - 4 * 10


def test_br0_on_arrival_picks_the_least_loaded_even_when_others_tie_on_f():
    snap = ClusterSnapshot.from_loads(kv_load=[100, 80, 60, 90])
    # s = 5 fits under workers 1, 2, 3 (F = 5 for each): the tie goes to the lowest load, worker 2.
    assert make_policy("br0").choose(snap, 5) == 2
    assert make_policy("br0").choose(snap, 30) == 2


def test_jsq_load_and_jsq():
    snap = ClusterSnapshot.from_loads(kv_load=[100, 80, 60, 90], running=[1, 1, 5, 0], waiting=[0, 1, 0, 2])
    assert make_policy("jsq_load").choose(snap, 10) == 2
    assert make_policy("jsq").choose(snap, 10) == 0  # inflight [1, 2, 5, 2]


# ---- vLLM ----------------------------------------------------------------------------------------------------
def test_vllm_default_scores_four_waiting_plus_running_and_bumps_the_choice():
    snap = ClusterSnapshot.from_loads(kv_load=[0, 0, 0], waiting=[1, 0, 0], running=[0, 3, 5], epoch=7)
    policy = make_policy("vllm_default")
    # scores [4, 3, 5] -> 1; bump waiting[1]: [4, 7, 5] -> 0; bump: [8, 7, 5] -> 2; bump: [8, 7, 9] -> 1
    assert [policy.choose(snap, 10) for _ in range(4)] == [1, 0, 2, 1]


def test_vllm_default_bump_is_forgotten_when_the_statistics_refresh():
    policy = make_policy("vllm_default")
    first = ClusterSnapshot.from_loads(kv_load=[0, 0], waiting=[0, 0], running=[0, 1], epoch=1)
    assert policy.choose(first, 1) == 0  # [0, 1]
    assert policy.choose(first, 1) == 1  # bumped: [4, 1]
    refreshed = ClusterSnapshot.from_loads(kv_load=[0, 0], waiting=[0, 0], running=[0, 1], epoch=2)
    assert policy.choose(refreshed, 1) == 0  # bumps reset: [0, 1] again


def test_vllm_default_rotates_its_start_on_exact_ties():
    policy = make_policy("vllm_default")
    # a refresh before every decision wipes the bump, so all workers tie every time: the start rotates
    picks = [policy.choose(ClusterSnapshot.from_loads(kv_load=[0] * 4, epoch=e), 1) for e in range(8)]
    assert picks == [0, 1, 2, 3, 0, 1, 2, 3]


def test_vllm_kv_adds_kv_pressure_to_the_waiting_queue():
    snap = ClusterSnapshot.from_loads(kv_load=[0, 0], waiting=[1, 1], running=[1, 2], inflight=[2, 3],
                                      kv_usage=[0.9, 0.5])
    # worker 0: max(2, 2) + 1*6*0.4 = 4.4; worker 1: max(3, 3) + 0 = 3
    assert make_policy("vllm_kv").choose(snap, 1) == 1


# ---- count policies ---------------------------------------------------------------------------------------------
def test_round_robin_skips_ineligible_workers():
    policy = make_policy("round_robin")
    snap = ClusterSnapshot.from_loads(kv_load=[0] * 4, eligible=[True, False, True, True])
    assert [policy.choose(snap, 1) for _ in range(5)] == [0, 2, 3, 0, 2]


def test_power_of_two_takes_the_less_loaded_of_two_draws():
    snap = ClusterSnapshot.from_loads(kv_load=[0, 0], running=[5, 0])
    assert {make_policy("power_of_two", seed=s).choose(snap, 1) for s in range(10)} == {1}


def test_eligibility_restricts_every_policy():
    snap = table_snapshot([0, 1, 2, 3], [10, 500, 20, 30], num_workers=4,
                               eligible=[False, True, False, False])
    for name in ALL:
        assert make_policy(name).choose(snap, 50) == 1, name


def test_no_eligible_worker_is_a_clear_error():
    snap = table_snapshot([0, 1], [10, 20], num_workers=2, eligible=[False, False])
    for name in ALL:
        with pytest.raises(ValueError, match="no eligible worker"):
            make_policy(name).choose(snap, 5)


# ---- tie-breaks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [4, 24])  # both sides of pick_min's list/numpy switch
@pytest.mark.parametrize("name", ALL)
def test_ties_are_spread_not_sent_to_worker_0(name, num_workers):
    """An all-equal snapshot that is NOT updated between decisions: the decisions must still spread."""
    g = num_workers
    snap = table_snapshot(np.repeat(np.arange(g), 3), np.full(3 * g, 100), np.full(3 * g, 7), num_workers=g)
    policy = make_policy(name)
    counts = Counter(policy.choose(snap, 50) for _ in range(8 * g))
    assert set(counts) == set(range(g)), counts
    if name not in ("random", "power_of_two"):
        assert max(counts.values()) - min(counts.values()) <= 1, counts
    else:
        assert max(counts.values()) <= 0.5 * 8 * g


# ---- make_policy errors -----------------------------------------------------------------------------------------
def test_unknown_policy_names_the_valid_ones():
    with pytest.raises(ValueError) as err:
        make_policy("jsq_lod")
    assert "'jsq_lod'" in str(err.value)
    for name in ALL:
        assert name in str(err.value)


@pytest.mark.parametrize("name,params,message", [
    ("fast_phi", {"K": 0}, r"fast_phi: parameter K must be an integer >= 1, got 0"),
    ("br_h", {"H": -1}, r"br_h: parameter H must be an integer >= 0, got -1"),
    ("bf_io", {"H": -3}, r"bf_io: parameter H must be an integer >= 0"),
    ("br_h", {"gamma": 0.0}, r"br_h: parameter gamma must be a number in \(0.0, 1.0\], got 0.0"),
    ("br_h", {"gamma": 1.5}, r"br_h: parameter gamma must be a number in \(0.0, 1.0\], got 1.5"),
    ("br_h", {"alpha": -1.0}, r"br_h: parameter alpha must be a number >= 0.0"),
    ("br_h", {"beta": -2.0}, r"br_h: parameter beta must be a number >= 0.0"),
    ("br_h", {"H": 2.5}, r"br_h: parameter H must be an integer >= 0, got 2.5"),
    ("br_h", {"predictor": "crystal_ball"},
     r"br_h: parameter predictor must be one of survival, exact_match, oracle; got 'crystal_ball'"),
    ("br0", {"R_max": 0}, r"br0: parameter R_max must be an integer from 1 to 10, got 0"),
    ("br0", {"R_max": 11}, r"br0: parameter R_max must be an integer from 1 to 10, got 11"),
    ("br0", {"S_greedy": -1}, r"br0: parameter S_greedy must be an integer >= 0, got -1"),
    ("bf_io", {"window": 0}, r"bf_io: parameter window must be an integer >= 1, got 0"),
    ("bf_io", {"max_bypass": -1}, r"bf_io: parameter max_bypass must be an integer >= 0, got -1"),
    ("phi", {"prior_mean": 0.5}, r"phi: parameter prior_mean must be a number >= 1.0, got 0.5"),
    ("phi", {"prior_weight": -1.0}, r"phi: parameter prior_weight must be a number >= 0.0"),
    ("fast_phi", {"max_len": 0}, r"fast_phi: parameter max_len must be an integer >= 1, got 0"),
    ("br_h", {"prior_lengths": []}, r"br_h: parameter prior_lengths must be a non-empty list of integers >= 0"),
    ("br_h", {"prior_lengths": [10, -1]}, r"br_h: parameter prior_lengths must be a non-empty list"),
    ("jsq", {"H": 3}, r"jsq: unknown parameter\(s\) H; valid parameters: seed"),
])
def test_bad_parameters_name_the_parameter_and_its_range(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_policy(name, **params)


def test_horizon_policies_without_a_request_table_say_what_they_need():
    snap = ClusterSnapshot.from_loads(kv_load=[1, 2])
    for name in ("br_h", "phi", "fast_phi", "bf_io"):
        assert make_policy(name).needs_requests
        with pytest.raises(ValueError, match="needs snap.requests"):
            make_policy(name).choose(snap, 10)
