"""Online estimate of the output-length distribution: the survival function S(h) = P(O > h).

Horizon policies (br_h, phi, fast_phi, bf_io) need to know how much longer a running request will stay. Output
lengths are unknown when a request is routed, but the lengths of finished requests are seen all the time, so
:class:`SurvivalEstimator` keeps a histogram of them and answers, for a request that has already generated
``a`` tokens, P(O > a + h | O > a) = S(a + h) / S(a).

The prior. Before (and while) data arrive the estimate is the posterior mean of a Dirichlet prior centred on a
prior distribution with ``prior_weight`` pseudo-observations:

    pmf(k) = (prior_weight * prior_pmf(k) + count(k)) / (prior_weight + n)

so a few finished requests move it a little and many move it all the way. The prior distribution is either the
empirical distribution of ``prior_lengths`` (e.g. lengths from an earlier run of the same workload) or, when
only a mean is known, the geometric distribution on {1, 2, ...} with mean ``prior_mean``: the maximum-entropy
distribution on the positive integers with that mean, i.e. the assumption-free choice, and memoryless, so it
does not pretend to know how age changes the remaining length.

Lengths are counted up to ``max_len`` tokens; longer ones (and the prior's tail) are counted at ``max_len``.
Observing is O(1). The cumulative arrays (and the tables policies derive from them) are recomputed lazily, at
the first query once the observations not yet in the estimate reach ``refresh_fraction`` (1/64) of those in it,
prior weight included. A server finishes requests between almost every two decisions, so recomputing on every
change would put an O(max_len) pass on the decision path; this way its cost is amortised over a growing number
of finishes while the estimate lags the data by under 2% (its sampling error, ~1/sqrt(n), is larger until n is
in the thousands). Early on, with few observations, every one is taken in at once. :meth:`refresh` forces it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from balanceroute.policies.policy import check_float, check_int

#: Tolerance when rounding an expected step count up (3.0000000001 must stay 3 steps).
STEP_TOL = 1e-9


class SurvivalEstimator:
    """Histogram estimate of S(h) = P(O > h) for output length O, warm-started from a prior.

    The prior is the empirical distribution of ``prior_lengths`` when given (``prior_mean`` is then ignored),
    else geometric with mean ``prior_mean``; it is worth ``prior_weight`` observations. ``owner`` only names
    the policy in parameter errors.
    """

    def __init__(self, prior_mean: float = 256.0, prior_weight: float = 10.0,
                 prior_lengths: Sequence[int] | None = None, max_len: int = 8192, *,
                 refresh_fraction: float = 1 / 64, owner: str = "survival") -> None:
        self.max_len = check_int(owner, "max_len", max_len, 1)
        self.prior_weight = check_float(owner, "prior_weight", prior_weight, 0.0, np.inf)
        if prior_lengths is None:
            self.prior_mean = check_float(owner, "prior_mean", prior_mean, 1.0, np.inf)
            prior = _geometric_pmf(self.prior_mean, self.max_len)
        else:
            lengths = np.asarray(prior_lengths)
            if lengths.ndim != 1 or lengths.size == 0 or not np.issubdtype(lengths.dtype, np.integer) \
                    or lengths.min() < 0:
                raise ValueError(f"{owner}: parameter prior_lengths must be a non-empty list of integers >= 0, "
                                 f"got {prior_lengths!r}")
            prior = np.bincount(np.minimum(lengths, self.max_len), minlength=self.max_len + 1) / lengths.size
            self.prior_mean = float(lengths.mean())
        self._prior = prior
        self._counts = np.zeros(self.max_len + 1)
        self.refresh_fraction = check_float(owner, "refresh_fraction", refresh_fraction, 0.0, 1.0)
        self.count = 0
        self.version = 0
        self._included = 0.0  # observations (plus prior weight) in the current estimate
        self._S: np.ndarray | None = None
        self._cache: dict = {}

    # ---- learning ---------------------------------------------------------------------------------------------
    def observe(self, output_len: int) -> None:
        """Count one finished request of ``output_len`` tokens (O(1))."""
        if output_len < 0:
            raise ValueError(f"output length must be >= 0, got {output_len}")
        self._counts[min(self.max_len, output_len)] += 1.0
        self.count += 1

    def observe_many(self, output_lens: Sequence[int]) -> None:
        """Count many finished requests at once."""
        lens = np.asarray(output_lens, dtype=np.int64)
        if lens.size == 0:
            return
        if lens.min() < 0:
            raise ValueError(f"output lengths must be >= 0, got minimum {lens.min()}")
        self._counts += np.bincount(np.minimum(lens, self.max_len), minlength=self.max_len + 1)
        self.count += int(lens.size)

    # ---- the estimate -----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Take every observation into the estimate now (recompute S, its running sum and 1/S)."""
        mass = self.prior_weight * self._prior + self._counts
        total = mass.sum()
        if total <= 0:  # no prior weight and no data yet: the prior alone
            mass, total = self._prior, 1.0
        # S[h] = mass above h / total; the reversed running sum makes S exactly 0 past the longest length.
        above = np.cumsum(mass[::-1])[::-1]
        surv = np.empty(self.max_len + 1)
        surv[:-1] = above[1:] / total
        surv[-1] = 0.0
        self._S = surv
        self._CS = np.concatenate(([0.0], np.cumsum(surv)))  # CS[x] = sum_{t < x} S[t]
        with np.errstate(divide="ignore"):
            self._invS = np.where(surv > 0, 1.0 / surv, 0.0)  # 0 where S = 0: such ages have no future
        self._cdf = 1.0 - surv
        self._included = self.prior_weight + self.count
        self.version += 1
        self._cache.clear()

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pending = self.prior_weight + self.count - self._included
        if self._S is None or (pending > 0 and pending >= self.refresh_fraction * self._included):
            self.refresh()
        return self._S, self._CS, self._invS

    @property
    def survival_array(self) -> np.ndarray:
        """S(h) for h = 0..max_len (read-only view; S(max_len) = 0)."""
        return self._arrays()[0]

    @property
    def inverse_survival_array(self) -> np.ndarray:
        """1 / S(a) for a = 0..max_len, 0 where S(a) = 0 (such ages have no future under the estimate)."""
        return self._arrays()[2]

    def survival(self, h) -> np.ndarray:
        """S(h) = P(O > h), vectorised; 0 beyond ``max_len``."""
        return self._arrays()[0].take(np.asarray(h), mode="clip")

    def conditional(self, ages, h) -> np.ndarray:
        """P(O > a + h | O > a) for arrays of ages a and steps h >= 0 (numpy broadcasting of ``ages`` and ``h``).

        It is 1 at h = 0 by definition; an age the distribution gives no chance to (S(a) = 0: older than every
        length seen and the prior) is treated as finishing after the current step.
        """
        surv, _, inv = self._arrays()
        ages, h = np.asarray(ages), np.asarray(h)
        out = surv.take(ages + h, mode="clip") * inv.take(ages, mode="clip")
        return np.where(h == 0, 1.0, out)

    def mean(self) -> float:
        """E[O] = sum_h S(h)."""
        return float(self._arrays()[1][-1])

    def support_end(self) -> int:
        """D = 1 + the largest h with S(h) > 0: the sum over h of anything weighted by S(h) stops at D - 1."""
        surv = self._arrays()[0]
        return int(np.flatnonzero(surv > 0)[-1]) + 1 if surv[0] > 0 else 1

    def quantile(self, q) -> np.ndarray:
        """Smallest h with P(O <= h) >= q, vectorised over q in [0, 1]."""
        self._arrays()
        return np.minimum(np.searchsorted(self._cdf, np.asarray(q) - STEP_TOL, side="left"), self.max_len)

    def tail_sum(self, h: int) -> float:
        """sum_{t >= h} S(t)."""
        cs = self._arrays()[1]
        return float(cs[-1] - cs[min(h, len(cs) - 1)])

    def expected_steps(self, ages, cap: int) -> np.ndarray:
        """E[min(R, cap) | age] for the remaining length R = O - a of requests alive at age a.

        = sum_{h < cap} P(R > h) = (CS[a + cap] - CS[a]) / S(a); 1 where S(a) = 0 (alive, finishing now).
        """
        _, cs, inv = self._arrays()
        ages = np.asarray(ages)
        est = (cs.take(ages + cap, mode="clip") - cs.take(ages, mode="clip")) * inv.take(ages, mode="clip")
        return np.maximum(est, 1.0)

    def steps_table(self, cap: int) -> np.ndarray:
        """ceil(E[min(R, cap) | a]) for every age a = 0..max_len, as int64 in [1, cap] (cached per estimate).

        A request alive at age a is projected to stay for this many steps h = 0, 1, ... (``ĉ > h`` in BR-H).
        A horizon policy then predicts all resident requests with one gather instead of a dozen array passes.
        """
        def build(est: SurvivalEstimator) -> np.ndarray:
            steps = np.ceil(est.expected_steps(np.arange(est.max_len + 1), cap) - STEP_TOL)
            return np.clip(steps, 1, cap).astype(np.int64)

        return self.cached(("steps", cap), build)

    def cached(self, key, build):
        """A table derived from the current estimate: ``build(self)`` once per estimate, cached under ``key``."""
        self._arrays()
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = build(self)
        return value

    def __repr__(self) -> str:
        return (f"SurvivalEstimator(prior_mean={self.prior_mean:g}, prior_weight={self.prior_weight:g}, "
                f"max_len={self.max_len}, observed={self.count})")


def _geometric_pmf(mean: float, max_len: int) -> np.ndarray:
    """Geometric pmf on {1, 2, ...} with the given mean, truncated at ``max_len`` (tail mass counted there)."""
    p = 1.0 / mean
    k = np.arange(max_len + 1)
    pmf = np.zeros(max_len + 1)
    if max_len >= 1:
        pmf[1:] = p * (1.0 - p) ** (k[1:] - 1)
        pmf[max_len] = (1.0 - p) ** (max_len - 1)
    return pmf
