"""vLLM's own data-parallel routing rules, as baselines.

``vllm_default`` is ``DPLBAsyncMPClient.get_core_engine_for_request`` of vLLM <= 0.26: the lowest
``4 * waiting + running`` over the coordinator's counts, which are refreshed about every 100 ms; between refreshes
the client adds 1 to the chosen engine's waiting count so that a burst does not all go to one engine. vLLM
starts its scan at a fixed per-client index; as ALGORITHMS.md specifies we rotate the start (identical whenever
there is no exact tie, and it keeps ties off worker 0).

``vllm_kv`` is the newer score that adds KV-cache pressure: ``max(inflight, waiting + running)
+ waiting * 6 * max(0, kv_usage - 0.5)``.
"""
from __future__ import annotations

import numpy as np

from balanceroute.policies.base import ClusterSnapshot
from balanceroute.policies.policy import Policy, register_policy


class _OptimisticWaiting(Policy):
    """Adds the optimistic ``waiting += 1`` bump, forgotten when the snapshot's statistics are refreshed."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._bump: np.ndarray | None = None
        self._epoch: int | None = None

    def _waiting(self, snap: ClusterSnapshot) -> np.ndarray:
        if self._epoch != snap.epoch or self._bump is None or len(self._bump) != snap.num_workers:
            self._bump = np.zeros(snap.num_workers, dtype=np.int64)
            self._epoch = snap.epoch
        return snap.waiting + self._bump

    def _bumped(self, worker: int) -> int:
        self._bump[worker] += 1
        return worker


@register_policy("vllm_default")
class VllmDefault(_OptimisticWaiting):
    """argmin 4*waiting + running, with the optimistic waiting bump (vLLM <= 0.26)."""

    def choose(self, snap, prompt_len, **request):
        return self._bumped(self.pick_min(snap, 4 * self._waiting(snap) + snap.running))


@register_policy("vllm_kv")
class VllmKv(_OptimisticWaiting):
    """argmin max(inflight, waiting + running) + waiting * 6 * max(0, kv_usage - 0.5) (newer vLLM)."""

    def choose(self, snap, prompt_len, **request):
        waiting = self._waiting(snap)
        score = np.maximum(snap.inflight, waiting + snap.running) + waiting * 6.0 * np.maximum(
            0.0, snap.kv_usage - 0.5)
        return self._bumped(self.pick_min(snap, score))
