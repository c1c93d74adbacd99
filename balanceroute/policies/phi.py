"""Expected marginal overflow cost: phi (exact) and fast_phi (K-point quadrature). ALGORITHMS.md section 2.

With S(h) = P(O > h) the output-length survival function (learned online, :class:`SurvivalEstimator`), the
expected barrier cost of sending a request of prompt s to worker g is

    ΔΦ_g(s) = sum_{h >= 0} S(h) * (s + h - m_g(h))_+

on survival-weighted projections L̄_g(h) = sum_i P(O_i > a_i + h | O_i > a_i) * (w_i + h), M(h) = max_g L̄_g(h),
m_g(h) = M(h) - L̄_g(h): the new request is still there at step h with probability S(h), holding s + h tokens,
and every token above the margin makes the other workers idle. Route to argmin ΔΦ_g (ties: lowest load, then a
rotating start).

- ``phi`` sums every h of the distribution's support (h < D, S(D) = 0). L̄ at all D steps is a correlation of
  per-(worker, age) weights with S, computed with one real FFT per worker: O(G D log D) per decision. It is the
  reference, not a hot-path policy.
- ``fast_phi`` evaluates K points: h_0 = 0 and the output-length quantiles at levels j/K (j = 1..K-1), with
  trapezoid weights on the integer grid (half a step added at each end, so a linear integrand sums exactly) and
  the tail beyond the last node h_L folded into it as sum_{t > h_L} S(t) / S(h_L). With K >= D the nodes are
  all h < D and it is phi exactly; the error shrinks as K grows. The per-decision cost is O(K N) in a dozen
  numpy calls (per-age conditional survival and the node weights are tables cached until the estimate
  changes).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from balanceroute.policies.base import ClusterSnapshot
from balanceroute.policies.horizon import HorizonPolicy
from balanceroute.policies.policy import check_int, register_policy, weighted_row_sums
from balanceroute.policies.survival import SurvivalEstimator


def overflow_cost(expected_load: np.ndarray, nodes: np.ndarray, coeff: np.ndarray, prompt_len: float) -> np.ndarray:
    """ΔΦ_g = sum_j coeff_j (s + h_j - M(h_j) + L̄_g(h_j))_+ for L̄ given as (G, nodes)."""
    over = np.subtract(expected_load, expected_load.max(axis=0), dtype=np.float64)  # bincount([]) is int
    over += prompt_len + nodes
    np.maximum(over, 0.0, out=over)
    return weighted_row_sums(over, coeff)


class _OverflowPolicy(HorizonPolicy):
    """Shared by phi and fast_phi: expected loads at some nodes h_j, then :func:`overflow_cost`."""

    def _expected_loads(self, snap: ClusterSnapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(L̄ (G, n), nodes h (n,), coeff (n,))."""
        raise NotImplementedError

    def cost(self, snap: ClusterSnapshot, prompt_len: float) -> np.ndarray:
        """ΔΦ_g(s) for every worker."""
        expected, nodes, coeff = self._expected_loads(snap)
        return overflow_cost(expected, nodes, coeff, prompt_len)

    def choose(self, snap, prompt_len, **request):
        return self.pick_min(snap, self.cost(snap, prompt_len), snap.kv_load)


@register_policy("phi")
class Phi(_OverflowPolicy):
    """argmin_g sum_{h < D} S(h) (s + h - m_g(h))_+, summed over the whole support of S (exact reference)."""

    def __init__(self, prior_mean: float = 256.0, prior_weight: float = 10.0,
                 prior_lengths: Sequence[int] | None = None, max_len: int = 8192, seed: int = 0) -> None:
        super().__init__(seed)
        self._init_knowledge(predictor="survival", prior_mean=prior_mean, prior_weight=prior_weight,
                             prior_lengths=prior_lengths, max_len=max_len)

    def _expected_loads(self, snap):
        table = self._requests(snap)
        est = self.estimator
        g = snap.num_workers
        surv, inv = est.survival_array, est.inverse_survival_array
        support = est.support_end()
        nodes = np.arange(support, dtype=np.float64)
        load = (table.prompt_len + table.generated).astype(np.float64)
        ages = np.minimum(table.generated, est.max_len)
        exact_now = np.bincount(table.worker, weights=load, minlength=g)
        if len(table) == 0:
            return np.zeros((g, support)), nodes, surv[:support]
        # L̄_g(h) = sum_a A_g[a] S(a + h) + h * sum_a B_g[a] S(a + h), A = w/S(a), B = 1/S(a) binned by (g, a).
        width = int(ages.max()) + 1
        index = table.worker * width + ages
        weight = inv.take(ages)
        per_age = np.stack([
            np.bincount(index, weights=load * weight, minlength=g * width).reshape(g, width),
            np.bincount(index, weights=weight, minlength=g * width).reshape(g, width)])
        corr = _correlate_rows(per_age, surv, support)  # (2, g, support)
        expected = corr[0] + corr[1] * nodes
        expected[:, 0] = exact_now  # h = 0: every resident request is there, exactly
        return expected, nodes, surv[:support]


