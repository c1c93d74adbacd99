"""Fit the step model's coefficients to measured lock-steps.

The simulator prices a lock-step of G ranks as (ALGORITHMS.md section 3)

    T = c_0 + max_g (c_w + a * L_g + p * P_g) + b * mean_g L_g

with L_g a rank's KV tokens and P_g its prefill tokens in the step. Measured periods identify ``c_0 + c_w`` (every
step pays both once), ``a``, ``p`` and ``b``; the split of the constant between ``c_0`` and ``c_w`` changes only
the barrier-idle metric (an idle rank's own time), not any latency, and is not identifiable from periods, so the
fit reports the sum and :func:`StepFit.coefficients` puts it in ``c_w`` (the cost of a step on a rank, dummy or
not). The max makes the model piecewise linear: the fit alternates between choosing each step's slowest rank
under the current coefficients and a non-negative least-squares solve for the coefficients given those ranks,
until a choice repeats (it converged, or noisy steps make it cycle), and keeps the solve with the smallest
squared error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls

from balanceroute.calibration.steps import StepLogError, StepTable

MAX_ROUNDS = 50
MIN_STEPS = 20
#: The model config keys a fit sets.
STEP_MODEL_KEYS = ("a", "b", "c0", "cw", "p")


@dataclass(frozen=True)
class StepCosts:
    """The step model's coefficients as periods identify them (seconds, seconds per token)."""

    constant: float   # c_0 + c_w
    a: float
    b: float
    p: float

    @classmethod
    def of_model(cls, model: Any) -> StepCosts:
        """The costs of a model config or preset (anything with ``a``, ``b``, ``c0``, ``cw``, ``p``)."""
        return cls(model.c0 + model.cw, model.a, model.b, model.p)

    def coefficients(self) -> dict[str, float]:
        """The model config keys (``c0`` 0, the constant in ``cw``: see the module docstring)."""
        return dict(zip(STEP_MODEL_KEYS, (self.a, self.b, 0.0, self.constant, self.p)))

    def predict(self, steps: StepTable) -> np.ndarray:
        """The period of each of ``steps`` under these costs."""
        local = self.a * steps.kv + self.p * steps.prefill
        return self.constant + local.max(axis=1) + self.b * steps.kv.mean(axis=1)


@dataclass(frozen=True)
class StepFit(StepCosts):
    """Fitted costs and how well they explain the steps they came from."""

    num_steps: int
    r2: float                 # share of the periods' variance explained
    mean_abs_error: float     # mean |predicted - measured| / mean measured
    mean_period_s: float      # measured mean step period
    rounds: int

    @property
    def num_samples(self) -> int:
        return self.num_steps


def _design(steps: StepTable, slowest: np.ndarray) -> np.ndarray:
    rows = np.arange(steps.num_steps)
    return np.column_stack([np.ones(steps.num_steps), steps.kv[rows, slowest], steps.prefill[rows, slowest],
                            steps.kv.mean(axis=1)])


def fit_steps(steps: StepTable) -> StepFit:
    """Least-squares coefficients of the step model for ``steps`` (StepLogError when there are too few)."""
    if steps.num_steps < MIN_STEPS:
        raise StepLogError(f"only {steps.num_steps} complete steps to fit (need at least {MIN_STEPS}): run more "
                           "requests")
    # first guess of the slowest rank: the one computing the most tokens (prefill weighs like a whole context)
    slowest = np.argmax(steps.kv + steps.prefill, axis=1)
    best, seen = None, set()
    for rounds in range(1, MAX_ROUNDS + 1):
        x, residual = nnls(_design(steps, slowest), steps.period)
        if best is None or residual < best[1]:
            best = (x, residual)
        seen.add(slowest.tobytes())
        slowest = np.argmax(x[1] * steps.kv + x[2] * steps.prefill, axis=1)
        if slowest.tobytes() in seen:  # converged, or cycling between choices: keep the best solve
            break
    constant, a, p, b = (float(v) for v in best[0])
    quality = fit_quality(StepCosts(constant, a, b, p).predict(steps), steps.period)
    return StepFit(constant, a, b, p, steps.num_steps, *quality, rounds)


def fit_quality(predicted: np.ndarray, measured: np.ndarray) -> tuple[float, float, float]:
    """How well a fit explains what it was fitted to: R^2 (the share of the measured values' variance explained;
    NaN when they do not vary), the mean |predicted - measured| as a share of the measured mean, and that mean."""
    error = predicted - measured
    mean = float(measured.mean())
    spread = float(((measured - mean) ** 2).sum())
    r2 = 1.0 - float((error**2).sum()) / spread if spread > 0 else float("nan")
    return r2, float(np.abs(error).mean()) / mean, mean
