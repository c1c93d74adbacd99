"""KV-load policies: jsq_load and BR-0 (Bu et al. 2026).

The load of worker g is L_g, the KV tokens of every request the router sent there and that has not finished
(prompt plus tokens generated so far). The barrier step waits for the largest L_g, the envelope M.

BR-0 scores a request of prompt s on worker g as F_g = s - G * (s - m_g)_+ with the margin m_g = M - L_g:
slope +1 while the request fits under the envelope, -(G-1) once it raises it (every other worker then idles
for the excess). F_g never increases with L_g, so on arrival BR-0's argmax, with ties to the lower load, is
always argmin L_g: **on-arrival BR-0 is JSQ-Load** (a property test pins this). BR-0 differs only where it
chooses which requests to place together, in pool mode (:mod:`balanceroute.policies.pool`).
"""
from __future__ import annotations

import numpy as np

from balanceroute.policies.base import PendingRequests
from balanceroute.policies.policy import Policy, register_policy
from balanceroute.policies.pool import Envelope, check_pool_params, two_stage_assign

_ONE = np.ones(1)


def br0_overflow(kv_load: np.ndarray, prompt_len: float) -> np.ndarray:
    """(s - m_g)_+ for every worker: the tokens by which the request would raise the envelope M.

    Computed as (L_g + (s - M))_+, the same arithmetic as BR-H's :class:`Envelope`, so that BR-H with H = 0
    reproduces it bit for bit.
    """
    over = kv_load + (prompt_len - kv_load.max())
    np.maximum(over, 0.0, out=over)
    return over


def br0_scores(kv_load: np.ndarray, prompt_len: float) -> np.ndarray:
    """F_g = s - G * (s - m_g)_+ for every worker (ALGORITHMS.md, section 2)."""
    return prompt_len - len(kv_load) * br0_overflow(kv_load, prompt_len)


@register_policy("jsq_load")
class JsqLoad(Policy):
    """Join the worker with the least KV load L_g (prompt + generated tokens of its unfinished requests)."""

    def choose(self, snap, prompt_len, **request):
        return self.pick_min(snap, snap.kv_load)


@register_policy("br0")
class Br0(Policy):
    """BR-0: argmax_g s - G*(s - m_g)_+, ties to the lowest L_g (Bu et al. 2026).

    On arrival it equals jsq_load (see the module docstring). Pool mode (:meth:`assign`) is the paper's
    two-stage admission: greedy while more than ``S_greedy`` slots are free, then the best subset of the first
    ``R_max`` waiting requests per worker (:func:`balanceroute.policies.pool.two_stage_assign`).
    """

    def __init__(self, S_greedy: int = 8, R_max: int = 4, seed: int = 0) -> None:
        super().__init__(seed)
        self.S_greedy, self.R_max = check_pool_params(self.name, S_greedy, R_max)

    def choose(self, snap, prompt_len, **request):
        # F_g = s - G * overflow_g with s the same for every worker: argmax F = argmin overflow.
        return self.pick_min(snap, br0_overflow(snap.kv_load, prompt_len), snap.kv_load)

    def assign(self, snap, pending: PendingRequests):
        g = snap.num_workers
        envelope = Envelope(snap.kv_load[:, None].astype(np.float64), _ONE, alpha=1.0, beta=float(g))
        return two_stage_assign(self, snap, pending, envelope, np.ones(len(pending), dtype=np.int64),
                                self.S_greedy, self.R_max)
