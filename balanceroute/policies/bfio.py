"""BF-IO: fill free slots so as to minimise the projected barrier idle (Chen et al. 2026, arXiv:2601.17855).

Chen et al. state the objective as a finite-horizon integer program: place waiting requests into free slots so
that the predicted imbalance over the next H steps is smallest. Our rule is a greedy solution of that program:

- Projection: resident requests give L_g(h), h = 0..H (:mod:`balanceroute.policies.horizon`, same predictors as
  BR-H); a waiting request j of prompt s_j projected to stay k_j steps adds inc_j(h) = s_j + h for h < k_j.
- Objective: the barrier idle J = sum_{h=0..H} (G * M_h - sum_g L_g(h)), M_h = max_g L_g(h). Placing j on g
  changes it by ΔJ(j, g) = sum_h [G * (L_g(h) + inc_j(h) - M_h)_+ - inc_j(h)]: negative when j fills a valley
  under the envelope, positive when it raises the envelope.
- Round (:meth:`BfIo.assign`): every free slot is filled while requests wait. Each placement takes the
  (request, worker) pair with the smallest ΔJ among the first ``window`` waiting requests and the workers with a
  free slot (ties: lowest load, then a rotating start; then the oldest request), and updates L before the next.
  So BF-IO chooses *which* waiting requests take the free slots, not only where the oldest goes: in saturation a
  round usually has one free slot, and placing the oldest request first (as an earlier version did) made BF-IO
  first come, first served there.
- Starvation guard (age bound): a request at the head of the pool may be passed over by at most ``max_bypass``
  placements of younger requests; then it is placed next, on its best worker. The count runs across rounds and
  restarts whenever the head is placed, so the head is placed within ``max_bypass + 1`` placements and the
  request k-th in line within k * (``max_bypass`` + 1): nothing waits unboundedly however well younger requests
  fit (``max_bypass=0`` is first come, first served).
- On arrival (:meth:`BfIo.choose`, used by on-arrival backends): the same ΔJ for the one request, i.e.
  argmin_g sum_h (L_g(h) + inc(h) - M_h)_+ (the -inc term is equal for every worker).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from balanceroute.policies.base import Assignment, PendingRequests
from balanceroute.policies.horizon import HorizonPolicy, steps_range
from balanceroute.policies.policy import check_int, register_policy


@register_policy("bf_io")
class BfIo(HorizonPolicy):
    """Greedy minimisation of the projected barrier idle over H steps (pool mode; see the module docstring)."""

    def __init__(self, H: int = 20, window: int = 16, max_bypass: int = 64, predictor: str = "survival",
                 prior_mean: float = 256.0, prior_weight: float = 10.0, prior_lengths: Sequence[int] | None = None,
                 max_len: int = 8192, seed: int = 0) -> None:
        super().__init__(seed)
        self.H = check_int(self.name, "H", H, 0)
        self.window = check_int(self.name, "window", window, 1)
        self.max_bypass = check_int(self.name, "max_bypass", max_bypass, 0)
        self.bypassed = 0  # placements of younger requests since the pool's head request became the head
        self._init_knowledge(predictor=predictor, prior_mean=prior_mean, prior_weight=prior_weight,
                             prior_lengths=prior_lengths, max_len=max_len)

    def choose(self, snap, prompt_len, *, prompt_hash: int = 0, output_len: int | None = None):
        # The new request adds s + h for h < k and nothing after; past step k the terms are (L - M)_+ = 0, so
        # only the first k look-ahead steps are summed (exact: the projections are integers in float64).
        k = self.predictor.new_step(prompt_hash, output_len, self.H + 1)
        loads = self._projection(snap, self.H)[:, :k]
        over = loads + (steps_range(self.H)[:k] + (prompt_len - loads.max(axis=0)))
        np.maximum(over, 0.0, out=over)
        return self.pick_min(snap, over.sum(axis=1), snap.kv_load)

    def assign(self, snap, pending: PendingRequests) -> Assignment:
        loads = self._projection(snap, self.H)
        envelope = loads.max(axis=0)
        g = snap.num_workers
        steps = self.predictor.new_steps(pending.prompt_hash, pending.output_len, len(pending), self.H + 1)
        h = np.arange(self.H + 1)
        inc = np.where(h < steps[:, None], np.asarray(pending.prompt_len, dtype=np.float64)[:, None] + h, 0.0)
        added = inc.sum(axis=1)
        work = snap.copy()
        work.requests = None  # placements are tracked in the projection; no need to grow a table copy
        waiting = np.ones(len(pending), dtype=bool)
        out = Assignment()
        columns = np.arange(g)
        while waiting.any():
            eligible = work.open_workers()  # free slots only shrink, so this narrows the previous mask
            if not eligible.any():
                break
            work.eligible = eligible
            left = np.flatnonzero(waiting)
            overdue = waiting[0] and self.bypassed >= self.max_bypass
            cand = left[:1] if overdue else left[:self.window]
            over = loads[None, :, :] + (inc[cand][:, None, :] - envelope)  # (C, G, H+1)
            np.maximum(over, 0.0, out=over)
            delta = g * over.sum(axis=2) - added[cand][:, None]  # ΔJ (C, G)
            best = np.argmin(delta, axis=0)  # per worker, the oldest of its best requests
            worker = self.pick_min(work, delta[best, columns], loads[:, 0])
            j = int(cand[best[worker]])
            self.bypassed = 0 if j == 0 else self.bypassed + int(waiting[0])
            out.add(j, worker)
            work.place(worker, pending.prompt_len[j])
            loads[worker] += inc[j]
            np.maximum(envelope, loads[worker], out=envelope)
            waiting[j] = False
        return out
