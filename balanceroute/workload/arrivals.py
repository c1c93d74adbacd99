"""Arrival times: Poisson / gamma-burstiness / all-at-once, as ``vllm bench serve`` draws them.

Every source that is not replayed on a trace's own clock is timed here, so a trace re-timed to a rate and a
synthetic stream at that rate arrive by the same process.
"""
from __future__ import annotations

import math

import numpy as np

from balanceroute.policies.checks import int_problem
from balanceroute.workload.base import ARRIVALS_STREAM, WorkloadError, random_stream


def check_rate(rate: float, burstiness: float) -> tuple[float, float]:
    """``(rate, burstiness)`` as floats, or a :class:`WorkloadError` saying what is valid."""
    try:
        rate, burstiness = float(rate), float(burstiness)
    except (TypeError, ValueError):
        raise WorkloadError(f"rate and burstiness must be numbers, got rate={rate!r}, "
                            f"burstiness={burstiness!r}") from None
    if not rate > 0:  # also rejects NaN
        raise WorkloadError(f"rate must be > 0 requests/s (or inf: all requests at t=0), got {rate}")
    if not burstiness > 0:
        raise WorkloadError(f"burstiness must be > 0 (1 = Poisson, < 1 burstier, > 1 smoother, "
                            f"inf = evenly spaced), got {burstiness}")
    return rate, burstiness


def arrival_times(n: int, rate: float, *, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Arrival times (s) of ``n`` requests at ``rate`` requests/s; the first arrives at t = 0.

    Inter-arrival gaps follow ``vllm bench serve``: gamma with shape ``burstiness`` and mean ``1/rate``
    (burstiness 1 is a Poisson process; coefficient of variation ``1/sqrt(burstiness)``); burstiness inf gives
    evenly spaced arrivals; rate inf puts every request at t = 0. Unlike vLLM, the gaps are not rescaled to make
    the last arrival land exactly at ``n/rate``: this is a plain renewal process.
    """
    rate, burstiness = check_rate(rate, burstiness)
    problem = int_problem(n, 0)
    if problem:
        raise WorkloadError(f"number of requests {problem}")
    out = np.zeros(n)
    if n <= 1 or math.isinf(rate):
        return out
    if math.isinf(burstiness):
        gaps = np.full(n - 1, 1.0 / rate)
    else:
        gaps = random_stream(seed, ARRIVALS_STREAM).gamma(shape=burstiness, scale=1.0 / (rate * burstiness),
                                                          size=n - 1)
    np.cumsum(gaps, out=out[1:])
    return out
