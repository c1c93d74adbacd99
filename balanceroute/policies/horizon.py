"""Shared machinery of the horizon policies (br_h, phi, fast_phi, bf_io): learning output lengths and
projecting per-worker load forward.

A resident request i (KV load w_i = s_i + j_i) that stays for k_i more look-ahead steps adds w_i + h to its
worker's load at steps h = 0 .. k_i - 1. The projection L_g(h), h = 0..H, is computed without touching each
(request, step) pair: the requests are binned by (worker, k_i) with two ``bincount`` calls (sum of w_i and
count), and a suffix sum over k turns "leaves after step k - 1" into "present at step h":

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

    Suffix sums come from one flat running sum per quantity: with F the running sum of the (worker, steps)
    bins in row-major order, sum_{k > h} bin[g, k] = F[g, H+1] - F[g, h] (exact for integer loads).
    """
    width = horizon + 2
    index = worker * width
    index += steps
    size = num_workers * width
    total = np.bincount(index, weights=load, minlength=size)
    if load.dtype.kind in "iu":  # integer running sums: exact, and numpy's int cumsum is ~3x its float one
        total = total.astype(np.int64)
    total = total.cumsum().reshape(num_workers, width)
    count = np.bincount(index, minlength=size).cumsum().reshape(num_workers, width)
    projected = (count[:, -1:] - count[:, :-1]) * _steps_range(horizon)
    projected += total[:, -1:] - total[:, :-1]
    return projected


@lru_cache(maxsize=64)
def _steps_range(horizon: int) -> np.ndarray:
    h = np.arange(horizon + 1, dtype=np.float64)
    h.flags.writeable = False
    return h


def new_request_increment(prompt_len: float, steps: int, horizon: int) -> np.ndarray:
    """What a new request of ``prompt_len`` tokens staying ``steps`` steps adds to L(h), h = 0..H."""
    h = _steps_range(horizon)
    return np.where(h < steps, prompt_len + h, 0.0)


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

    def _new_steps(self, horizon: int, prompt_hash: int, output_len: int | None) -> int:
        """Steps a request arriving now is projected to stay (capped at H+1)."""
        return int(self.predictor.new_steps(
            np.array([prompt_hash], dtype=np.int64), None if output_len is None else np.array([output_len]),
            1, horizon + 1)[0])
