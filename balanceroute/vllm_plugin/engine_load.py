"""The load a vLLM front-end client routes by: exact KV tokens from its own requests, queue counts from vLLM.

A :class:`~balanceroute.load.LoadTracker` tracks what only the router can know exactly: the KV tokens of every
request it sent to each engine (prompt at routing, plus every token the engine reports, released at finish or
abort). What only the engines know — how many requests wait or run there and the fraction of KV cache in use — comes
from vLLM's DP coordinator, which publishes ``[waiting, running, kv_cache_usage]`` per engine about every 100 ms
and which the client stores in ``lb_engines`` by *replacing* the list. Each replacement is one refresh, and the
refresh count is the snapshot's ``epoch``: the optimistic bumps of ``vllm_default``/``vllm_kv`` then last exactly
as long as vLLM's own (until the next coordinator update), so those policies in the plugin route as vLLM does.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from balanceroute.load import LoadTracker
from balanceroute.policies.base import ClusterSnapshot


class EngineLoadTracker(LoadTracker):
    """:class:`LoadTracker` whose snapshot takes waiting, running, KV usage and in-flight counts from vLLM.

    ``kv_load`` and the request table are this tracker's own (exact); :meth:`coordinator_counts` sets the
    coordinator's latest counts and :meth:`set_inflight` vLLM's exact per-engine count of unfinished requests.
    Each snapshot is an independent record of what the policy saw (its arrays are copies), so the decision log
    can store it after the routing has changed the tracker.
    """

    def __init__(self, num_engines: int, *, kv_capacity: float | None = None) -> None:
        super().__init__(num_engines, kv_capacity=kv_capacity)
        self.coord_waiting = np.zeros(num_engines, dtype=np.int64)
        self.coord_running = np.zeros(num_engines, dtype=np.int64)
        self.coord_usage = np.zeros(num_engines, dtype=np.float64)
        self.inflight = np.zeros(num_engines, dtype=np.int64)
        self.refreshes = 0
        self.last_snapshot: ClusterSnapshot | None = None

    def coordinator_counts(self, counts: Sequence[Sequence[float]]) -> None:
        """A new coordinator update: ``counts[g]`` is ``[waiting, running]`` or ``[waiting, running, kv_usage]``."""
        arr = np.asarray(counts, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != self.num_workers or arr.shape[1] < 2:
            raise ValueError(f"coordinator counts must be [waiting, running(, kv_usage)] for each of "
                             f"{self.num_workers} engines, got {counts!r}")
        self.coord_waiting[:] = arr[:, 0]
        self.coord_running[:] = arr[:, 1]
        self.coord_usage[:] = arr[:, 2] if arr.shape[1] > 2 else 0.0
        self.refreshes += 1

    def set_inflight(self, inflight: Sequence[int]) -> None:
        self.inflight[:] = inflight

    def snapshot(self, *, with_requests: bool = False) -> ClusterSnapshot:
        snap = super().snapshot(with_requests=with_requests)
        snap = dataclasses.replace(
            snap, kv_load=snap.kv_load.copy(), waiting=self.coord_waiting.copy(),
            running=self.coord_running.copy(), inflight=self.inflight.copy(), kv_usage=self.coord_usage.copy(),
            epoch=self.refreshes)
        self.last_snapshot = snap
        return snap
