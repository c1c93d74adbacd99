"""Latency statistics: mean/median/std/percentiles in milliseconds, from plain or weighted samples.

The simulator reports inter-token latency as step durations weighted by the gaps each step produced (a
million-token run would otherwise hold a million samples); :func:`weighted_percentiles` gives exactly what the
expanded samples would, so simulated and live percentiles are the same statistic.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Latency metrics reported as mean/median/std/pXX in milliseconds, in vLLM's order.
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
DEFAULT_PERCENTILES = (50, 90, 95, 99)


def _percentile_label(p: float) -> str:
    """vLLM's key of a percentile: 99 -> "p99", 99.9 -> "p99.9"."""
    return "p" + (str(int(p)) if int(p) == p else str(p))


@dataclass(frozen=True)
class LatencyStats:
    """One latency metric over its samples, in milliseconds; every figure is NaN when there are no samples."""

    mean_ms: float
    """Mean of the samples (each weighted by how many gaps it stands for, where weights are given)."""
    median_ms: float
    """50th percentile (numpy's default 'linear' interpolation, as vLLM)."""
    std_ms: float
    """Population standard deviation, as ``np.std`` (vLLM's definition)."""
    percentiles_ms: dict[str, float]
    """The requested percentiles by vLLM's label, in the order asked: ``{"p90": ..., "p99": ...}``."""

    def as_dict(self, metric: str) -> dict[str, float]:
        """The result keys of this metric: ``mean_<metric>_ms``, ``median_…``, ``std_…``, then ``p<P>_…``."""
        out = {f"mean_{metric}_ms": self.mean_ms, f"median_{metric}_ms": self.median_ms,
               f"std_{metric}_ms": self.std_ms}
        out.update({f"{label}_{metric}_ms": value for label, value in self.percentiles_ms.items()})
        return out


def weighted_percentiles(values: np.ndarray, weights: np.ndarray | None, percentiles: Sequence[float]
                         ) -> np.ndarray:
    """Percentiles of ``values`` where value i occurs ``weights[i]`` times (non-negative integers).

    Exactly ``np.percentile(np.repeat(values, weights), percentiles)`` (numpy's default 'linear' method:
    virtual index ``(N-1)*p/100`` into the N sorted expanded samples, interpolated between its two neighbours,
    with numpy's own interpolation formula), computed from the cumulative weights without expanding. Empty
    input gives NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    q = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    if weights is None:
        return np.percentile(values, percentiles) if values.size else np.full(q.shape, np.nan)
    weights = np.asarray(weights)
    nz = weights > 0
    values, weights = values[nz], weights[nz]
    if values.size == 0:
        return np.full(q.shape, np.nan)
    order = np.argsort(values)  # the order among equal values does not change the expanded samples
    values = values[order]
    cum = np.cumsum(weights[order].astype(np.int64))  # expanded sample k is values[searchsorted(cum, k, right)]
    n = int(cum[-1])
    virtual = (n - 1) * q
    prev = np.floor(virtual)
    nxt = np.minimum(prev + 1, n - 1)
    a = values[np.searchsorted(cum, prev, side="right")]
    b = values[np.searchsorted(cum, nxt, side="right")]
    gamma = virtual - prev
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)  # numpy's _lerp


def latency_stats(values: np.ndarray, weights: np.ndarray | None, percentiles: Sequence[float]) -> LatencyStats:
    """Statistics of samples in seconds, reported in milliseconds; sample i counts ``weights[i]`` times."""
    if weights is None:
        n = values.size
        mean = float(np.mean(values)) if n else math.nan
        std = float(np.std(values)) if n else math.nan
    else:
        total = float(np.sum(weights))
        mean = float(np.dot(weights, values) / total) if total > 0 else math.nan
        std = float(math.sqrt(np.dot(weights, (values - mean) ** 2) / total)) if total > 0 else math.nan
    pct = weighted_percentiles(values, weights, (50, *percentiles)) * 1000
    return LatencyStats(mean_ms=mean * 1000, median_ms=float(pct[0]), std_ms=std * 1000,
                        percentiles_ms={_percentile_label(p): float(v) for p, v in zip(percentiles, pct[1:])})


def itl_samples(itl_s: np.ndarray | None, itl_weights: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The finite inter-token gaps (s) and their weights, checked: weights are gap counts, one per sample."""
    if itl_s is None:
        if itl_weights is not None:
            raise ValueError("itl_weights given without itl_s")
        return np.zeros(0), None
    values = np.asarray(itl_s, dtype=np.float64).ravel()
    finite = np.isfinite(values)
    if itl_weights is None:
        return values[finite], None
    weights = np.asarray(itl_weights).ravel()
    if weights.shape != values.shape:
        raise ValueError(f"itl_weights must match itl_s: {weights.shape} vs {values.shape}")
    if weights.size and (np.any(weights < 0) or np.any(weights != np.floor(weights))):
        raise ValueError("itl_weights must be non-negative integers (how many gaps each sample stands for)")
    return values[finite], weights[finite].astype(np.int64)


def itl_from_token_times(token_times: Sequence[np.ndarray]) -> np.ndarray:
    """Inter-token latencies (s): the gaps between consecutive token times of each request, concatenated.

    ``token_times[i]`` holds request i's token arrival times in order (first token included); a request with
    k tokens contributes k - 1 gaps, none across requests.
    """
    lens = np.fromiter((len(t) for t in token_times), dtype=np.int64, count=len(token_times))
    total = int(lens.sum())
    if total < 2:
        return np.zeros(0)
    times = np.concatenate([np.asarray(t, dtype=np.float64) for t in token_times])
    gaps = np.diff(times)
    starts = np.cumsum(lens) - lens
    cross = starts[(starts > 0) & (starts < total)] - 1  # gap from one request's last token to the next's first
    keep = np.ones(total - 1, dtype=bool)
    keep[cross] = False
    return gaps[keep]
