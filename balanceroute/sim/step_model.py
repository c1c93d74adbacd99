"""The DP+EP step model (ALGORITHMS.md section 3): how long the steps the scheduler decided take.

Worker g's local time in a step is ``t_g = c_w + a * L_g + p * prefill_g`` (attention over its KV after the step,
prefill compute) and the step lasts ``T = max_g t_g + b * mean L + c_0`` (EP all-to-all and expert work, which every
worker of the group shares). With the EP barrier the G workers of a step group share every step; without it each
worker is a group of its own (G = 1: ``t_g + b * L_g + c_0``). The coefficients keep the symbols of
ALGORITHMS.md and :class:`~balanceroute.sim.presets.ModelPreset`.

Planning ahead is what keeps the simulator fast. A scheduled step can be followed, where nothing can change, by a
stretch of pure decode steps (the scheduler says how many: :attr:`ScheduledStep.max_steps`): every running request
adds one token per step, so the loads grow linearly (``L_g + m * running_g`` at step m) and the stretch's step
times are a few array operations over its steps. The scheduler decides what runs (:mod:`balanceroute.sim.scheduler`),
this module times it, the step group applies it (:mod:`balanceroute.sim.group`): a simulator without batched
stretches would ask for one step at a time.

A plan costs a handful of numpy calls whatever its length, and there is one per event (an arrival, a completion),
so the per-worker figures (G of them, a few) are Python floats here: numpy's per-call overhead exceeds the work.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from balanceroute.metrics.balance import row_max
from balanceroute.sim.presets import ModelPreset
from balanceroute.sim.running import RunningTable

_cumsum = np.add.accumulate  # the ufunc without the ndarray-method wrapper (hot, on short arrays)

#: Longest stretch of steps planned at once (bounds the steps x workers arrays).
MAX_SPAN = 256
_STEPS = np.arange(MAX_SPAN, dtype=np.float64)  # step offsets m of a stretch


@dataclass(slots=True)
class ScheduledStep:
    """What the scheduler decided for the step starting now: the step model's inputs, per worker, and how many
    steps the decision holds for."""

    load: np.ndarray                   # KV tokens after the step (L_g: its attention runs over them)
    prefill_tokens: list[int] | None   # tokens computed at the prefill rate p (None: a pure decode step, in
                                       # which every running request computes one token)
    max_steps: int                     # 1, or 1 + the pure decode steps that may follow with nothing changing


@dataclass(slots=True)
class StepPlan:
    """A scheduled step (step 0) and the pure decode steps timed after it; steps ``applied .. length - 1`` remain
    to be applied, the first of them starting at the group's clock. Steps ``applied .. done - 1`` have ended
    already and their tokens are counted by the load tracker, but the running table and the records do not have
    them yet (:meth:`~balanceroute.sim.group.StepGroup.advance` with ``defer``).

    Planned step m has the per-worker load ``scheduled.load + m * growth``: the per-step loads are not kept, as
    only the steps applied are recorded, a stretch at a time (:mod:`balanceroute.sim.recording`)."""

    scheduled: ScheduledStep
    growth: list[int]           # per worker: tokens each decode step adds (its running requests, as planned)
    durations: np.ndarray       # T of every planned step
    ends: np.ndarray            # end time of every planned step
    length: int                 # steps that may be applied (cut back when a request arrives)
    applied: int = 0            # steps applied so far
    done: int = 0               # steps ended so far (>= applied)

    def keep_current_step(self) -> None:
        """A request arrived: the step under way stays, the later ones are dropped (they may now admit it)."""
        self.length = min(self.length, self.done + 1)


def _peaks(load: list[float], growth: list[int], span: int) -> np.ndarray:
    """The largest per-worker load, ``max_g load_g + m * growth_g``, of steps m = 0 .. span - 1 (whole numbers,
    so exact however computed), as a new array.

    Each worker's load is a line in m. A line that starts no higher than the top one at m = 0 and ends no higher is
    never above it in between, so only the lines that end higher can overtake it: usually none, and the peak is
    one line. (A (steps x workers) array reduced over its rows costs far more, some 70 ns a row.)
    """
    last = span - 1
    ends = [x + last * r for x, r in zip(load, growth)]
    top = load.index(max(load))
    peak = load[top] + growth[top] * _STEPS[:span]
    for g, end in enumerate(ends):
        if end > ends[top]:
            np.maximum(peak, load[g] + growth[g] * _STEPS[:span], out=peak)
    return peak


class StepModel:
    """Step times of a group of ``num_workers`` workers of ``model`` stepping together."""

    def __init__(self, model: ModelPreset, num_workers: int) -> None:
        self.a, self.b, self.c0, self.cw, self.p = model.a, model.b, model.c0, model.cw, model.p
        self.b_mean = model.b / num_workers  # b * mean(L) = b_mean * sum(L)

    def plan(self, step: ScheduledStep, running: RunningTable, clock: float, horizon: float) -> StepPlan:
        """Time ``step`` (starting at ``clock``) and up to ``step.max_steps - 1`` pure decode steps after it.

        ``running``: the requests that run (per worker, the loads' growth per decode step). Decode steps only
        grow longer, so the plan stops at the first step that ends past ``horizon`` (the next event outside the
        group: an arrival, a deadline): a longer one would be cut there anyway.
        """
        load = step.load.tolist()  # per-worker figures as Python floats: G is small, numpy calls cost more
        if step.prefill_tokens is None:  # the largest local time is the largest load's (rounding is monotone)
            slowest = self.cw + self.a * max(load)
        else:
            slowest = max(self.cw + self.a * x + self.p * y for x, y in zip(load, step.prefill_tokens))
        span = step.max_steps
        total = sum(load)  # whole numbers: exact in any order
        first = slowest + self.b_mean * total + self.c0
        growth = running.per_worker.tolist()
        if span > 1:
            ahead = horizon - clock - first
            shortest = self.cw + self.c0 + self.a * max(load) + self.b_mean * total
            if ahead < (span - 2) * shortest:
                span = max(int(ahead / shortest), 0) + 2
        if span == 1:  # one step: its end without the running sum (the same float)
            return StepPlan(step, growth, np.array([first]), np.array([clock + first]), 1)
        # step m: loads L0 + m * running; T = (c_w + c_0 + b * mean L0) + a * max_g L + (b / G * running) * m,
        # computed in place on the fresh array of peaks (the same operations: + and * commute exactly)
        durations = _peaks(load, growth, span)
        durations *= self.a
        durations += self.cw + self.c0 + self.b_mean * total
        durations += (self.b_mean * running.count) * _STEPS[:span]
        durations[0] = first
        ends = _cumsum(durations)
        ends += clock
        return StepPlan(step, growth, durations, ends, span)

    def busy(self, loads: np.ndarray, durations: np.ndarray, first_rows: np.ndarray,
             first_prefill: np.ndarray) -> np.ndarray:
        """Each worker's busy time in steps of per-worker ``loads`` (steps x workers) and ``durations``: its local
        time plus the shared phase (b * mean L + c_0, spent by every worker in the all-to-all and expert work), so
        that the step length minus it is exactly the worker's wait at the barrier. In a decode step that is
        ``T - a * (max_g L - L_g)``; the rows ``first_rows`` are scheduled steps (step 0 of their plans, which may
        prefill ``first_prefill`` tokens, len(first_rows) x workers), whose busy times come from their local times
        ``c_w + a * L_g + p * prefill_g``."""
        busy = self.a * (loads - row_max(loads)[:, None]) + durations[:, None]
        if len(first_rows):
            local = self.cw + self.a * loads[first_rows]
            local += self.p * first_prefill
            busy[first_rows] = (local - row_max(local)[:, None]) + durations[first_rows, None]
        return busy
