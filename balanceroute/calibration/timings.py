"""Step costs from per-request token timings: calibration for live runs without step logs.

A run whose engines did not log their steps (a vLLM without the balanceroute plugin, ``backend.step_log=false``)
still has, per request, its worker, prompt length, output length and the times of its first and last token
(requests.parquet). Between them the request received ``n - 1`` tokens, one per lock-step, so its TPOT is the mean
period of the steps it decoded in. Those steps' compositions are not known, only the requests resident on each
worker; so each worker's KV load is rebuilt on a fine time grid (a request holds ``prompt + 1`` tokens at its
first token and grows linearly to ``prompt + n`` at its last), and a request's TPOT is modelled as

    TPOT_i = (c_0 + c_w) + a * <max_g L_g> + b * <mean_g L_g> + p * P_i / (n_i - 1)

with ``<.>`` the time average over its decode window and ``P_i`` the prompt tokens prefilled in that window (the
first tokens of other requests: on any worker with the EP barrier, on its own worker without). The step model's
max over ``c_w + a L_g + p P_g`` is split into its KV and prefill parts, and the average over steps is taken as one
over time: an approximation, exact when the loads change slowly against a step. Without the barrier (dense
models, independent engines) a worker's step costs ``a L + b L`` alike, so the fit puts all of it in ``a``.
A non-negative least-squares solve over the completed requests gives the coefficients; the step-log fit
(:mod:`balanceroute.calibration.fit`) is the better evidence wherever step logs exist.

The TPOTs are timed by the client, so they also carry the client's stalls: a paused machine delivers a request's
tokens in one burst (a TPOT near zero, below any step's cost) or after a pause (a TPOT of half a second). Such a
request says nothing about step costs, and a few of them decide a least-squares fit of a short run. So the fit is
trimmed: starting from the requests whose TPOT is near the median, requests further than :data:`OUTLIER_SIGMAS`
robust standard deviations (from the median absolute residual) from the current fit are left out and the rest
refitted, until the set holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from balanceroute.calibration.fit import MIN_STEPS, StepCosts, fit_quality
from balanceroute.calibration.steps import StepLogError, common_num_ranks

#: Time grid of the rebuilt KV loads (seconds): well below a decode step.
GRID_S = 0.001
#: A request this many robust standard deviations from the fit is a client stall, not evidence of step costs.
OUTLIER_SIGMAS = 3.5
#: ... and never closer than this share of the mean TPOT: the rebuilt loads alone miss single requests of the
#: simulator's own runs by up to 18% of it (an exact step model, no stalls), and that is not a stall.
MIN_OUTLIER_SHARE = 0.25
MAX_TRIM_ROUNDS = 20


@dataclass(frozen=True)
class TokenTimings:
    """Per decoded request of one or more runs: its TPOT and the time-averaged loads and prefill it decoded
    beside (the design of the fit), and the ranks' count."""

    tpot: np.ndarray
    max_load: np.ndarray       # <max_g L_g> over the request's decode window
    mean_load: np.ndarray      # <mean_g L_g>
    prefill: np.ndarray        # prefill tokens per decode step in the window, P_i / (n_i - 1)
    num_ranks: int

    @property
    def num_requests(self) -> int:
        return len(self.tpot)

    @staticmethod
    def concat(tables: list[TokenTimings]) -> TokenTimings:
        return TokenTimings(*(np.concatenate([getattr(t, k) for t in tables])
                              for k in ("tpot", "max_load", "mean_load", "prefill")), num_ranks=common_num_ranks(tables))


