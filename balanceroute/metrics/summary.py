"""The run summary: :func:`summarize` reduces per-request records to a typed :class:`Summary`.

Definitions are ALGORITHMS.md section 4, with ``vllm bench serve``'s conventions: latency statistics, token
totals and throughputs count completed requests only. The summary is typed so that code reading it names
fields that exist; :meth:`Summary.as_dict` is the one place that spells them as ``result.json`` keys, which are
vLLM's ``--save-result`` names wherever the concept is the same.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from balanceroute.metrics.balance import per_worker_counts
from balanceroute.metrics.latency import (
    DEFAULT_PERCENTILES,
    LATENCY_METRICS,
    LatencyStats,
    itl_samples,
    latency_stats,
)
from balanceroute.metrics.records import STATUSES

#: Metrics a goodput SLO may bound (milliseconds), as in ``vllm bench serve --goodput``.
SLO_METRICS = ("ttft", "tpot", "e2el")

_SUMMARY_COLUMNS = ("worker", "arrival_s", "first_token_s", "finish_s", "prompt_len", "output_len", "status",
                    "preemptions")


@dataclass(frozen=True)
class Summary:
    """What a run measured, one field per figure; rates and latencies over no samples are NaN."""

    duration: float
    """Run duration (s): the caller's (the live client's wall clock, as vLLM), else the last finish of any
    request - the first arrival."""
    completed: int
    """Requests that finished normally; the token totals, throughputs and latencies below count only these."""
    failed: int
    """Requests that ended with an error."""
    unfinished: int
    """Requests still in flight when the run stopped."""
    num_requests: int
    """Every request in the records: completed + failed + unfinished."""
    total_input_tokens: int
    """Prompt tokens of the completed requests."""
    total_output_tokens: int
    """Output tokens of the completed requests."""
    request_throughput: float
    """completed / duration (requests/s)."""
    request_goodput: float | None
    """Completed requests meeting every goodput SLO, per second (a one-token request's TPOT counts as 0, as in
    vLLM); None when no SLO was given."""
    output_throughput: float
    """total_output_tokens / duration (tokens/s)."""
    total_token_throughput: float
    """(total_input_tokens + total_output_tokens) / duration (tokens/s)."""
    max_concurrent_requests: int
    """Peak number of completed requests in flight at once, over their [arrival, finish) intervals."""
    ttft: LatencyStats
    """Time to first token = first token - arrival."""
    tpot: LatencyStats
    """Time per output token = (E2EL - TTFT) / (output_len - 1), over requests with output_len > 1."""
    itl: LatencyStats
    """Inter-token latency: the gaps between consecutive tokens of a request, as the caller passed them."""
    e2el: LatencyStats
    """End-to-end latency = finish (last token) - arrival."""
    preemptions: int
    """Preemptions (recompute) of all requests."""
    num_workers: int
    """G, the length of the per-worker lists."""
    worker_requests: list[int]
    """Requests routed to each worker (all outcomes; never-routed requests are not counted)."""
    worker_prompt_tokens: list[int]
    """Prompt tokens routed to each worker."""
    worker_output_tokens: list[int]
    """Output tokens each worker generated, unfinished requests included."""
    balance: Mapping[str, Any] = field(default_factory=dict)
    """Step-level balance the backend measured (:meth:`~balanceroute.metrics.balance.BalanceAccumulator.summary`:
    num_steps, mean_imbalance I(k) = G*max_g L_g - sum_g L_g, mean_spread max_g L_g - min_g L_g, mean_kv_load,
    barrier_idle_fraction = sum_k sum_g (T_k - t_g) / (G * sum_k T_k)), reported after the request metrics."""

    def __post_init__(self) -> None:
        """Balance keys share the record with the request metrics, so none may overwrite one (``num_workers``
        may repeat with the same value)."""
        own = self._request_metrics()
        clash = sorted(k for k in self.balance if k in own and not (k == "num_workers" and self.balance[k] == own[k]))
        if clash:
            raise ValueError(f"balance keys {clash} clash with request metrics")

    def _request_metrics(self) -> dict[str, Any]:
        """The result keys of every field but ``balance``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, LatencyStats):
                out.update(value.as_dict(f.name))
            elif f.name != "balance":
                out[f.name] = value
        return out

    def as_dict(self) -> dict[str, Any]:
        """The result record: the fields in order under their own names, each latency expanded to
        ``{mean,median,std,p<P>}_<metric>_ms``, then the balance keys."""
        return {**self._request_metrics(), **self.balance}


