"""The :class:`Policy` base class, the policy registry and the shared tie-break.

Adding a policy is one class plus its registration::

    @register_policy("least_waiting")
    class LeastWaiting(Policy):
        '''Fewest waiting requests.'''
        def choose(self, snap, prompt_len, **request):
            return self.pick_min(snap, snap.waiting)

``make_policy("least_waiting")`` then builds it, and every backend can run it.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, ClassVar, TypeVar

import numpy as np

from balanceroute.policies.base import Assignment, ClusterSnapshot, PendingRequests
from balanceroute.policies.checks import choice_problem, int_problem, number_problem

_REGISTRY: dict[str, type["Policy"]] = {}
P = TypeVar("P", bound=type["Policy"])


class Policy:
    """A routing rule: snapshot in, worker index out.

    Subclasses implement :meth:`choose` (on-arrival dispatch). Pool-mode policies override :meth:`assign`;
    the default places pending requests first come, first served, each with :meth:`choose` restricted to workers
    that have a free slot. Decisions are deterministic for a fixed ``seed``; ties rotate through the workers
    (a tie never defaults to worker 0, which would pile equal-load traffic on one worker).
    """

    name: ClassVar[str] = ""
    #: Whether the policy reads ``snap.requests`` (per-request arrays); backends skip building them otherwise.
    needs_requests: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._cursor = 0

    # ---- the decisions -------------------------------------------------------------------------------------
    def choose(self, snap: ClusterSnapshot, prompt_len: int, *, prompt_hash: int = 0,
               output_len: int | None = None) -> int:
        """Worker index for one arriving request of ``prompt_len`` tokens.

        ``prompt_hash`` keys exact-match predictors; ``output_len`` is the true output length, given only by the
        simulator to oracle predictors.
        """
        raise NotImplementedError

    def assign(self, snap: ClusterSnapshot, pending: PendingRequests) -> Assignment:
        """Place waiting pool requests on workers with free slots (FCFS by default).

        Returns the placements in order; requests not placed stay in the pool. ``snap`` is not modified.
        """
        work = snap.copy()
        out = Assignment()
        for i in range(len(pending)):
            eligible = work.open_workers()  # free slots only shrink, so this narrows the previous mask
            if not eligible.any():
                break
            work.eligible = eligible
            request = _request_kwargs(pending, i)
            g = self.choose(work, int(pending.prompt_len[i]), **request)
            out.add(i, g)
            work.place(g, pending.prompt_len[i], **request)
        return out

    def observe_finished(self, output_len: int, prompt_hash: int = 0) -> None:
        """Feed the output length of a finished request (learning policies update their estimate).

        ``prompt_hash`` (0 where unknown) lets exact-match predictors learn per-prompt lengths.
        """

    # ---- helpers for subclasses ----------------------------------------------------------------------------
    def pick_min(self, snap: ClusterSnapshot, score: np.ndarray, secondary: np.ndarray | None = None) -> int:
        """Index of the lowest ``score`` among eligible workers.

        Ties go to the lowest ``secondary`` (if given), then to the first tied worker at or after a cursor that
        advances by one every decision, so equal workers are served in turn. For a few workers the comparison
        runs on Python lists: each numpy call costs about a microsecond, more than the whole scan at G <= 16.
        """
        g = len(score)
        start = self._cursor
        self._cursor = start + 1 if start + 1 < g else 0
        if g <= _PY_PICK_MAX_WORKERS:
            return _pick_min_lists(score.tolist(), None if snap.eligible is None else snap.eligible.tolist(),
                                   secondary, start)
        eligible = snap.eligible
        if eligible is not None:
            score = np.where(eligible, score, np.inf)
        best = score.min()
        if np.isfinite(best) or eligible is None:
            ties = np.flatnonzero(score == best)
        elif eligible.any():  # every eligible score is inf: ineligible workers must not join the tie
            ties = np.flatnonzero((score == best) & eligible)
        else:
            raise ValueError("no eligible worker to choose from")
        if ties.size > 1 and secondary is not None:
            sec = secondary[ties]
            ties = ties[sec == sec.min()]
        if ties.size == 1:
            return int(ties[0])
        k = int(np.searchsorted(ties, start))
        return int(ties[k if k < ties.size else 0])

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "rng")
        return f"{type(self).__name__}({params})"


#: Up to this many workers :meth:`Policy.pick_min` compares on Python lists (faster than numpy calls there).
_PY_PICK_MAX_WORKERS = 16


def weighted_row_sums(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_h weights_h * values[g, h] for every row g, overwriting ``values`` (a temporary of the caller's).

    Every row is summed alike, so workers with equal rows score equal to the last bit and :meth:`Policy.pick_min`
    breaks their tie by its rule. A matrix-vector product (``values @ weights``, BLAS) would be faster by about a
    microsecond but rounds equal rows differently by their position in the matrix, which decides such ties by
    position whenever the weights or values are not whole numbers.
    """
    values *= weights
    return values.sum(axis=1)


