"""A bounded per-step timeline of per-worker load, for plots.

Every ``stride``-th engine step is kept (all workers of the step). When the buffer is full, every other kept step
is dropped and the stride doubles, so a run of any length ends with between half and all of ``max_rows`` rows,
evenly spaced in steps.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

TIMELINE_COLUMNS = ("time_s", "step", "worker", "kv_load", "running", "waiting")


class TimelineBuffer:
    """Sampled steps of one step group (its workers share a step counter)."""

    def __init__(self, workers: np.ndarray, max_rows: int) -> None:
        self.workers = np.asarray(workers, dtype=np.int64)
        g = len(self.workers)
        self.capacity = max(2, max_rows // g)
        self.stride = 1
        self.n = 0
        self.time = np.empty(self.capacity)
        self.step = np.empty(self.capacity, dtype=np.int64)
        self.kv = np.empty((self.capacity, g))
        self.running = np.empty((self.capacity, g), dtype=np.int64)
        self.waiting = np.empty((self.capacity, g), dtype=np.int64)

    def wants(self, first_step: int, count: int) -> bool:
        """Whether any of ``count`` consecutive steps from ``first_step`` on would be kept (once the timeline is
        thinned, most stretches have none: the caller then need not prepare them)."""
        return (-first_step) % self.stride < count

    def add(self, first_step: int, start_s: float, ends_s: np.ndarray, kv0: np.ndarray, kv_step: int,
            running: np.ndarray, waiting: np.ndarray) -> None:
        """Offer ``len(ends_s)`` consecutive steps, the first numbered ``first_step``, starting at ``start_s`` and
        ending at ``ends_s``, with the per-worker running and waiting counts of the whole span.

        Step i of them had per-worker load ``kv0 + (kv_step + i) * running``: it is step ``kv_step + i`` of a
        plan, and each step of a plan after its first adds a token per running request.
        """
        count = len(ends_s)
        m0 = (-first_step) % self.stride
        if m0 >= count:  # the common case once thinned: nothing to keep
            return
        if m0 + self.stride >= count and self.n < self.capacity:  # exactly one step to keep
            row = self.n
            self.time[row] = ends_s[m0 - 1] if m0 else start_s
            self.step[row] = first_step + m0
            self.kv[row] = kv0 + (kv_step + m0) * running
            self.running[row] = running
            self.waiting[row] = waiting
            self.n = row + 1
            return
        while True:
            m = np.arange((-first_step) % self.stride, count, self.stride)
            if self.n + m.size <= self.capacity:
                break
            self._thin()
            if (-first_step) % self.stride >= count:
                return
        rows = slice(self.n, self.n + m.size)
        self.time[rows] = ends_s[m - 1]  # each step starts when the one before it ends
        if m[0] == 0:
            self.time[self.n] = start_s
        self.step[rows] = first_step + m
        self.kv[rows] = kv0 + (kv_step + m[:, None]) * running
        self.running[rows] = running
        self.waiting[rows] = waiting
        self.n += m.size

    def _thin(self) -> None:
        self.stride *= 2
        keep = np.flatnonzero(self.step[:self.n] % self.stride == 0)
        for arr in (self.time, self.step, self.kv, self.running, self.waiting):
            arr[:keep.size] = arr[keep]
        self.n = keep.size


def timeline_frame(buffers: list[TimelineBuffer]) -> pd.DataFrame:
    """One long frame (a row per sampled step and worker) from the groups' buffers, ordered by time, worker."""
    parts = []
    for buf in buffers:
        n, g = buf.n, len(buf.workers)
        parts.append(pd.DataFrame({
            "time_s": np.repeat(buf.time[:n], g),
            "step": np.repeat(buf.step[:n], g),
            "worker": np.tile(buf.workers, n),
            "kv_load": buf.kv[:n].ravel(),
            "running": buf.running[:n].ravel(),
            "waiting": buf.waiting[:n].ravel(),
        }))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=np.float64 if c in ("time_s", "kv_load") else np.int64)
                             for c in TIMELINE_COLUMNS})
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    if len(parts) > 1:
        frame = frame.sort_values(["time_s", "worker"], kind="stable", ignore_index=True)
    return frame
