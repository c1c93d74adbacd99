"""Balance across workers: per-worker request and token counts, and the step-level KV balance of a run.

Balance is what routing changes, so these are the figures the study compares (ALGORITHMS.md sections 1 and 4):
imbalance I(k) = G*max_g L_g(k) - sum_g L_g(k), the max-min spread, and the barrier idle fraction.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from balanceroute.policies.checks import int_problem


def row_max(a: np.ndarray) -> np.ndarray:
    """The largest entry of each row of a (steps x workers) array, as ``a.max(axis=1)`` (the same values: a
    maximum does not round), several times faster on a few columns: numpy reduces short rows one at a time, while
    the rows of the transposed copy are combined element-wise."""
    return np.maximum.reduce(np.ascontiguousarray(a.T), axis=0)


def row_min(a: np.ndarray) -> np.ndarray:
    """The smallest entry of each row, as :func:`row_max`."""
    return np.minimum.reduce(np.ascontiguousarray(a.T), axis=0)


def per_worker_counts(requests: pd.DataFrame, num_workers: int | None = None) -> dict[str, Any]:
    """Requests, prompt tokens and generated output tokens per worker, over every routed request.

    Lists of length ``num_workers`` (default: highest worker index + 1); requests with worker -1 (never routed)
    are not counted.
    """
    worker = requests["worker"].to_numpy(dtype=np.int64)
    routed = worker >= 0
    top = int(worker.max()) + 1 if routed.any() else 0
    g = top if num_workers is None else int(num_workers)
    if top > g:
        raise ValueError(f"request routed to worker {top - 1} but num_workers={g}; valid workers: 0..{g - 1}")
    w = worker[routed]

    def count(col: str | None) -> list[int]:
        weights = None if col is None else requests[col].to_numpy(dtype=np.int64)[routed]
        return np.bincount(w, weights=weights, minlength=g).astype(np.int64).tolist()

    return {"worker_requests": count(None), "worker_prompt_tokens": count("prompt_len"),
            "worker_output_tokens": count("output_len")}


class BalanceAccumulator:
    """Running balance metrics of a step-synchronous run, fed once per engine step.

    ``add_step(kv_load)`` with the per-worker KV load L_g (tokens) of the step; with ``local_time_s``
    (per-worker local times t_g) and optionally ``step_time_s`` (the barrier step time T_k, default
    max_g t_g) it also accounts the barrier idle time. Steps are copied into a fixed block of ``block`` rows
    and reduced a block at a time, so a step costs one row copy (about 1 us) and memory stays constant however
    long the run.
    """

    def __init__(self, num_workers: int, *, block: int = 1024) -> None:
        problem = int_problem(num_workers, 1)
        if problem:
            raise ValueError(f"num_workers {problem}")
        self.num_workers = g = int(num_workers)
        self._shape = (g,)
        self._kv = np.zeros((block, g))
        self._local = np.zeros((block, g))
        self._step = np.full(block, np.nan)  # NaN: no explicit step time, use max_g t_g
        self._timed = np.zeros(block, dtype=bool)
        self._rows = 0  # filled rows of the block
        self._flushed_steps = 0
        self._imbalance = self._spread = self._load = 0.0
        self._timed_steps = 0
        self._idle = self._step_time = 0.0

    @property
    def num_steps(self) -> int:
        return self._flushed_steps + self._rows

    def add_step(self, kv_load: np.ndarray, local_time_s: np.ndarray | None = None,
                 step_time_s: float | None = None) -> None:
        """Account one step: per-worker KV load, and optionally per-worker local times and the step time."""
        if kv_load.shape != self._shape:
            raise ValueError(f"kv_load must have shape {self._shape}, got {kv_load.shape}")
        row = self._rows
        self._kv[row] = kv_load
        if local_time_s is None:
            if step_time_s is not None:
                raise ValueError("step_time_s needs local_time_s (the per-worker local times)")
            self._timed[row] = False
        else:
            if local_time_s.shape != self._shape:
                raise ValueError(f"local_time_s must have shape {self._shape}, got {local_time_s.shape}")
            self._local[row] = local_time_s
            self._step[row] = np.nan if step_time_s is None else step_time_s
            self._timed[row] = True
        self._rows = row + 1
        if self._rows == len(self._kv):
            self._flush()

    def add_steps(self, kv_load: np.ndarray, local_time_s: np.ndarray, step_time_s: np.ndarray) -> None:
        """Account k timed steps at once: ``kv_load`` and ``local_time_s`` of shape (k, G), ``step_time_s`` (k,).

        The same accounting as k calls of :meth:`add_step`, copied block-wise (the simulator records steps in
        batches, and a Python call per step was a measurable share of its run time).
        """
        k = len(kv_load)
        if kv_load.shape != (k, self.num_workers) or local_time_s.shape != kv_load.shape or len(step_time_s) != k:
            raise ValueError(f"add_steps needs kv_load and local_time_s of shape (k, {self.num_workers}) and "
                             f"step_time_s of length k; got {kv_load.shape}, {local_time_s.shape}, "
                             f"{np.shape(step_time_s)}")
        done = 0
        while done < k:
            row = self._rows
            take = min(k - done, len(self._kv) - row)
            self._kv[row:row + take] = kv_load[done:done + take]
            self._local[row:row + take] = local_time_s[done:done + take]
            self._step[row:row + take] = step_time_s[done:done + take]
            self._timed[row:row + take] = True
            self._rows = row + take
            done += take
            if self._rows == len(self._kv):
                self._flush()

    def _flush(self) -> None:
        n, g = self._rows, self.num_workers
        if n == 0:
            return
        kv = self._kv[:n]
        top = row_max(kv)
        total = kv.sum(axis=1)
        self._imbalance += float(np.sum(g * top - total))
        self._spread += float(np.sum(top - row_min(kv)))
        self._load += float(total.sum())
        timed = self._timed[:n]
        if timed.any():
            local = self._local[:n][timed]
            slowest = row_max(local)
            step = self._step[:n][timed]
            step = np.where(np.isnan(step), slowest, step)
            short = np.flatnonzero(step < slowest)
            if short.size:
                k = self._flushed_steps + int(np.flatnonzero(timed)[short[0]])
                raise ValueError(f"step {k}: step_time_s={step[short[0]]} is shorter than the slowest worker's "
                                 f"local time {slowest[short[0]]}; a barrier step lasts at least max_g t_g")
            self._idle += float(np.sum(g * step - local.sum(axis=1)))
            self._step_time += float(step.sum())
            self._timed_steps += int(timed.sum())
        self._flushed_steps += n
        self._rows = 0

    def summary(self) -> dict[str, Any]:
        """``num_workers``, ``num_steps``, ``mean_imbalance`` and ``mean_spread`` (tokens), ``mean_kv_load``
        (tokens per worker), and ``barrier_idle_fraction`` when any step had local times. Means over no steps
        are NaN."""
        self._flush()
        steps, g = self._flushed_steps, self.num_workers
        out: dict[str, Any] = {
            "num_workers": g,
            "num_steps": steps,
            "mean_imbalance": self._imbalance / steps if steps else math.nan,
            "mean_spread": self._spread / steps if steps else math.nan,
            "mean_kv_load": self._load / (steps * g) if steps else math.nan,
        }
        if self._timed_steps:
            out["barrier_idle_fraction"] = self._idle / (g * self._step_time) if self._step_time > 0 else math.nan
        return out
