"""The router's central pool in ``pool`` dispatch: requests waiting for a free slot, oldest first.

Arrivals are buffered in a list and merged into the array only when the pool is read, so adding is O(1); the
earliest deadline comes from a lazy heap, so checking it is O(log n) however long the pool. A request's membership
is its status in :class:`~balanceroute.sim.state.RequestState` (``POOLED``); heap entries of requests that left
are skipped when they surface.
"""
from __future__ import annotations

import heapq

import numpy as np

from balanceroute.sim.state import POOLED, RequestState


class CentralPool:
    """Requests held centrally, in arrival order; ``window`` bounds how many the policy is shown per round."""

    def __init__(self, req: RequestState, timeout_s: float, window: int) -> None:
        self.req = req
        self.timeout_s = timeout_s
        self.window = window
        self._ids = np.zeros(0, dtype=np.int64)
        self._new: list[int] = []
        self._deadlines: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return self._ids.size + len(self._new)

    def add(self, r: int) -> None:
        self.req.status[r] = POOLED
        self._new.append(r)
        heapq.heappush(self._deadlines, (float(self.req.client_arrival[r]) + self.timeout_s, r))

    def oldest(self) -> np.ndarray:
        """The first ``window`` waiting requests (the view a placement round offers the policy)."""
        if self._new:
            self._ids = np.concatenate([self._ids, np.asarray(self._new, dtype=np.int64)])
            self._new.clear()
        return self._ids[:self.window]

    def remove(self, positions: np.ndarray) -> None:
        """Drop the requests at ``positions`` of the last :meth:`oldest` view (they were placed)."""
        keep = np.ones(self._ids.size, dtype=bool)
        keep[positions] = False
        self._ids = self._ids[keep]

    def next_deadline(self) -> float:
        heap, status = self._deadlines, self.req.status
        while heap and status[heap[0][1]] != POOLED:
            heapq.heappop(heap)
        return heap[0][0] if heap else np.inf

    def expire(self, now: float) -> list[int]:
        """Take out and return the requests whose deadline is at or before ``now``."""
        late = []
        while self.next_deadline() <= now:
            late.append(heapq.heappop(self._deadlines)[1])
        if late:
            self.oldest()
            self._ids = self._ids[~np.isin(self._ids, late)]
        return late