def _pick_min_lists(score: list, eligible: list | None, secondary: np.ndarray | None, start: int) -> int:
    """:meth:`Policy.pick_min` on Python lists (same result as the numpy path)."""
    if eligible is not None:
        if not any(eligible):
            raise ValueError("no eligible worker to choose from")
        score = [v if e else math.inf for v, e in zip(score, eligible)]
    best = min(score)
    ties = [i for i, v in enumerate(score) if v == best and (eligible is None or eligible[i])]
    if len(ties) > 1 and secondary is not None:
        sec = secondary.tolist()  # one conversion: reading numpy elements one by one costs more for a few ties
        low = min(sec[i] for i in ties)
        ties = [i for i in ties if sec[i] == low]
    if len(ties) == 1:
        return ties[0]
    for i in ties:
        if i >= start:
            return i
    return ties[0]


def _request_kwargs(pending: PendingRequests, i: int) -> dict:
    kwargs = {}
    if pending.prompt_hash is not None:
        kwargs["prompt_hash"] = int(pending.prompt_hash[i])
    if pending.output_len is not None:
        kwargs["output_len"] = int(pending.output_len[i])
    return kwargs


# ---- parameter validation ----------------------------------------------------------------------------------
def check_int(policy: str, name: str, value, minimum: int, maximum: int | None = None) -> int:
    """Validate an integer parameter in [minimum, maximum]; the error names the policy, parameter and range."""
    problem = int_problem(value, minimum, maximum)
    if problem:
        raise ValueError(f"{policy}: parameter {name} {problem}")
    return int(value)


def check_float(policy: str, name: str, value, low: float, high: float, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """Validate a finite real parameter in the interval [low, high] (bounds open where told)."""
    problem = number_problem(value, low, high, low_open=low_open, high_open=high_open)
    if problem:
        raise ValueError(f"{policy}: parameter {name} {problem}")
    return float(value)


def check_choice(policy: str, name: str, value, choices: tuple[str, ...]) -> str:
    problem = choice_problem(value, choices)
    if problem:
        raise ValueError(f"{policy}: parameter {name} {problem}")
    return value


# ---- registry ----------------------------------------------------------------------------------------------
def register_policy(name: str) -> Callable[[P], P]:
    """Class decorator: make the policy available to :func:`make_policy` under ``name``."""

    def decorate(cls: P) -> P:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"policy name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_policies() -> list[str]:
    """Names accepted by :func:`make_policy`, sorted."""
    return sorted(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown routing policy {name!r}; valid policies: {', '.join(available_policies())}") from None


def make_policy(name: str, **params) -> Policy:
    """Build the policy registered as ``name`` with its parameters.

    Raises ValueError naming the valid policies for an unknown name, the valid parameters for an unknown
    parameter, and the allowed range for an out-of-range value.
    """
    cls = policy_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"{name}: unknown parameter(s) {', '.join(unknown)}; valid parameters: {', '.join(accepted) or 'none'}")
    return cls(**params)
