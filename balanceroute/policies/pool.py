"""Pool mode of BR-0 and BR-H: Bu et al.'s two-stage admission of waiting requests into free slots.

In the paper's decode-admission setting requests wait in a central pool and are placed only when a worker has a
free slot. One round (:func:`two_stage_assign`), repeated until the pool or the free slots run out:

1. Greedy stage, while the total free slots exceed ``S_greedy``: take the worker with the most free slots
   (ties: the largest margin, then a rotating start) and admit the single waiting request with the highest
   score F_g(s) (ties: the oldest). For BR-H "margin" is the discounted sum over the horizon, sum_h d_h m_{g,h}.
2. Scarce stage: take the worker the same way and, among the first ``R_max`` waiting requests, admit the subset
   Q (at most the worker's free slots) with the highest F_g(Q), scoring the subset by its total prompt
   Δs(Q). All 2^R_max - 1 non-empty subsets are scored at once (one matrix product). If the best score is
   <= 0 the single best request is admitted anyway, so the pool never stalls.

The score is BR-H's (BR-0 is its H = 0 case), on the projected loads L_g(h) of :class:`Envelope`:

    F_g(Δs) = α * (sum_h d_h) * Δs  -  β * sum_h d_h * (Δs - m_{g,h})_+,   m_{g,h} = max_g' L_g'(h) - L_g(h)

Free-slot counts of 2**40 and more (``ClusterSnapshot.from_loads``' "unlimited") all count as equal, so without
real slot limits the worker order is by margin alone.
"""
from __future__ import annotations

from functools import cache, cached_property

import numpy as np

from balanceroute.policies.base import Assignment, ClusterSnapshot, PendingRequests
from balanceroute.policies.policy import Policy, check_int, weighted_row_sums

#: Free-slot counts at or above this are "unlimited" and compare equal.
UNBOUNDED_FREE = 1 << 40
#: Largest R_max: 2^10 - 1 = 1023 subsets per scarce-stage decision is already far past the paper's 4.
MAX_R_MAX = 10


def check_pool_params(owner: str, S_greedy, R_max) -> tuple[int, int]:
    """Validate the two-stage parameters: S_greedy >= 0 and 1 <= R_max <= MAX_R_MAX."""
    S_greedy = check_int(owner, "S_greedy", S_greedy, 0)
    return S_greedy, check_int(owner, "R_max", R_max, 1, MAX_R_MAX)


class Envelope:
    """Projected per-worker loads L (G, H+1) and BR-H's score on them, updated as requests are placed.

    ``weights`` are the discounts d_h = γ^h; ``alpha`` and ``beta`` weigh the fill reward and the overflow
    penalty. With H = 0, d = [1], α = 1 and β = G the score is BR-0's F = s - G*(s - m_g)_+.
    ``loads`` (float64) becomes the envelope's own: :meth:`place` updates it in place.
    """

    def __init__(self, loads: np.ndarray, weights: np.ndarray, alpha: float, beta: float) -> None:
        self.loads = loads  # owned: place() updates it in place, so callers pass a fresh array
        self.weights = weights
        self.alpha = alpha
        self.beta = beta
        self.envelope = self.loads.max(axis=0)

    @cached_property
    def reward(self) -> float:
        """α * sum_h d_h: the fill reward per token (pool mode only, so not computed for an on-arrival choice)."""
        return self.alpha * float(self.weights.sum())

    def penalty(self, prompt_len: float) -> np.ndarray:
        """sum_h d_h (s - m_{g,h})_+ for every worker g.

        On arrival s is the same for every worker, so argmax_g F_g = argmin_g of this penalty whenever β > 0
        (α only matters in pool mode, where subsets of different sizes compete).
        """
        over = self.loads + (prompt_len - self.envelope)
        np.maximum(over, 0.0, out=over)
        return weighted_row_sums(over, self.weights)

    def scores(self, worker: int, totals: np.ndarray) -> np.ndarray:
        """F_worker(Δs) for an array of candidate prompt totals Δs."""
        over = totals[:, None] + (self.loads[worker] - self.envelope)
        np.maximum(over, 0.0, out=over)
        return self.reward * totals - self.beta * weighted_row_sums(over, self.weights)

    def place(self, worker: int, prompt_len: float, steps: int) -> None:
        """A request of ``prompt_len`` tokens joins ``worker`` and stays ``steps`` look-ahead steps."""
        row = self.loads[worker]
        row[:steps] += prompt_len + np.arange(min(steps, row.size))
        np.maximum(self.envelope, row, out=self.envelope)

    def headroom(self) -> np.ndarray:
        """sum_h d_h m_{g,h}: each worker's discounted margin (BR-0: m_g), largest = least loaded ahead."""
        return weighted_row_sums(self.envelope - self.loads, self.weights)


@cache
def subset_masks(r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masks, sizes, singles) for the 2^r - 1 non-empty subsets of r candidates.

    Row q - 1 is the subset whose bit k is set in q (candidate k = k-th oldest), so ``argmax`` over rows breaks
    ties towards subsets of older requests. ``singles`` are the rows of the one-element subsets.
    """
    q = np.arange(1, 1 << r)
    masks = ((q[:, None] >> np.arange(r)) & 1).astype(bool)
    masks.flags.writeable = False
    sizes = masks.sum(axis=1)
    return masks, sizes, (1 << np.arange(r)) - 1


def _free_key(free_slots: np.ndarray) -> np.ndarray:
    return -np.minimum(free_slots, UNBOUNDED_FREE).astype(np.float64)


def two_stage_assign(policy: Policy, snap: ClusterSnapshot, pending: PendingRequests, envelope: Envelope,
                     steps: np.ndarray, S_greedy: int, R_max: int) -> Assignment:
    """One pool-mode round of the two-stage procedure (module docstring); ``snap`` is not modified.

    ``steps[j]`` is how many look-ahead steps pending request j is projected to stay once placed.
    """
    work = snap.copy()
    work.requests = None  # placements are tracked by the envelope; no need to grow a table copy
    prompts = np.asarray(pending.prompt_len, dtype=np.float64)
    waiting = np.ones(len(prompts), dtype=bool)
    out = Assignment()
    while waiting.any():
        eligible = work.open_workers()  # free slots only shrink, so this narrows the previous mask
        if not eligible.any():
            break
        work.eligible = eligible
        worker = policy.pick_min(work, _free_key(work.free_slots), -envelope.headroom())
        left = np.flatnonzero(waiting)
        if float(work.free_slots[eligible].sum(dtype=np.float64)) > S_greedy:
            chosen = left[[int(np.argmax(envelope.scores(worker, prompts[left])))]]
        else:
            cand = left[:R_max]
            masks, sizes, singles = subset_masks(len(cand))
            score = envelope.scores(worker, masks @ prompts[cand])
            score[sizes > work.free_slots[worker]] = -np.inf
            best = int(np.argmax(score))
            if score[best] <= 0:
                best = int(singles[np.argmax(score[singles])])
            chosen = cand[masks[best]]
        for j in chosen:
            out.add(j, worker)
            work.place(worker, prompts[j])
            envelope.place(worker, prompts[j], int(steps[j]))
            waiting[j] = False
    return out
