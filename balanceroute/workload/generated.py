"""Synthetic request streams: heavy-tailed lengths (defaults fitted to the Azure 2023 conversation trace).

Stand-ins for traces at any size and rate (``workload=synthetic``, ``sharegpt_like``, ``bu2026_a``/``_b``), and
exactly known lengths (``constant``) for closed-form tests.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from balanceroute.workload.arrivals import arrival_times
from balanceroute.workload.base import LENGTHS_STREAM, Workload, WorkloadError, check_count, random_stream

#: Azure LLM inference trace 2023, conversation: mean prompt / output tokens (see ../shared/traces/README.md).
AZURE_CONV_PROMPT_MEAN, AZURE_CONV_OUTPUT_MEAN = 1155, 211
#: Lognormal shape fitted to the same trace by its mean/median ratio, sigma = sqrt(2 ln(mean/median)):
#: prompt 1155/1020 -> 0.4986, output 211/129 -> 0.9920. Matching mean and median pins the body of the
#: distribution; the trace's tails differ (trace p99: prompt 4142, output 601; this lognormal: about 3270 and
#: 1300), because no single lognormal matches the trace's median, mean and spread at once.
AZURE_CONV_PROMPT_SIGMA = math.sqrt(2 * math.log(1155 / 1020))
AZURE_CONV_OUTPUT_SIGMA = math.sqrt(2 * math.log(211 / 129))

DISTRIBUTIONS = ("lognormal", "exponential", "constant")


def _length_sampler(distribution: str, mean: float, sigma: float, rng: np.random.Generator
                    ) -> Callable[[int], np.ndarray]:
    """Draws integer lengths >= 1 with (before rounding) the given mean."""
    if distribution == "lognormal":
        mu = math.log(mean) - sigma ** 2 / 2  # E[X] = exp(mu + sigma^2/2) = mean
        draw = lambda k: rng.lognormal(mu, sigma, k)
    elif distribution == "exponential":
        draw = lambda k: rng.exponential(mean, k)
    else:  # constant
        draw = lambda k: np.full(k, float(mean))
    return lambda k: np.maximum(1, np.rint(draw(k))).astype(np.int64)


def _draw_capped(sample: Callable[[int], np.ndarray], n: int, cap: int | None, what: str) -> np.ndarray:
    """``n`` lengths from ``sample`` truncated at ``cap`` (rejection sampling in vectorised batches)."""
    out = sample(n)
    if cap is None:
        return out
    bad = np.flatnonzero(out > cap)
    size = max(4096, 2 * bad.size)
    for _ in range(64):
        if bad.size == 0:
            return out
        batch = sample(size)
        fits = batch[batch <= cap]
        accepted = fits.size / size
        if accepted < 1e-3:
            break
        fits = fits[: bad.size]
        out[bad[: fits.size]] = fits
        bad = bad[fits.size:]
        size = max(4096, int(bad.size / accepted * 1.2) + 16)
    raise WorkloadError(f"max_{what}_len={cap} keeps too little of the {what} length distribution "
                        f"({accepted:.3%} of draws fit, need >= 0.1%); raise the cap or lower {what}_mean")


def synthetic(num_requests: int, *, rate: float, burstiness: float = 1.0,
              prompt_mean: float = AZURE_CONV_PROMPT_MEAN, output_mean: float = AZURE_CONV_OUTPUT_MEAN,
              distribution: str = "lognormal", prompt_sigma: float = AZURE_CONV_PROMPT_SIGMA,
              output_sigma: float = AZURE_CONV_OUTPUT_SIGMA, seed: int = 0, max_prompt_len: int | None = None,
              max_output_len: int | None = None) -> Workload:
    """``num_requests`` synthetic requests with heavy-tailed lengths and :func:`arrival_times` arrivals.

    ``distribution`` (for both prompt and output lengths):

    - ``lognormal`` (default): with mean ``*_mean`` and log-space sd ``*_sigma``; the defaults reproduce the
      Azure 2023 conversation trace's mean and median (see :data:`AZURE_CONV_PROMPT_SIGMA`);
    - ``exponential``: with mean ``*_mean``;
    - ``constant``: every request exactly ``*_mean`` tokens (closed-form tests).

    Lengths are rounded to integers and at least 1; with a cap, drawn from the distribution truncated at it
    (the mean then drops accordingly). Arrival and length randomness use separate streams of ``seed``.
    """
    num_requests = check_count("num_requests", num_requests, minimum=0)
    if num_requests is None:
        raise WorkloadError("num_requests must be an integer >= 0, got None")
    if distribution not in DISTRIBUTIONS:
        raise WorkloadError(f"unknown distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    for name, value in (("prompt_mean", prompt_mean), ("output_mean", output_mean),
                        ("prompt_sigma", prompt_sigma), ("output_sigma", output_sigma)):
        if not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise WorkloadError(f"{name} must be a finite number > 0, got {value!r}")
    max_prompt_len = check_count("max_prompt_len", max_prompt_len, minimum=1)
    max_output_len = check_count("max_output_len", max_output_len, minimum=1)
    arrivals = arrival_times(num_requests, rate, burstiness=burstiness, seed=seed)
    rng = random_stream(seed, LENGTHS_STREAM)
    prompt = _draw_capped(_length_sampler(distribution, prompt_mean, prompt_sigma, rng), num_requests,
                          max_prompt_len, "prompt")
    output = _draw_capped(_length_sampler(distribution, output_mean, output_sigma, rng), num_requests,
                          max_output_len, "output")
    return Workload(arrivals, prompt, output, np.zeros(num_requests, dtype=np.int64), None,
                    f"synthetic-{distribution}")
