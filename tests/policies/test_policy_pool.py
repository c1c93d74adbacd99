"""Pool mode: BR-0's two-stage admission, BR-H's, BF-IO's greedy fill and the FCFS default, by hand."""
from __future__ import annotations

import numpy as np
import pytest
from policy_snapshots import table_snapshot

from balanceroute.policies import ClusterSnapshot, PendingRequests, make_policy
from balanceroute.policies.pool import subset_masks


def placements(assignment):
    return list(zip(assignment.index, assignment.worker))


def pool(*prompts, **extra):
    return PendingRequests(prompt_len=np.array(prompts, dtype=np.int64), **extra)


# ---- BR-0 greedy stage ------------------------------------------------------------------------------------------
def test_br0_greedy_stage_best_request_for_the_freest_worker():
    # free slots [3, 3]: total 6 > S_greedy = 2 -> greedy. Loads [100, 50], M = 100.
    snap = ClusterSnapshot.from_loads([100, 50], free_slots=[3, 3])
    out = make_policy("br0", S_greedy=2).assign(snap, pool(60, 30, 10))
    # 1) tie on free slots -> larger margin: worker 1 (m = 50). F(60) = 60 - 2*10 = 40, F(30) = 30, F(10) = 10.
    # 2) loads [100, 110]; worker 0 has more free slots (3 vs 2), m = 10: F(30) = 30 - 2*20 = -10, F(10) = 10.
    # 3) loads [110, 110], free [2, 2]: the last request goes to one of them.
    assert placements(out)[:2] == [(0, 1), (2, 0)]
    assert out.index[2] == 1 and len(out) == 3


def test_br0_greedy_without_slot_limits_is_best_fit_under_the_envelope():
    snap = ClusterSnapshot.from_loads([100, 50, 0])  # unlimited slots: workers by margin
    out = make_policy("br0").assign(snap, pool(40, 60, 10))
    # worker 2 (m = 100) takes the largest that fits (60); then worker 1 (m = 50) takes 40; then worker 2 (60).
    assert placements(out) == [(1, 2), (0, 1), (2, 2)]


def test_br0_assign_does_not_touch_the_snapshot():
    snap = ClusterSnapshot.from_loads([100, 50], free_slots=[3, 3])
    before = (snap.kv_load.copy(), snap.free_slots.copy(), snap.running.copy())
    make_policy("br0").assign(snap, pool(60, 30, 10))
    assert all(np.array_equal(a, b) for a, b in zip(before, (snap.kv_load, snap.free_slots, snap.running)))


# ---- BR-0 scarce stage --------------------------------------------------------------------------------------------
def test_br0_scarce_stage_picks_the_best_subset_of_the_first_r_max():
    # Only worker 1 has slots (2 <= S_greedy): its margin is 100 - 42 = 58. Candidates: the first R_max = 4.
    snap = ClusterSnapshot.from_loads([100, 42], free_slots=[0, 2])
    out = make_policy("br0", S_greedy=10, R_max=4).assign(snap, pool(50, 24, 30, 5, 7))
    # pairs: {50,5} = 55 -> F 55; {24,30} = 54; {50,24} = 74 -> 74 - 2*16 = 42; singles at most 50.
    assert placements(out) == [(0, 1), (3, 1)]


def test_br0_scarce_stage_subset_size_is_limited_by_free_slots():
    snap = ClusterSnapshot.from_loads([100, 42], free_slots=[0, 3])
    out = make_policy("br0", S_greedy=10, R_max=4).assign(snap, pool(50, 24, 30, 5, 7))
    # with 3 slots {24, 30, 5} = 59 -> F = 59 - 2*1 = 57 beats {50, 5} = 55
    assert placements(out) == [(1, 1), (2, 1), (3, 1)]


def test_br0_scarce_stage_only_looks_at_the_first_r_max():
    snap = ClusterSnapshot.from_loads([100, 42], free_slots=[0, 1])
    # margin 58. R_max = 1: only the head is a candidate: F(80) = 80 - 2*22 = 36. R_max = 2: F(57) = 57 wins.
    assert placements(make_policy("br0", S_greedy=10, R_max=1).assign(snap, pool(80, 57))) == [(0, 1)]
    assert placements(make_policy("br0", S_greedy=10, R_max=2).assign(snap, pool(80, 57))) == [(1, 1)]


def test_br0_starvation_guard_admits_the_single_best_when_every_subset_scores_below_zero():
    # The only worker with a slot is the envelope (margin 0): every subset has F = -(G-1)*Δs < 0.
    snap = ClusterSnapshot.from_loads([100, 40], free_slots=[1, 0])
    out = make_policy("br0", S_greedy=10).assign(snap, pool(30, 20, 25))
    assert placements(out) == [(1, 0)]  # the least harmful request, not nothing


def test_pool_round_stops_when_slots_or_requests_run_out():
    snap = ClusterSnapshot.from_loads([0, 0], free_slots=[1, 1])
    assert len(make_policy("br0").assign(snap, pool(5, 6, 7, 8))) == 2
    assert len(make_policy("br0").assign(snap, pool())) == 0
    full = ClusterSnapshot.from_loads([0, 0], free_slots=[0, 0])
    assert len(make_policy("br0").assign(full, pool(1))) == 0