@dataclass(frozen=True)
class TimingFit(StepCosts):
    """Costs fitted to request TPOTs and how well they explain them."""

    num_requests: int         # fitted (the requests left after trimming stalls)
    num_outliers: int         # left out: TPOT further than outlier_bound_s from the fit
    outlier_bound_s: float
    r2: float                 # share of the fitted TPOTs' variance explained
    mean_abs_error: float     # mean |predicted - measured| / mean measured TPOT, over the fitted requests
    mean_tpot_s: float

    @property
    def num_samples(self) -> int:
        return self.num_requests

    def predict_tpot(self, timings: TokenTimings) -> np.ndarray:
        """The TPOT of each of ``timings``' requests under these costs."""
        return self.constant + self.a * timings.max_load + self.b * timings.mean_load + self.p * timings.prefill

    def fitted(self, timings: TokenTimings) -> np.ndarray:
        """Which of ``timings``' requests this fit kept (within ``outlier_bound_s`` of its prediction)."""
        return np.abs(self.predict_tpot(timings) - timings.tpot) <= self.outlier_bound_s


def _loads(frame: pd.DataFrame, num_ranks: int, start: float, cells: int) -> np.ndarray:
    """(grid cells x ranks) KV tokens held per worker: each request from its first token (prompt + 1) to its last
    (prompt + n), linearly; built from per-rank differences of intercepts and slopes."""
    first, last = frame["first_token_s"].to_numpy(), frame["finish_s"].to_numpy()
    span = last - first  # 0 for a request of one output token: it holds its prompt + 1 until it finishes
    slope = np.divide(frame["output_len"].to_numpy() - 1.0, span, out=np.zeros(len(span)), where=span > 0)
    intercept = frame["prompt_len"].to_numpy() + 1 - slope * first
    lo = np.clip(((first - start) / GRID_S).astype(np.int64), 0, cells)
    hi = np.clip(((last - start) / GRID_S).astype(np.int64), 0, cells)
    worker = frame["worker"].to_numpy(np.int64)
    d_intercept = np.zeros((cells + 1, num_ranks))
    d_slope = np.zeros((cells + 1, num_ranks))
    for delta, at in ((1.0, lo), (-1.0, hi)):
        np.add.at(d_intercept, (at, worker), delta * intercept)
        np.add.at(d_slope, (at, worker), delta * slope)
    t = start + (np.arange(cells) + 0.5) * GRID_S
    return np.cumsum(d_intercept, axis=0)[:-1] + np.cumsum(d_slope, axis=0)[:-1] * t[:, None]


