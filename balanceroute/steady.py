"""Steady-window metrics: the run's figures over the span in which every slot of every worker is busy.

A finite saturated run has a ramp-up (slots filling) and a drain (the last long requests finishing nearly alone,
which adds about (G-1)*L of imbalance per step). Averaged over every step these dominate and hide what routing
does (ALGORITHMS.md section 4, "Steady window"). The papers' saturated tables compare steady values, so every
result.json carries, beside the all-run figures:

- ``steady_window``: how the window was found: ``saturated`` (first to last step in which all G*B slots were
  running, from the backend's per-step trace) or ``cut`` (the run never stayed saturated for
  ``min_saturated_steps`` steps, or the backend has no per-step trace: the span from the first to the last
  arrival, while the load is offered, with ``warmup_fraction`` of it cut from its start and ``cooldown_fraction``
  from its end; when every request arrived at once, the span from the arrival to the last finish instead);
- ``steady_window_start_s``, ``steady_window_s`` (its length) and ``steady_saturated_fraction`` (share of the
  window's steps with every slot busy; NaN without a step trace);
- ``steady_mean_imbalance`` (tokens, mean of I(k) = G*max_g L_g - sum_g L_g over the window's steps),
  ``steady_barrier_idle_fraction`` (sum of waits at the barrier / (G * summed step time) over those steps):
  both NaN without a step trace;
- ``steady_output_throughput``: output tokens produced inside the window per second of it (from the step trace;
  without one, each completed request's tokens are spread evenly between its first and last token);
- ``steady_p95_tpot_ms`` and ``steady_mean_tpot_ms``: TPOT of the completed requests whose whole decode (first
  to last token) lies inside the window.

:class:`StepTrace` is what a step-synchronous backend (the simulator) records per engine step for this.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from balanceroute.metrics.balance import row_max
from balanceroute.policies.checks import int_problem, number_problem

#: Columns of a step trace: step start (s), step length (s), imbalance (tokens), summed barrier wait of the
#: workers (s), running requests over all workers, output tokens sampled in the step.
STEP_COLUMNS = ("start_s", "step_s", "imbalance", "idle_s", "running", "tokens")


@dataclass  # not frozen: it is also the schema of the config section, which Hydra fills in
class SteadyWindow:
    """How the steady window is chosen (config section ``steady``; see the module docstring)."""

    warmup_fraction: float = 0.1
    cooldown_fraction: float = 0.1
    min_saturated_steps: int = 100

    def __post_init__(self) -> None:
        for name in ("warmup_fraction", "cooldown_fraction"):
            problem = number_problem(getattr(self, name), 0, 1, high_open=True)
            if problem:
                raise ValueError(f"{name} (a fraction of the run) {problem}")
        if self.warmup_fraction + self.cooldown_fraction >= 1:
            raise ValueError(f"warmup_fraction + cooldown_fraction must be < 1 (something must be left), got "
                             f"{self.warmup_fraction} + {self.cooldown_fraction}")
        problem = int_problem(self.min_saturated_steps, 1)
        if problem:
            raise ValueError(f"min_saturated_steps {problem}")


class StepTrace:
    """Per-step figures of a step-synchronous run (:data:`STEP_COLUMNS`), appended a batch of steps at a time.

    The batches are kept as they come and joined when the frame is read (a million steps take about 48 MB).
    """

    def __init__(self) -> None:
        self._batches: list[np.ndarray] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, start_s: np.ndarray, step_s: np.ndarray, kv_load: np.ndarray, busy_s: np.ndarray,
            running: int, tokens: np.ndarray | int) -> None:
        """k steps: their starts and lengths (k,), per-worker KV loads and busy times (k, G) (a worker's wait at
        the barrier is the step length minus its busy time), running requests (the same in all k) and tokens
        sampled per step."""
        k = len(step_s)
        g = kv_load.shape[1]
        rows = np.empty((len(STEP_COLUMNS), k))
        rows[0] = start_s
        rows[1] = step_s
        rows[2] = g * row_max(kv_load) - kv_load.sum(axis=1)
        rows[3] = g * step_s - busy_s.sum(axis=1)
        rows[4] = running
        rows[5] = tokens
        self._batches.append(rows)
        self._n += k

    def frame(self) -> pd.DataFrame:
        """The steps as a frame: each column joined from the batches once, into an array the frame owns."""
        return pd.DataFrame({name: np.concatenate([batch[i] for batch in self._batches]) if self._batches
                             else np.empty(0) for i, name in enumerate(STEP_COLUMNS)}, copy=False)


def _arrival_span(requests: pd.DataFrame) -> tuple[float, float] | None:
    """The span a cut window is taken from: first to last arrival (the load is offered only while requests
    arrive; after the last one the run drains), or first arrival to last finish when every request arrived at
    once. None for a run in which nothing finished."""
    arrival = requests["arrival_s"].to_numpy(dtype=np.float64)
    finish = requests["finish_s"].to_numpy(dtype=np.float64, na_value=np.nan)
    finished = finish[np.isfinite(finish)]
    if not arrival.size or not finished.size:
        return None
    t0, t_last = float(arrival.min()), float(arrival.max())
    return (t0, t_last) if t_last > t0 else (t0, float(finished.max()))


def saturated_span(steps: pd.DataFrame, slots_total: int, min_steps: int) -> tuple[int, int] | None:
    """(first, last) index of the steps with every slot running, if at least ``min_steps`` of them."""
    full = np.flatnonzero(steps["running"].to_numpy() >= slots_total)
    if full.size < min_steps:
        return None
    return int(full[0]), int(full[-1])


def _decodes(requests: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-token time, last-token time and output tokens of the completed requests that have both times."""
    done = requests[requests["status"].astype(object) == "completed"]
    first = done["first_token_s"].to_numpy(dtype=np.float64)
    last = done["finish_s"].to_numpy(dtype=np.float64)
    out = done["output_len"].to_numpy(dtype=np.float64)
    ok = np.isfinite(first) & np.isfinite(last)
    return first[ok], last[ok], out[ok]