def _correlate_rows(rows: np.ndarray, surv: np.ndarray, count: int) -> np.ndarray:
    """out[..., h] = sum_a rows[..., a] * surv[a + h] for h < count (surv is 0 past its end), by real FFT."""
    width = rows.shape[-1]
    size = 1 << int(np.ceil(np.log2(width + width + count)))
    ext = np.zeros(size)
    n = min(len(surv), size)
    ext[:n] = surv[:n]
    # correlation = convolution with the reversed rows; reversed row a' = width-1-a lands at h + width - 1.
    spectrum = np.fft.rfft(rows[..., ::-1], size) * np.fft.rfft(ext)
    return np.fft.irfft(spectrum, size)[..., width - 1:width - 1 + count]


@register_policy("fast_phi")
class FastPhi(_OverflowPolicy):
    """phi evaluated at K output-length quantile nodes with trapezoid weights (K = 5 by default)."""

    def __init__(self, K: int = 5, prior_mean: float = 256.0, prior_weight: float = 10.0,
                 prior_lengths: Sequence[int] | None = None, max_len: int = 8192, seed: int = 0) -> None:
        super().__init__(seed)
        self.K = check_int(self.name, "K", K, 1)
        self._scratch = _Scratch()
        self._init_knowledge(predictor="survival", prior_mean=prior_mean, prior_weight=prior_weight,
                             prior_lengths=prior_lengths, max_len=max_len)

    def quadrature(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(nodes h_j, coeff_j = weight_j * S(h_j), conditional table (n - 1, max_len+1) of the nodes after
        h_0 = 0), cached per estimate (:func:`quantile_quadrature`)."""
        return self.estimator.cached(("fast_phi", self.K), lambda est: quantile_quadrature(est, self.K))

    def _expected_loads(self, snap):
        table = self._requests(snap)
        nodes, coeff, conditional = self.quadrature()
        n, g, worker = len(nodes), snap.num_workers, table.worker
        expected = np.empty((n, g))
        # h_0 = 0: every resident request is there, so L̄(0) is the current load L_g, which the snapshot holds (the
        # sum of the table's w_i, exactly: integers in float64).
        expected[0] = snap.kv_load
        if n > 1:
            # The nodes after h_0 in (n - 1, N) arrays: numpy is slow at broadcasting over a short inner axis, so
            # nodes go first. They live in reused buffers: fresh ones would be page-faulted in on every decision.
            alive, held = self._scratch.views(n - 1, len(table))
            conditional.take(table.generated, axis=1, mode="clip", out=alive)  # P(still there at h_j)
            np.add(table.prompt_len + table.generated, nodes[1:, None], out=held)  # w_i + h_j
            alive *= held
            for j, weights in enumerate(alive, start=1):  # one bincount per node: no (node, worker) index to build
                expected[j] = np.bincount(worker, weights=weights, minlength=g)
        return expected.T, nodes, coeff


class _Scratch:
    """Two reusable (rows, N) float work arrays, grown geometrically."""

    def __init__(self) -> None:
        self._buffer = np.empty(0)

    def views(self, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        size = rows * cols
        if 2 * size > self._buffer.size:
            self._buffer = np.empty(2 * (2 * size))
        return self._buffer[:size].reshape(rows, cols), self._buffer[size:2 * size].reshape(rows, cols)


def quantile_quadrature(est: SurvivalEstimator, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fast_phi's nodes (h_0 = 0 first), coefficients and per-age conditional survival table of the nodes after
    h_0 for K = ``k`` points."""
    surv, inv = est.survival_array, est.inverse_survival_array
    support = est.support_end()
    if k >= support:  # enough points for every h < D: the sum itself
        nodes = np.arange(support)
    else:
        nodes = np.unique(np.concatenate(([0], est.quantile(np.arange(1, k) / k)))).astype(np.int64)
    weight = np.zeros(len(nodes))
    if len(nodes) == 1:
        weight[0] = 1.0
    else:
        gaps = np.diff(nodes) / 2.0
        weight[:-1] += gaps
        weight[1:] += gaps
        weight[[0, -1]] += 0.5
    last = int(nodes[-1])
    weight[-1] += est.tail_sum(last + 1) * inv[last]
    coeff = weight * surv[nodes]
    ages = np.arange(est.max_len + 1)
    # column a: P(O > a + h_j | O > a) for every node j after h_0 = 0 (there every request is alive, whatever the
    # estimate says about its age), so one gather serves all requests
    conditional = surv.take(ages[None, :] + nodes[1:, None], mode="clip") * inv[None, :]
    return nodes.astype(np.float64), coeff, conditional