class _Latencies(NamedTuple):
    """Per-request latencies (s) of the completed requests."""

    ttft: np.ndarray
    e2el: np.ndarray
    tpot: np.ndarray  # only where has_tpot
    has_tpot: np.ndarray  # output_len > 1 with a first token and a finish time
    timed: np.ndarray  # a finish time


def _check_arguments(requests: pd.DataFrame, percentiles: Sequence[float],
                     goodput_slo_ms: Mapping[str, float] | None) -> dict[str, float]:
    """The SLOs as a dict, after checking the frame's columns, the percentiles and the SLOs."""
    missing = [c for c in _SUMMARY_COLUMNS if c not in requests.columns]
    if missing:
        raise ValueError(f"request frame lacks column(s) {missing}; see balanceroute.metrics.REQUEST_COLUMNS")
    for p in percentiles:
        if not 0 <= p <= 100:
            raise ValueError(f"percentiles must be in [0, 100], got {p}")
    slo = dict(goodput_slo_ms or {})
    bad_slo = {k: v for k, v in slo.items() if k not in SLO_METRICS or not (isinstance(v, (int, float)) and v > 0)}
    if bad_slo:
        raise ValueError(f"invalid goodput SLO(s) {bad_slo}; valid: {list(SLO_METRICS)} with a value > 0 ms")
    return slo


def _outcomes(requests: pd.DataFrame) -> tuple[np.ndarray, int, int]:
    """(completed mask, failed count, unfinished count); any other status is an error."""
    status = requests["status"].astype(object).to_numpy()
    done = status == "completed"
    failed = int(np.count_nonzero(status == "failed"))
    unfinished = int(np.count_nonzero(status == "unfinished"))
    if int(done.sum()) + failed + unfinished != len(requests):
        odd = sorted({str(s) for s in status if s not in STATUSES})
        raise ValueError(f"unknown request status(es) {odd}; valid: {list(STATUSES)}")
    return done, failed, unfinished


def _duration(arrival: np.ndarray, finish: np.ndarray, duration_s: float | None) -> float:
    """The given duration, else last finish - first arrival (NaN when nothing finished)."""
    if duration_s is not None:
        return float(duration_s)
    finished = finish[np.isfinite(finish)]
    return float(finished.max() - arrival.min()) if finished.size else math.nan


def _per_second(count: float, duration: float) -> float:
    """A throughput: ``count`` over the run's duration, NaN when the duration is not > 0."""
    return count / duration if duration > 0 else math.nan


def _latencies(arrival: np.ndarray, first: np.ndarray, finish: np.ndarray, output: np.ndarray,
               done: np.ndarray) -> _Latencies:
    """TTFT, E2EL and TPOT of the completed requests (ALGORITHMS.md section 4)."""
    ttft = (first - arrival)[done]
    e2el = (finish - arrival)[done]
    out_done = output[done]
    timed = np.isfinite(e2el)
    has_tpot = (out_done > 1) & np.isfinite(ttft) & timed
    tpot = (e2el[has_tpot] - ttft[has_tpot]) / (out_done[has_tpot] - 1)
    return _Latencies(ttft, e2el, tpot, has_tpot, timed)


def _good_requests(lat: _Latencies, slo: Mapping[str, float]) -> int:
    """Completed requests within every SLO (ms); a request without a first token never is."""
    good = np.ones(lat.ttft.size, dtype=bool)
    tpot_all = np.zeros(lat.ttft.size)  # vLLM: TPOT of a request with <= 1 output token counts as 0
    tpot_all[lat.has_tpot] = lat.tpot
    for name, values in (("ttft", lat.ttft), ("tpot", tpot_all), ("e2el", lat.e2el)):
        if name in slo:
            good &= values <= slo[name] / 1000  # NaN (no first token) is never good
    return int(good.sum())