def _window_means(series: np.ndarray, lo: np.ndarray, hi: np.ndarray, column: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``series`` (cells, or cells x ranks picked by ``column``) over cells ``lo .. hi - 1`` (at least
    one cell)."""
    prefix = np.concatenate([np.zeros((1, *series.shape[1:])), np.cumsum(series, axis=0)])
    hi = np.maximum(hi, lo + 1)
    if column is None:
        return (prefix[hi] - prefix[lo]) / (hi - lo)
    return (prefix[hi, column] - prefix[lo, column]) / (hi - lo)


def _prefill_between(requests: pd.DataFrame, start: np.ndarray, end: np.ndarray, worker: np.ndarray | None,
                     num_ranks: int) -> np.ndarray:
    """Prompt tokens whose prefill step ended (a first token) strictly between ``start`` and ``end``, per window:
    on any worker (``worker`` None) or on the window's own."""
    first = requests["first_token_s"].to_numpy()
    prompt = requests["prompt_len"].to_numpy(np.float64)
    if worker is None:
        groups, rank_of, windows = [np.arange(len(first))], [0], np.zeros(len(start), dtype=np.int64)
    else:
        on = requests["worker"].to_numpy(np.int64)
        groups, rank_of, windows = [np.flatnonzero(on == g) for g in range(num_ranks)], range(num_ranks), worker
    total = np.zeros(len(start))
    for rows, rank in zip(groups, rank_of):
        order = rows[np.argsort(first[rows], kind="stable")]
        times, prefix = first[order], np.concatenate([[0.0], np.cumsum(prompt[order])])
        mine = windows == rank
        lo = np.searchsorted(times, start[mine], side="right")
        hi = np.searchsorted(times, end[mine], side="left")
        total[mine] = prefix[np.maximum(hi, lo)] - prefix[lo]
    return total


def token_timings(requests: pd.DataFrame, num_ranks: int, *, barrier: bool) -> TokenTimings:
    """The fit's design from one run's requests.parquet (``barrier``: the ranks step together, MoE with EP)."""
    ok = requests[(requests["status"] == "completed") & (requests["worker"] >= 0)]
    decoded = ok[(ok["output_len"] >= 2) & (ok["finish_s"] > ok["first_token_s"])]
    if decoded.empty:
        return TokenTimings(*(np.zeros(0) for _ in range(4)), num_ranks=num_ranks)
    start = float(ok["first_token_s"].min())
    cells = int((float(ok["finish_s"].max()) - start) / GRID_S) + 1
    loads = _loads(ok, num_ranks, start, cells)
    first, last = decoded["first_token_s"].to_numpy(), decoded["finish_s"].to_numpy()
    lo = np.clip(((first - start) / GRID_S).astype(np.int64), 0, cells - 1)
    hi = np.clip(((last - start) / GRID_S).astype(np.int64), 0, cells)
    steps = decoded["output_len"].to_numpy() - 1
    if barrier:
        max_load = _window_means(loads.max(axis=1), lo, hi)
        mean_load = _window_means(loads.mean(axis=1), lo, hi)
        worker = None
    else:  # a worker of its own: its load alone, all of it priced in a
        worker = decoded["worker"].to_numpy(np.int64)
        max_load = _window_means(loads, lo, hi, worker)
        mean_load = np.zeros_like(max_load)
    prefill = _prefill_between(ok, first, last, worker, num_ranks)
    return TokenTimings((last - first) / steps, max_load, mean_load, prefill / steps, num_ranks)


def _outlier_bound(residual: np.ndarray, tpot: np.ndarray) -> float:
    """How far from its prediction a TPOT may be and still be fitted: :data:`OUTLIER_SIGMAS` robust standard
    deviations of ``residual`` (1.4826 median absolute deviations), at least :data:`MIN_OUTLIER_SHARE` of the
    mean TPOT."""
    sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    return max(OUTLIER_SIGMAS * sigma, MIN_OUTLIER_SHARE * float(tpot.mean()))


def _trimmed_nnls(design: np.ndarray, tpot: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Coefficients, kept rows and the outlier bound of a least-squares fit that leaves out the rows further
    than the bound from it, refitting until the kept set holds. It starts from the TPOTs near their median (a
    fit of all rows is what the stalls spoil); a set that does not settle, or would keep fewer than
    :data:`MIN_STEPS` rows, leaves the plain fit of all rows."""
    centred = tpot - np.median(tpot)
    keep = np.abs(centred) <= _outlier_bound(centred, tpot)
    for _ in range(MAX_TRIM_ROUNDS):
        if keep.sum() < MIN_STEPS:
            break
        coefficients, _ = nnls(design[keep], tpot[keep])
        residual = design @ coefficients - tpot
        bound = _outlier_bound(residual[keep], tpot[keep])
        trimmed = np.abs(residual) <= bound
        if np.array_equal(trimmed, keep):
            return coefficients, keep, bound
        keep = trimmed
    return nnls(design, tpot)[0], np.ones(len(tpot), dtype=bool), float("inf")


def fit_timings(timings: TokenTimings) -> TimingFit:
    """Least-squares costs for ``timings``, stalls trimmed (StepLogError when too few requests decoded)."""
    if timings.num_requests < MIN_STEPS:
        raise StepLogError(f"only {timings.num_requests} requests decoded two or more tokens (need at least "
                           f"{MIN_STEPS}): run more requests")
    design = np.column_stack([np.ones(timings.num_requests), timings.max_load, timings.mean_load, timings.prefill])
    coefficients, keep, bound = _trimmed_nnls(design, timings.tpot)
    constant, a, b, p = (float(v) for v in coefficients)
    quality = fit_quality(design[keep] @ coefficients, timings.tpot[keep])
    return TimingFit(constant, a, b, p, int(keep.sum()), int((~keep).sum()), bound, *quality)
