"""What a step group records of the steps it applies: statistics for the results, kept apart from stepping.

Every group keeps a timeline (per-worker load, running and waiting, thinned to a bound:
:class:`~balanceroute.sim.timeline.TimelineBuffer`) and its peak per-worker load. A group of workers behind the EP
barrier also feeds the host's balance metrics (:class:`~balanceroute.metrics.BalanceAccumulator`) and, when the
host keeps one, the per-step trace from which :mod:`balanceroute.steady` takes the steady window.

Steps are recorded a planned stretch at a time, like they are applied, and a stretch is often a step or two (an
arrival cuts it), so what a record costs is the count of numpy calls, not the rows. A record therefore only notes
the stretch (:class:`_Stretch`: its plan's arrays and which of its steps ran); the per-step loads and busy times are
computed from these notes in bulk, a few thousand steps at a time (:class:`_StagedSteps`), elementwise as the step
model defines them, so the figures are the same as step by step (the accumulator sums in its own fixed blocks
either way). The host flushes the staged steps before it reads the balance or the trace.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from balanceroute.metrics import BalanceAccumulator
from balanceroute.sim.step_model import MAX_SPAN, StepModel, StepPlan
from balanceroute.sim.timeline import TimelineBuffer
from balanceroute.steady import StepTrace


class StepRecorder:
    """Records the steps of the global ``workers``: a timeline, and ``balance`` and ``trace`` (either may be None:
    not kept) for a barrier group, whose busy times come from its ``step_model``. Stretches are staged and turned
    into per-step rows ``size`` steps at a time (and by :meth:`flush`)."""

    def __init__(self, workers: np.ndarray, timeline_rows: int, step_model: StepModel,
                 balance: BalanceAccumulator | None, trace: StepTrace | None, size: int = 16 * MAX_SPAN) -> None:
        self.timeline = TimelineBuffer(workers, timeline_rows)
        self.peak_load = 0.0  # largest per-worker KV load of any step (tokens)
        self.step_model = step_model
        self.balance = balance
        self.trace = trace
        self.size = size
        self.stretches: list[_Stretch] = []
        self.steps = 0

    def record(self, plan: StepPlan, first: int, k: int, start: float, step: int, tokens0: int, running: int,
               waiting: np.ndarray, before: int = 0, waiting_before: np.ndarray | None = None) -> None:
        """Record planned steps ``first .. first + k - 1`` of ``plan``, just applied: numbered from ``step``,
        starting at ``start``; ``tokens0``: output tokens sampled in the first of them (every later one samples
        one per running request); ``running``: requests that ran in each; ``waiting``: requests waiting per
        worker meanwhile (copied), except in the first ``before`` steps, which ended before the host enqueued
        more: ``waiting_before`` waited then."""
        self.stretches.append(_Stretch(plan, first, k, start, step, running, tokens0, waiting.copy(), before,
                                       waiting_before))
        self.steps += k
        if self.steps >= self.size:
            self.flush()

    def flush(self) -> None:
        """Turn the staged stretches into per-step rows for the timeline, the balance metrics and the per-step
        trace (the host calls it before it reads them): per-worker loads ``L0 + m * growth`` (step m of its
        plan), busy times from the step model, starts (a stretch's first at its start, the others at the end of
        the step before), lengths, running requests and tokens sampled."""
        stretches = self.stretches
        if not stretches:
            return
        plans = [s.plan for s in stretches]
        k = np.array([s.k for s in stretches])
        heads = np.cumsum(k) - k  # row of each stretch's first step
        rows = np.arange(self.steps)
        growth = np.repeat(np.array([p.growth for p in plans]), k, axis=0)
        loads = (np.repeat(np.array([p.scheduled.load for p in plans]), k, axis=0)
                 + (rows - np.repeat(heads - [s.first for s in stretches], k))[:, None] * growth)
        self.peak_load = max(self.peak_load, float(loads.max()))
        spans = [(s.first, s.first + s.k) for s in stretches]
        durations = np.concatenate([p.durations[a:b] for p, (a, b) in zip(plans, spans)])
        starts = np.empty(self.steps)
        starts[1:] = np.concatenate([p.ends[a:b] for p, (a, b) in zip(plans, spans)])[:-1]
        starts[heads] = [s.start for s in stretches]
        self.timeline.add(rows + np.repeat([s.step for s in stretches] - heads, k), starts, loads, growth,
                          _waiting_rows(stretches))
        if self.balance is not None or self.trace is not None:
            opening = [i for i, s in enumerate(stretches) if s.first == 0]  # stretches that start with a step 0
            busy = self.step_model.busy(loads, durations, heads[opening],
                                        np.array([plans[i].local_time for i in opening]).reshape(len(opening), -1))
        if self.balance is not None:
            self.balance.add_steps(loads, busy, durations)
        if self.trace is not None:
            running = np.repeat(np.array([s.running for s in stretches], dtype=np.float64), k)
            tokens = running.copy()
            tokens[heads] = [s.tokens0 for s in stretches]
            self.trace.add(starts, durations, loads, busy, running, tokens)
        self.stretches = []
        self.steps = 0


@dataclass(slots=True)
class _Stretch:
    """Steps ``first .. first + k - 1`` of ``plan``, applied (see :meth:`StepRecorder.record`)."""

    plan: StepPlan
    first: int
    k: int
    start: float
    step: int
    running: int
    tokens0: int
    waiting: np.ndarray
    before: int
    waiting_before: np.ndarray | None


def _waiting_rows(stretches: list[_Stretch]) -> np.ndarray:
    """Requests waiting per worker in each step of the stretches (steps x workers)."""
    values, counts = [], []
    for s in stretches:
        if s.before:
            values.append(s.waiting_before)
            counts.append(s.before)
        values.append(s.waiting)
        counts.append(s.k - s.before)
    return np.repeat(np.array(values), counts, axis=0)