def _max_concurrency(start: np.ndarray, end: np.ndarray) -> int:
    """Peak number of overlapping [start, end) intervals (an end and a start at the same time don't overlap)."""
    if start.size == 0:
        return 0
    times = np.concatenate([end, start])
    delta = np.concatenate([np.full(end.size, -1), np.ones(start.size, dtype=np.int64)])
    order = np.lexsort((delta, times))  # by time, departures first
    return int(np.cumsum(delta[order]).max())


def summarize(requests: pd.DataFrame, *, duration_s: float | None = None, itl_s: np.ndarray | None = None,
              itl_weights: np.ndarray | None = None, balance: Mapping[str, Any] | None = None,
              goodput_slo_ms: Mapping[str, float] | None = None,
              percentiles: Sequence[float] = DEFAULT_PERCENTILES, num_workers: int | None = None) -> Summary:
    """The run summary from per-request records; ``.as_dict()`` is the result record (vLLM keys plus ours).

    - ``requests``: a frame with at least the columns worker, arrival_s, first_token_s, finish_s, prompt_len,
      output_len, status, preemptions (see :data:`~balanceroute.metrics.records.REQUEST_COLUMNS`).
    - ``duration_s``: the run's duration; default last finish_s - first arrival_s over all requests (the live
      client passes its wall-clock duration, as vLLM does).
    - ``itl_s``/``itl_weights``: inter-token gaps (s); with weights, sample i stands for ``itl_weights[i]``
      gaps (the simulator passes step durations weighted by the gaps each step produced). Statistics equal
      those of the expanded samples (:func:`~balanceroute.metrics.latency.weighted_percentiles`; mean and std
      up to float rounding). Without ``itl_s`` the ITL statistics are NaN. Which requests' gaps to pass is the
      caller's choice; vLLM uses completed requests only.
    - ``balance``: reported after the request metrics (e.g. ``BalanceAccumulator.summary()``); its
      ``num_workers`` sizes the per-worker lists unless ``num_workers`` is given.
    - ``goodput_slo_ms``: SLOs by metric (``ttft``, ``tpot``, ``e2el``, ms) for ``request_goodput``.
    - ``percentiles``: the ``p<P>`` statistics of every latency metric.

    An empty run gives completed = 0 and NaN rates rather than an error.
    """
    slo = _check_arguments(requests, percentiles, goodput_slo_ms)
    itl, itl_w = itl_samples(itl_s, itl_weights)
    done, failed, unfinished = _outcomes(requests)

    arrival = requests["arrival_s"].to_numpy(dtype=np.float64)
    first = requests["first_token_s"].to_numpy(dtype=np.float64, na_value=np.nan)
    finish = requests["finish_s"].to_numpy(dtype=np.float64, na_value=np.nan)
    prompt = requests["prompt_len"].to_numpy(dtype=np.int64)
    output = requests["output_len"].to_numpy(dtype=np.int64)
    duration = _duration(arrival, finish, duration_s)
    lat = _latencies(arrival, first, finish, output, done)

    completed = int(done.sum())
    total_in = int(prompt[done].sum())
    total_out = int(output[done].sum())
    samples = {"ttft": (lat.ttft[np.isfinite(lat.ttft)], None), "tpot": (lat.tpot, None), "itl": (itl, itl_w),
               "e2el": (lat.e2el[lat.timed], None)}
    balance = dict(balance or {})
    workers = per_worker_counts(requests, num_workers if num_workers is not None else balance.get("num_workers"))
    return Summary(
        duration=duration,
        completed=completed,
        failed=failed,
        unfinished=unfinished,
        num_requests=len(requests),
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=_per_second(completed, duration),
        request_goodput=_per_second(_good_requests(lat, slo), duration) if slo else None,
        output_throughput=_per_second(total_out, duration),
        total_token_throughput=_per_second(total_in + total_out, duration),
        max_concurrent_requests=_max_concurrency(arrival[done][lat.timed], finish[done][lat.timed]),
        **{metric: latency_stats(*samples[metric], percentiles) for metric in LATENCY_METRICS},
        preemptions=int(requests["preemptions"].to_numpy(dtype=np.int64).sum()),
        num_workers=len(workers["worker_requests"]),
        **workers,
        balance=balance,
    )
