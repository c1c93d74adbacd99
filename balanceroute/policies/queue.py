"""Policies that look only at request counts: round_robin, random, power_of_two, jsq.

These are the classic load-balancing baselines (Mitzenmacher's power of two choices; join-the-shortest-queue).
They ignore how many tokens a request brings, which is exactly what KV-aware policies improve on.
"""
from __future__ import annotations

import numpy as np

from balanceroute.policies.base import ClusterSnapshot
from balanceroute.policies.policy import Policy, register_policy


def _eligible_indices(snap: ClusterSnapshot) -> np.ndarray:
    if snap.eligible is None:
        return np.arange(snap.num_workers)
    idx = np.flatnonzero(snap.eligible)
    if idx.size == 0:
        raise ValueError("no eligible worker to choose from")
    return idx


@register_policy("round_robin")
class RoundRobin(Policy):
    """Next worker in turn (skipping ineligible ones)."""

    def choose(self, snap, prompt_len, **request):
        g = snap.num_workers
        for step in range(g):
            w = (self._cursor + step) % g
            if snap.eligible is None or snap.eligible[w]:
                self._cursor = (w + 1) % g
                return w
        raise ValueError("no eligible worker to choose from")


@register_policy("random")
class Random(Policy):
    """A uniformly random worker, from the policy's seeded generator."""

    def choose(self, snap, prompt_len, **request):
        idx = _eligible_indices(snap)
        return int(idx[self.rng.integers(idx.size)])


@register_policy("power_of_two")
class PowerOfTwo(Policy):
    """Two distinct random workers; the one with fewer in-flight requests (the first drawn on a tie)."""

    def choose(self, snap, prompt_len, **request):
        idx = _eligible_indices(snap)
        if idx.size == 1:
            return int(idx[0])
        a, b = self.rng.choice(idx, size=2, replace=False)
        return int(b if snap.inflight[b] < snap.inflight[a] else a)


@register_policy("jsq")
class JoinShortestQueue(Policy):
    """Join the shortest queue: fewest in-flight requests (running + waiting)."""

    def choose(self, snap, prompt_len, **request):
        return self.pick_min(snap, snap.inflight)
