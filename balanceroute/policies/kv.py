"""KV-load policies: jsq_load and BR-0 (Bu et al. 2026) on arrival.

The load of worker g is L_g, the KV tokens of every request the router sent there and that has not finished
(prompt plus tokens generated so far). The barrier step waits for the largest L_g, the envelope M.

BR-0 scores a request of prompt s on worker g as F_g = s - G * (s - m_g)_+ with the margin m_g = M - L_g:
slope +1 while the request fits under the envelope, -(G-1) once it raises it (every other worker then idles
for the excess). F_g never increases with L_g, so on arrival BR-0's argmax, with ties to the lower load, is
always argmin L_g: **on-arrival BR-0 is JSQ-Load** (a property test pins this). BR-0 differs only where it
chooses which requests to place together, in pool mode (``balanceroute.policies.pool``).
"""
from __future__ import annotations

import numpy as np

from balanceroute.policies.policy import Policy, register_policy


def br0_scores(kv_load: np.ndarray, prompt_len: float) -> np.ndarray:
    """F_g = s - G * (s - m_g)_+ for every worker (ALGORITHMS.md, section 2)."""
    margin = kv_load.max() - kv_load
    return prompt_len - len(kv_load) * np.maximum(prompt_len - margin, 0.0)


@register_policy("jsq_load")
class JsqLoad(Policy):
    """Join the worker with the least KV load L_g (prompt + generated tokens of its unfinished requests)."""

    def choose(self, snap, prompt_len, **request):
        return self.pick_min(snap, snap.kv_load)


@register_policy("br0")
class Br0(Policy):
    """BR-0: argmax_g s - G*(s - m_g)_+, ties to the lowest L_g.

    On arrival it equals jsq_load (see the module docstring); pool mode is where it differs.
    """

    def choose(self, snap, prompt_len, **request):
        return self.pick_min(snap, -br0_scores(snap.kv_load, prompt_len), snap.kv_load)