def test_subset_masks_enumerate_every_nonempty_subset_once():
    masks, sizes, singles = subset_masks(4)
    assert masks.shape == (15, 4)
    assert len({tuple(m) for m in masks}) == 15
    assert np.array_equal(sizes, masks.sum(axis=1))
    assert np.array_equal(masks[singles], np.eye(4, dtype=bool))


# ---- BR-H pool ----------------------------------------------------------------------------------------------------
def test_br_h_pool_mode_sees_departures_within_the_horizon():
    # Worker 0's only request ends after this step, worker 1's stays 50 more (oracle). Equal free slots.
    snap = table_snapshot([0, 1], [100, 90], remaining=[1, 50], num_workers=2, free_slots=[1, 1])
    pending = pool(20, output_len=np.array([50]))
    # BR-0 sees only now: worker 1 has the margin (10 vs 0).
    assert placements(make_policy("br0").assign(snap, pending)) == [(0, 1)]
    # BR-H sees worker 0 empty from step 1 on: the larger margin over the horizon, and F(20) = 11*20 - 2*20 > 0.
    assert placements(make_policy("br_h", H=10, predictor="oracle").assign(snap, pending)) == [(0, 0)]


# ---- BF-IO ----------------------------------------------------------------------------------------------------------
def test_bf_io_pool_round_by_hand():
    # H = 0: ΔJ(j, g) = G*(L_g + s_j - M)_+ - s_j. Loads [100, 40], free [1, 2].
    snap = table_snapshot([0, 1], [100, 40], num_workers=2, free_slots=[1, 2])
    out = make_policy("bf_io", H=0).assign(snap, pool(30, 70, 50, 10))
    # 1) window {30, 70, 50, 10}: on worker 1 ΔJ = 2*(40 + s - 100)_+ - s = -30, -50, -50, -10; on worker 0
    #    every ΔJ = +s. Best -50 on worker 1, the older of 70 and 50; loads [100, 110].
    # 2) window {30, 50, 10}: on worker 0 ΔJ = 2*(100 + s - 110)_+ - s = 10, 30, -10; on worker 1 +s. -> 10 on 0.
    # 3) only worker 1 has a slot: ΔJ = +s, smallest for 30.
    assert placements(out) == [(1, 1), (3, 0), (0, 1)]


def test_bf_io_chooses_which_request_fills_a_single_free_slot():
    """Saturation: one slot frees, on the worker that sets the envelope, so whatever takes it raises the envelope
    by its prompt: the oldest request by 900 tokens, the youngest by 50. FCFS takes the oldest; BF-IO the youngest."""
    snap = table_snapshot([0, 1, 2, 3], [1000, 1300, 1350, 1400], num_workers=4, free_slots=[0, 0, 0, 1])
    waiting = pool(900, 400, 50)
    assert placements(make_policy("jsq_load").assign(snap, waiting)) == [(0, 3)]  # FCFS order
    bf_io = make_policy("bf_io", H=0)
    assert placements(bf_io.assign(snap, waiting)) == [(2, 3)]
    assert bf_io.bypassed == 1  # the head was passed over once


def test_bf_io_places_the_pool_head_after_max_bypass_younger_requests():
    snap = table_snapshot([0, 1], [1000, 1400], num_workers=2, free_slots=[0, 1])
    bf_io = make_policy("bf_io", H=0, max_bypass=3)
    head_first = []
    for _ in range(5):  # the same pool every round: the head (a long prompt) never fits under the envelope
        head_first.append(placements(bf_io.assign(snap, pool(900, 10, 20, 30)))[0][0] == 0)
    assert head_first == [False, False, False, True, False]  # bypassed 3 times, then placed; the count restarts
    assert placements(make_policy("bf_io", H=0, max_bypass=0).assign(snap, pool(900, 10))) == [(0, 1)]


def test_bf_io_on_arrival_minimises_projected_overflow():
    snap = table_snapshot([0, 1], [100, 90], remaining=[1, 50], num_workers=2)
    # JSQ-Load would take worker 1 (90 < 100); over 10 steps worker 0 empties at once.
    assert make_policy("jsq_load").choose(snap, 20) == 1
    assert make_policy("bf_io", H=10, predictor="oracle").choose(snap, 20, output_len=50) == 0


def test_bf_io_oracle_needs_output_lengths_of_new_requests():
    snap = table_snapshot([0, 1], [100, 90], remaining=[1, 50], num_workers=2)
    with pytest.raises(ValueError, match="oracle.*output_len"):
        make_policy("bf_io", predictor="oracle").choose(snap, 20)


# ---- FCFS default -------------------------------------------------------------------------------------------------
def test_fcfs_default_places_in_order_and_later_choices_see_earlier_ones():
    snap = ClusterSnapshot.from_loads([0, 0, 0], free_slots=[1, 2, 0])
    out = make_policy("jsq_load").assign(snap, pool(10, 20, 30, 40))
    assert placements(out) == [(0, 0), (1, 1), (2, 1)]


def test_fcfs_default_of_a_horizon_policy_sees_its_own_placements():
    # fast_phi reads the request table: placed requests must appear in it, or all would pile on one worker.
    snap = table_snapshot([], [], num_workers=4)
    out = make_policy("fast_phi").assign(snap, pool(*[500] * 8))
    assert sorted(np.bincount(out.worker, minlength=4)) == [2, 2, 2, 2]
