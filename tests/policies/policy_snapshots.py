"""Snapshots with per-request tables for the policy tests (imported by name: this folder is on sys.path)."""
from __future__ import annotations

import numpy as np

from balanceroute.policies import ClusterSnapshot, RequestTable


def table_snapshot(worker, prompt_len, generated=None, *, num_workers: int, remaining=None, prompt_hash=None,
                   **fields) -> ClusterSnapshot:
    """A snapshot whose kv_load is exactly the sum of the table's loads (what LoadTracker produces)."""
    worker = np.asarray(worker, dtype=np.int64)
    prompt_len = np.asarray(prompt_len, dtype=np.int64)
    generated = np.zeros_like(prompt_len) if generated is None else np.asarray(generated, dtype=np.int64)
    table = RequestTable(
        worker=worker, prompt_len=prompt_len, generated=generated,
        remaining=np.full(len(worker), np.nan) if remaining is None else np.asarray(remaining, dtype=np.float64),
        prompt_hash=np.zeros(len(worker), dtype=np.int64) if prompt_hash is None else np.asarray(prompt_hash))
    load = np.bincount(worker, weights=prompt_len + generated, minlength=num_workers)
    counts = np.bincount(worker, minlength=num_workers)
    fields.setdefault("running", counts)
    return ClusterSnapshot.from_loads(load, requests=table, **fields)