def _tokens_in_window(first: np.ndarray, last: np.ndarray, out: np.ndarray, start: float, end: float) -> float:
    """Output tokens produced in [start, end], each request's tokens spread evenly between its first and last
    token (for backends without a step trace)."""
    span = last - first
    overlap = np.clip(np.minimum(last, end) - np.maximum(first, start), 0, None)
    share = np.where(span > 0, overlap / np.where(span > 0, span, 1), ((first >= start) & (first <= end)) * 1.0)
    return float(np.sum(out * share))


def _tpot_inside(first: np.ndarray, last: np.ndarray, out: np.ndarray, start: float, end: float) -> np.ndarray:
    """TPOT (s) of the requests with more than one output token whose decode lies within [start, end]."""
    inside = (out > 1) & (first >= start) & (last <= end)
    return (last[inside] - first[inside]) / (out[inside] - 1)


def steady_metrics(requests: pd.DataFrame, steps: pd.DataFrame | None, *, num_workers: int,
                   slots_per_worker: int | None, window: SteadyWindow | None = None) -> dict[str, Any]:
    """The ``steady_*`` keys of result.json (module docstring) from the per-request records and, where the
    backend has one, its step trace (:meth:`StepTrace.frame`); ``window``: the defaults when None."""
    window = window or SteadyWindow()
    has_steps = steps is not None and len(steps) > 0 and slots_per_worker is not None
    span = saturated_span(steps, num_workers * slots_per_worker, window.min_saturated_steps) if has_steps else None
    if span is not None:
        kind = "saturated"
        first, last = span
        start = float(steps["start_s"].iat[first])
        end = float(steps["start_s"].iat[last] + steps["step_s"].iat[last])
    else:
        kind = "cut"
        span_s = _arrival_span(requests)
        if span_s is None:
            return _empty(kind)
        t0, t1 = span_s
        start = t0 + window.warmup_fraction * (t1 - t0)
        end = t1 - window.cooldown_fraction * (t1 - t0)
    length = end - start
    decodes = _decodes(requests)
    out: dict[str, Any] = {"steady_window": kind, "steady_window_start_s": start, "steady_window_s": length}
    if has_steps:
        begins = steps["start_s"].to_numpy()
        inside = steps[(begins >= start) & (begins < end)]
        step_time = float(inside["step_s"].sum())
        out["steady_saturated_fraction"] = float(np.mean(inside["running"].to_numpy() >= num_workers
                                                         * slots_per_worker)) if len(inside) else math.nan
        out["steady_mean_imbalance"] = float(inside["imbalance"].mean()) if len(inside) else math.nan
        out["steady_barrier_idle_fraction"] = (float(inside["idle_s"].sum()) / (num_workers * step_time)
                                               if step_time > 0 else math.nan)
        tokens = float(inside["tokens"].sum())
    else:
        out.update(steady_saturated_fraction=math.nan, steady_mean_imbalance=math.nan,
                   steady_barrier_idle_fraction=math.nan)
        tokens = _tokens_in_window(*decodes, start, end)
    out["steady_output_throughput"] = tokens / length if length > 0 else math.nan
    tpot = _tpot_inside(*decodes, start, end)
    out["steady_mean_tpot_ms"] = float(tpot.mean() * 1000) if tpot.size else math.nan
    out["steady_p95_tpot_ms"] = float(np.percentile(tpot, 95) * 1000) if tpot.size else math.nan
    return out


def _empty(kind: str) -> dict[str, Any]:
    keys = ("steady_window_start_s", "steady_window_s", "steady_saturated_fraction", "steady_mean_imbalance",
            "steady_barrier_idle_fraction", "steady_output_throughput", "steady_mean_tpot_ms", "steady_p95_tpot_ms")
    return {"steady_window": kind, **{k: math.nan for k in keys}}
