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

    def add(self, steps: np.ndarray, time_s: np.ndarray, kv: np.ndarray, running: np.ndarray,
            waiting: np.ndarray) -> None:
        """Offer consecutive steps: their numbers (ascending) and start times, and per step the per-worker load,
        running and waiting counts (steps x workers). Those whose number is a multiple of the stride are kept.

        The result does not depend on how the steps are split into offers: the kept steps are always the multiples
        of the smallest stride (a power of two) at which all the steps offered so far fit.
        """
        keep = np.flatnonzero(steps % self.stride == 0)
        while self.n + keep.size > self.capacity:
            self._thin()
            keep = keep[steps[keep] % self.stride == 0]
        rows = slice(self.n, self.n + keep.size)
        self.time[rows] = time_s[keep]
        self.step[rows] = steps[keep]
        self.kv[rows] = kv[keep]
        self.running[rows] = running[keep]
        self.waiting[rows] = waiting[keep]
        self.n += keep.size

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
