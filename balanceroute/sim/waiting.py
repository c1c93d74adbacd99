"""The waiting requests of a step group: one first-come-first-served queue per worker.

A request joins its worker's queue when routed there and leaves it when admitted; a preempted request goes back to
the front (vLLM prepends it). A request that fails while queued keeps its entry, which the admission loop skips
when it surfaces, so failing is O(1) however long the queue; ``count`` counts live entries only (a request's
liveness is its status, ``QUEUED``).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from balanceroute.sim.state import QUEUED


class WaitingQueues:
    """Per worker (local index 0 .. G-1): ``fifo[w]`` its queue, ``count[w]`` its live entries; ``total`` all."""

    def __init__(self, num_workers: int) -> None:
        self.fifo: list[deque[int]] = [deque() for _ in range(num_workers)]
        self.count = np.zeros(num_workers, dtype=np.int64)
        self.total = 0

    def push(self, r: int, w: int) -> None:
        """Request r joins the back of worker w's queue."""
        self.fifo[w].append(r)
        self.count[w] += 1
        self.total += 1

    def push_front(self, r: int, w: int) -> None:
        """Preempted request r goes back to the front of worker w's queue."""
        self.fifo[w].appendleft(r)
        self.count[w] += 1
        self.total += 1

    def leave(self, w: int, k: int = 1) -> None:
        """k live entries of worker w's queue left it: admitted (popped) or failed (skipped when they surface)."""
        self.count[w] -= k
        self.total -= k

    def live(self, status: np.ndarray) -> list[int]:
        """Every request still queued, worker by worker, in queue order."""
        return [r for queue in self.fifo for r in queue if status[r] == QUEUED]
