"""Shared machinery of the horizon policies (br_h, phi, fast_phi, bf_io): learning output lengths and
projecting per-worker load forward.

A resident request i (KV load w_i = s_i + j_i) that stays for k_i more look-ahead steps adds w_i + h to its
worker's load at steps h = 0 .. k_i - 1. The projection L_g(h), h = 0..H, is computed without touching each
(request, step) pair: the requests are binned by (worker, k_i) with two ``bincount`` calls (sum of w_i and
count), and one product with a constant matrix turns "leaves after step k - 1" into "present at step h":

    L_g(h) = sum_{i on g, k_i > h} w_i  +  h * #{i on g, k_i > h}

so a decision costs O(N + G*H) in a fixed number of numpy calls, not O(N*H) Python work.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from balanceroute.policies.base import ClusterSnapshot, RequestTable
from balanceroute.policies.policy import Policy, check_choice
from balanceroute.policies.predictors import PREDICTORS, SurvivalPredictor, make_predictor
from balanceroute.policies.survival import SurvivalEstimator


def project_loads(worker: np.ndarray, load: np.ndarray, steps: np.ndarray, num_workers: int,
                  horizon: int) -> np.ndarray:
    """L (G, H+1): L[g, h] = sum over requests i on g with steps_i > h of (load_i + h); steps_i in [1, H+1].

    Two ``bincount`` calls bin the loads and the requests by (worker, steps), side by side in one (G, 2(H+2))
    array; one product with the constant :func:`_presence` matrix turns "leaves after step k - 1" into "present
    at step h" for both and adds h per present request, giving L itself. Each numpy call costs about a
    microsecond on these small arrays, so the count of calls, not their size, sets a decision's latency. Exact
    for integer loads (sums of integers below 2^53 in float64, in any order).
    """
    width = horizon + 2
    index = worker * width
    index += steps
    size = num_workers * width
    binned = np.concatenate((np.bincount(index, weights=load, minlength=size).reshape(num_workers, width),
                             np.bincount(index, minlength=size).reshape(num_workers, width)), axis=1)
    return binned @ _presence(horizon)


@lru_cache(maxsize=64)
def _presence(horizon: int) -> np.ndarray:
    """(2(H+2), H+1) float: row k is [k > h] (a request staying k steps is present at h), row H+2+k is
    h*[k > h] (the h tokens it has grown by then), for columns h = 0..H."""
    k = np.arange(horizon + 2)[:, None]
    present = (k > np.arange(horizon + 1)[None, :]).astype(np.float64)
    matrix = np.concatenate((present, present * steps_range(horizon)))
    matrix.flags.writeable = False
    return matrix


@lru_cache(maxsize=64)
def steps_range(horizon: int) -> np.ndarray:
    """The look-ahead steps h = 0..H as a read-only float array (shared, cached per horizon)."""
    h = np.arange(horizon + 1, dtype=np.float64)
    h.flags.writeable = False
    return h


class HorizonPolicy(Policy):
    """A policy that reads per-request arrays and learns output lengths from finished requests.

    Subclasses call :meth:`_init_knowledge` with their prior parameters; ``self.estimator`` is the online
    :class:`SurvivalEstimator` and ``self.predictor`` turns it (or exact matches, or the oracle) into steps.
    """

    needs_requests = True

    def _init_knowledge(self, *, predictor: str, prior_mean: float, prior_weight: float,
                        prior_lengths: Sequence[int] | None, max_len: int) -> None:
        check_choice(self.name, "predictor", predictor, PREDICTORS)
        self.estimator = SurvivalEstimator(prior_mean, prior_weight, prior_lengths, max_len, owner=self.name)
        self.predictor: SurvivalPredictor = make_predictor(predictor, self.estimator, self.name)

    def observe_finished(self, output_len: int, prompt_hash: int = 0) -> None:
        self.predictor.observe(output_len, prompt_hash)

    def _requests(self, snap: ClusterSnapshot) -> RequestTable:
        if snap.requests is None:
            raise ValueError(
                f"{self.name} projects per-request loads and needs snap.requests: build the snapshot with "
                "LoadTracker.snapshot(with_requests=True) or pass requests=RequestTable(...) to "
                "ClusterSnapshot.from_loads")
        return snap.requests

    def _projection(self, snap: ClusterSnapshot, horizon: int) -> np.ndarray:
        """Projected loads L (G, H+1) of the resident requests under the predictor."""
        table = self._requests(snap)
        steps = self.predictor.steps(table, horizon + 1)
        return project_loads(table.worker, table.prompt_len + table.generated, steps, snap.num_workers, horizon)
