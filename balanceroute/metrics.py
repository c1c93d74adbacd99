"""The one definition of run metrics, shared by the simulator and the live benchmark client.

Every backend reduces a run to a per-request record frame (:data:`REQUEST_COLUMNS`, built with
:func:`records_frame`) plus, where it has them, inter-token gaps and per-step balance figures; :func:`summarize`
turns those into the result dict. Keeping this in one module is what makes a simulated run and a real one
comparable: same definitions, same key names as ``vllm bench serve --save-result`` wherever the concept is the
same (``completed``, ``output_throughput``, ``mean_ttft_ms``, ``p99_tpot_ms``, ...), so results can be compared
with vLLM's own tool directly. Definitions (ALGORITHMS.md section 4):

- TTFT = first token - arrival; E2EL = finish (last token) - arrival;
- TPOT = (E2EL - TTFT) / (output_len - 1), only for requests with output_len > 1;
- ITL = gaps between consecutive tokens of a request (given as samples, optionally weighted);
- latency statistics, token totals and throughputs count **completed requests only**, as vLLM does;
- balance: imbalance I(k) = G*max_g L_g - sum_g L_g and the max-min spread averaged over steps, barrier idle
  fraction = sum_k sum_g (T_k - t_g) / (G * sum_k T_k) (:class:`BalanceAccumulator`), preemptions, per-worker
  request and token counts.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

#: Request outcome: finished normally, ended with an error, or still in flight when the run stopped.
STATUSES = ("completed", "failed", "unfinished")
STATUS_DTYPE = pd.CategoricalDtype(list(STATUSES))

#: Per-request record schema, in column order, with dtypes:
#:
#: - ``request_id`` int64: the request's index in the workload;
#: - ``worker`` int64: worker it was routed to, -1 if never routed;
#: - ``arrival_s`` float64: arrival time (s, run clock);
#: - ``first_token_s`` float64: time of the first output token, NaN if none;
#: - ``finish_s`` float64: time of the last token (completed) or of the failure, NaN if neither happened;
#: - ``prompt_len`` int64: prompt tokens;
#: - ``output_len`` int64: output tokens actually generated;
#: - ``target_output_len`` int64: output tokens asked for (the workload's length);
#: - ``status`` category of :data:`STATUSES`;
#: - ``error`` str: '' when none, else an error class such as 'timeout', 'http_503', 'connection_refused',
#:   'kv_capacity';
#: - ``preemptions`` int64: times the request was preempted (recompute).
REQUEST_COLUMNS: tuple[str, ...] = ("request_id", "worker", "arrival_s", "first_token_s", "finish_s",
                                    "prompt_len", "output_len", "target_output_len", "status", "error",
                                    "preemptions")
REQUEST_DTYPES: dict[str, Any] = {
    "request_id": np.int64, "worker": np.int64, "arrival_s": np.float64, "first_token_s": np.float64,
    "finish_s": np.float64, "prompt_len": np.int64, "output_len": np.int64, "target_output_len": np.int64,
    "status": STATUS_DTYPE, "error": str, "preemptions": np.int64,
}
#: Columns :func:`records_frame` fills when they are not given.
REQUEST_DEFAULTS: dict[str, Any] = {"worker": -1, "first_token_s": np.nan, "finish_s": np.nan, "error": "",
                                    "preemptions": 0}

#: Latency metrics reported as mean/median/std/pXX in milliseconds, in vLLM's order.
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
#: Metrics a goodput SLO may bound (milliseconds), as in ``vllm bench serve --goodput``.
SLO_METRICS = ("ttft", "tpot", "e2el")
DEFAULT_PERCENTILES = (50, 90, 95, 99)


def records_frame(**columns: Any) -> pd.DataFrame:
    """A per-request frame with exactly :data:`REQUEST_COLUMNS`, in order, with their dtypes.

    Each keyword is a column (array-like, or a scalar broadcast to all rows); columns in
    :data:`REQUEST_DEFAULTS` may be left out. Raises ``ValueError`` for unknown or missing columns, columns
    of different lengths and statuses outside :data:`STATUSES`.
    """
    unknown = sorted(set(columns) - set(REQUEST_COLUMNS))
    if unknown:
        raise ValueError(f"unknown request column(s) {unknown}; valid: {list(REQUEST_COLUMNS)}")
    missing = [c for c in REQUEST_COLUMNS if c not in columns and c not in REQUEST_DEFAULTS]
    if missing:
        raise ValueError(f"missing request column(s) {missing}; required: "
                         f"{[c for c in REQUEST_COLUMNS if c not in REQUEST_DEFAULTS]}")
    lengths = {k: len(v) for k, v in columns.items() if np.ndim(v) > 0}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"request columns have different lengths: {lengths}")
    n = next(iter(lengths.values()), 1)
    data = {}
    for name in REQUEST_COLUMNS:
        value = columns.get(name, REQUEST_DEFAULTS.get(name))
        if np.ndim(value) == 0:
            value = [value] * n
        if name == "status":
            status = pd.Series(np.asarray(value, dtype=object))
            bad = np.flatnonzero(~status.isin(STATUSES).to_numpy())
            if bad.size:
                raise ValueError(f"request status {status.iloc[bad[0]]!r} (row {int(bad[0])}) is not valid; "
                                 f"valid: {list(STATUSES)}")
            data[name] = pd.Categorical(status, dtype=STATUS_DTYPE)
        elif name == "error":
            data[name] = pd.array(np.asarray(value, dtype=object), dtype="str")
        else:
            data[name] = np.asarray(value, dtype=REQUEST_DTYPES[name])
    return pd.DataFrame(data)


# ---- statistics ----------------------------------------------------------------------------------------------

def _percentile_key(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)  # vLLM: 99 -> "p99", 99.9 -> "p99.9"


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
    order = np.argsort(values, kind="stable")
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


def _stats(values: np.ndarray, weights: np.ndarray | None, percentiles: Sequence[float]) -> dict[str, float]:
    """mean, median, std (population, as np.std) and percentiles of seconds, in milliseconds; NaN if empty."""
    if weights is None:
        n = values.size
        mean = float(np.mean(values)) if n else math.nan
        std = float(np.std(values)) if n else math.nan
    else:
        total = float(np.sum(weights))
        mean = float(np.dot(weights, values) / total) if total > 0 else math.nan
        std = float(math.sqrt(np.dot(weights, (values - mean) ** 2) / total)) if total > 0 else math.nan
    pct = weighted_percentiles(values, weights, (50, *percentiles)) * 1000
    out = {"mean": mean * 1000, "median": float(pct[0]), "std": std * 1000}
    out.update({f"p{_percentile_key(p)}": float(v) for p, v in zip(percentiles, pct[1:])})
    return out


def _check_itl(itl_s: np.ndarray | None, itl_weights: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray | None]:
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


# ---- per-worker and balance metrics --------------------------------------------------------------------------

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
        if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 1:
            raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
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
        top = kv.max(axis=1)
        total = kv.sum(axis=1)
        self._imbalance += float(np.sum(g * top - total))
        self._spread += float(np.sum(top - kv.min(axis=1)))
        self._load += float(total.sum())
        timed = self._timed[:n]
        if timed.any():
            local = self._local[:n][timed]
            slowest = local.max(axis=1)
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


# ---- summary -------------------------------------------------------------------------------------------------

_SUMMARY_COLUMNS = ("worker", "arrival_s", "first_token_s", "finish_s", "prompt_len", "output_len", "status",
                    "preemptions")


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
              percentiles: Sequence[float] = DEFAULT_PERCENTILES, num_workers: int | None = None
              ) -> dict[str, Any]:
    """The run summary from per-request records (vLLM ``bench serve --save-result`` keys plus ours).

    - ``requests``: a frame with at least the columns worker, arrival_s, first_token_s, finish_s, prompt_len,
      output_len, status, preemptions (see :data:`REQUEST_COLUMNS`).
    - ``duration_s``: the run's duration; default last finish_s - first arrival_s over all requests (the live
      client passes its wall-clock duration, as vLLM does).
    - ``itl_s``/``itl_weights``: inter-token gaps (s); with weights, sample i stands for ``itl_weights[i]``
      gaps (the simulator passes step durations weighted by the gaps each step produced). Statistics equal
      those of the expanded samples (:func:`weighted_percentiles`; mean and std up to float rounding).
      Without ``itl_s`` the ITL statistics are NaN. Which requests' gaps to pass is the caller's choice; vLLM
      uses completed requests only.
    - ``balance``: merged in (e.g. :meth:`BalanceAccumulator.summary`); its ``num_workers`` sizes the
      per-worker lists unless ``num_workers`` is given.
    - ``goodput_slo_ms``: SLOs by metric (``ttft``, ``tpot``, ``e2el``, ms); ``request_goodput`` counts
      completed requests meeting all of them per second (TPOT of a one-token request counts as 0, as in vLLM).
      Without SLOs ``request_goodput`` is None, as in vLLM.

    Keys: duration, completed, failed, unfinished, num_requests, total_input_tokens, total_output_tokens
    (completed requests only), request_throughput, request_goodput, output_throughput, total_token_throughput,
    max_concurrent_requests, {mean,median,std,p<P>}_{ttft,tpot,itl,e2el}_ms, preemptions, num_workers,
    worker_requests, worker_prompt_tokens, worker_output_tokens, then the ``balance`` keys. Metrics over no
    samples are NaN; an empty run gives completed = 0 and NaN rates rather than an error.
    """
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
    itl, itl_w = _check_itl(itl_s, itl_weights)

    status = requests["status"].astype(object).to_numpy()
    done = status == "completed"
    failed = int(np.count_nonzero(status == "failed"))
    unfinished = int(np.count_nonzero(status == "unfinished"))
    if int(done.sum()) + failed + unfinished != len(requests):
        odd = sorted({str(s) for s in status if s not in STATUSES})
        raise ValueError(f"unknown request status(es) {odd}; valid: {list(STATUSES)}")

    arrival = requests["arrival_s"].to_numpy(dtype=np.float64)
    first = requests["first_token_s"].to_numpy(dtype=np.float64, na_value=np.nan)
    finish = requests["finish_s"].to_numpy(dtype=np.float64, na_value=np.nan)
    prompt = requests["prompt_len"].to_numpy(dtype=np.int64)
    output = requests["output_len"].to_numpy(dtype=np.int64)

    if duration_s is None:
        finished = finish[np.isfinite(finish)]
        duration = float(finished.max() - arrival.min()) if finished.size else math.nan
    else:
        duration = float(duration_s)
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: math.nan)

    ttft = (first - arrival)[done]
    e2el = (finish - arrival)[done]
    out_done = output[done]
    timed = np.isfinite(e2el)
    multi = (out_done > 1) & np.isfinite(ttft) & timed
    tpot = (e2el[multi] - ttft[multi]) / (out_done[multi] - 1)

    completed = int(done.sum())
    total_in = int(prompt[done].sum())
    total_out = int(out_done.sum())
    goodput = None
    if slo:
        good = np.ones(completed, dtype=bool)
        tpot_all = np.zeros(completed)  # vLLM: TPOT of a request with <= 1 output token counts as 0
        tpot_all[multi] = tpot
        for name, values in (("ttft", ttft), ("tpot", tpot_all), ("e2el", e2el)):
            if name in slo:
                good &= values <= slo[name] / 1000  # NaN (no first token) is never good
        goodput = per_s(int(good.sum()))

    result: dict[str, Any] = {
        "duration": duration,
        "completed": completed,
        "failed": failed,
        "unfinished": unfinished,
        "num_requests": len(requests),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": per_s(completed),
        "request_goodput": goodput,
        "output_throughput": per_s(total_out),
        "total_token_throughput": per_s(total_in + total_out),
        "max_concurrent_requests": _max_concurrency(arrival[done][timed], finish[done][timed]),
    }
    samples = {"ttft": (ttft[np.isfinite(ttft)], None), "tpot": (tpot, None), "itl": (itl, itl_w),
               "e2el": (e2el[timed], None)}
    for metric in LATENCY_METRICS:
        for stat, value in _stats(*samples[metric], percentiles).items():
            result[f"{stat}_{metric}_ms"] = value

    balance = dict(balance or {})
    g = num_workers if num_workers is not None else balance.get("num_workers")
    result["preemptions"] = int(requests["preemptions"].to_numpy(dtype=np.int64).sum())
    workers = per_worker_counts(requests, g)
    result["num_workers"] = len(workers["worker_requests"])
    result.update(workers)
    clash = sorted(k for k in balance if k in result and not (k == "num_workers" and balance[k] == result[k]))
    if clash:
        raise ValueError(f"balance keys {clash} clash with request metrics")
    result.update(balance)
    return result
