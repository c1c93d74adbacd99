"""LoadTracker: the bookkeeping that feeds every policy keeps exact sums, and Router wires it to a policy."""
from __future__ import annotations

import numpy as np
import pytest

from balanceroute.load import LoadTracker, Router, UnknownRequestError
from balanceroute.policies import PendingRequests, make_policy


def recomputed(tracker: LoadTracker, records: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-worker (kv_load, running, waiting) recomputed from scratch from our own records."""
    g = tracker.num_workers
    load, running, waiting = np.zeros(g), np.zeros(g, dtype=np.int64), np.zeros(g, dtype=np.int64)
    for worker, prompt, generated, is_running in records.values():
        load[worker] += prompt + generated
        (running if is_running else waiting)[worker] += 1
    return load, running, waiting


def test_random_event_sequence_keeps_every_sum_exact():
    rng = np.random.default_rng(7)
    tracker = LoadTracker(5, max_num_seqs=40, initial_slots=16)  # small: forces the slot arrays to grow
    records: dict[int, list] = {}
    next_id = 0
    for _ in range(3000):
        event = rng.integers(6) if records else 0
        rid = int(rng.choice(list(records))) if records else None
        if event == 0:
            worker, prompt = int(rng.integers(5)), int(rng.integers(1, 4000))
            tracker.routed(next_id, worker, prompt)
            records[next_id] = [worker, prompt, 0, False]
            next_id += 1
        elif event == 1:
            tracker.started(rid)
            records[rid][3] = True
        elif event == 2:
            tracker.preempted(rid)
            records[rid][3] = False
        elif event == 3:
            n = int(rng.integers(1, 9))
            tracker.tokens(rid, n)
            records[rid][2] += n
        elif event == 4:
            assert tracker.finished(rid) == records.pop(rid)[2]
        else:
            assert tracker.aborted(rid) == records.pop(rid)[2]
        if rng.random() < 0.05 and records:  # one simulated decode step for a random batch
            ids = rng.choice(list(records), size=min(len(records), 7), replace=False)
            tracker.tokens_bulk(np.array([tracker.slot_of(int(i)) for i in ids]), 1)
            for i in ids:
                records[int(i)][2] += 1
    load, running, waiting = recomputed(tracker, records)
    snap = tracker.snapshot(with_requests=True)
    assert np.array_equal(snap.kv_load, load)
    assert np.array_equal(snap.running, running) and np.array_equal(snap.waiting, waiting)
    assert np.array_equal(snap.inflight, running + waiting)
    assert np.array_equal(snap.free_slots, np.maximum(40 - running - waiting, 0))
    table = snap.requests
    assert len(table) == len(records) == len(tracker)
    assert np.array_equal(np.bincount(table.worker, weights=table.load, minlength=5), load)


def test_bulk_tokens_with_per_request_counts():
    tracker = LoadTracker(2)
    slots = np.array([tracker.routed(i, i % 2, 100) for i in range(4)])
    tracker.tokens_bulk(slots, np.array([1, 2, 3, 4]))
    tracker.tokens_bulk(slots[:0], 5)  # nothing to do
    assert tracker.kv_load.tolist() == [200 + 1 + 3, 200 + 2 + 4]
    assert [tracker.generated_of(i) for i in range(4)] == [1, 2, 3, 4]


def test_prompt_correction_keeps_worker_state_and_generated_and_releases_exactly():
    tracker = LoadTracker(2)
    tracker.routed("r", 1, 40, prompt_hash=7, running=True)
    tracker.tokens("r", 5)
    epoch = tracker.epoch
    tracker.set_prompt_len("r", 12)
    assert tracker.kv_load.tolist() == [0, 17] and tracker.epoch > epoch
    assert tracker.generated_of("r") == 5 and tracker.prompt_hash_of("r") == 7 and tracker.running.tolist() == [0, 1]
    assert tracker.request_table().prompt_len.tolist() == [12]
    tracker.finished("r")
    assert tracker.kv_load.tolist() == [0, 0]


def test_released_load_returns_exactly_to_zero():
    tracker = LoadTracker(3)
    rng = np.random.default_rng(1)
    for i in range(500):
        tracker.routed(i, i % 3, int(rng.integers(1, 10**6)), running=bool(i % 2))
        tracker.tokens(i, int(rng.integers(0, 10**4)))
    for i in range(500):
        (tracker.finished if i % 3 else tracker.aborted)(i)
    assert tracker.kv_load.tolist() == [0.0, 0.0, 0.0]
    assert tracker.running.tolist() == [0, 0, 0] and tracker.waiting.tolist() == [0, 0, 0]
    assert len(tracker) == 0 and len(tracker.request_table()) == 0


def test_unknown_and_duplicate_requests_are_errors():
    tracker = LoadTracker(2)
    tracker.routed("a", 0, 10)
    with pytest.raises(ValueError, match="already routed"):
        tracker.routed("a", 1, 10)
    with pytest.raises(ValueError, match="out of range"):
        tracker.routed("b", 2, 10)
    tracker.finished("a")
    for event in (tracker.finished, tracker.aborted, tracker.started, tracker.tokens):
        with pytest.raises(UnknownRequestError, match="'a' is not routed or already released"):
            event("a")
    assert isinstance(UnknownRequestError(), KeyError)


def test_snapshot_epoch_moves_with_every_event():
    tracker = LoadTracker(2)
    epochs = [tracker.snapshot().epoch]
    tracker.routed(1, 0, 5)
    epochs.append(tracker.snapshot().epoch)
    tracker.tokens(1)
    epochs.append(tracker.snapshot().epoch)
    tracker.finished(1)
    epochs.append(tracker.snapshot().epoch)
    assert epochs == sorted(set(epochs))


def test_router_routes_records_and_runs_pool_rounds():
    router = Router(make_policy("br0"), LoadTracker(2, max_num_seqs=2))
    assert router.route("x", 300) in (0, 1)
    other = 1 - router.tracker.worker_of("x")
    assert router.route("y", 100) == other  # the least loaded
    out = router.place_pool(["p", "q", "r"], PendingRequests(prompt_len=np.array([50, 60, 70])))
    assert len(out) == 2  # two free slots left
    assert router.tracker.running.sum() == 2 and router.tracker.waiting.sum() == 2
    placed = [50, 60, 70][out.index[0]] + [50, 60, 70][out.index[1]]
    assert router.abort("x") == 0
    assert router.tracker.kv_load.sum() == 100 + placed
