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
from balanceroute.sim.running import RunningTable
from balanceroute.sim.step_model import MAX_SPAN, StepModel, StepPlan
from balanceroute.sim.timeline import TimelineBuffer
from balanceroute.steady import StepTrace


class StepRecorder:
    """Records the steps of the global ``workers``; ``balance`` and ``trace`` (either may be None: not kept) only
    for a barrier group, whose busy times come from its ``step_model``."""

    def __init__(self, workers: np.ndarray, timeline_rows: int, step_model: StepModel,
                 balance: BalanceAccumulator | None, trace: StepTrace | None) -> None:
        self.timeline = TimelineBuffer(workers, timeline_rows)
        self.peak_load = 0.0  # largest per-worker KV load of any step (tokens)
        self.staged = None if balance is None and trace is None else _StagedSteps(step_model, balance, trace)

    def record(self, plan: StepPlan, first: int, durations: np.ndarray, start: float, step: int, tokens0: int,
               running: RunningTable, waiting: np.ndarray, before: int = 0,
               waiting_before: np.ndarray | None = None) -> None:
        """Record planned steps ``first .. first + len(durations) - 1`` of ``plan``, just applied: numbered from
        ``step``, starting at ``start``; ``tokens0``: output tokens sampled in the first of them (every later one
        samples one per running request); ``running``: the requests that ran in them; ``waiting``: requests
        waiting per worker meanwhile, except in the first ``before`` steps, which ended before the host enqueued
        more: ``waiting_before`` waited then."""
        k = len(durations)
        last = first + k - 1
        load0 = plan.scheduled.load
        top = plan.peak[last] if last else max(load0.tolist())
        if top > self.peak_load:
            self.peak_load = float(top)
        if self.timeline.wants(step, k):
            per_worker = running.per_worker
            for m, stop, queued in ((first, first + before, waiting_before), (first + before, last + 1, waiting)):
                if m < stop:
                    self.timeline.add(step + m - first, start if m == first else float(plan.ends[m - 1]),
                                      plan.ends[m:stop], load0, m, per_worker, queued)
        if self.staged is not None:
            self.staged.add(_Stretch(plan, first, k, start, running.count, tokens0))

    def flush(self) -> None:
        """Hand the staged steps to the balance metrics and the per-step trace (before they are read)."""
        if self.staged is not None:
            self.staged.flush()


@dataclass(slots=True)
class _Stretch:
    """Steps ``first .. first + k - 1`` of ``plan``, applied: the first started at ``start``; ``running``
    requests ran in each, ``tokens0`` tokens were sampled in the first (one per running request in the others)."""

    plan: StepPlan
    first: int
    k: int
    start: float
    running: int
    tokens0: int


class _StagedSteps:
    """Applied stretches staged for a :class:`BalanceAccumulator` and a :class:`StepTrace` (either may be None),
    handed on as per-step rows once ``size`` steps are staged."""

    def __init__(self, step_model: StepModel, balance: BalanceAccumulator | None, trace: StepTrace | None,
                 size: int = 16 * MAX_SPAN) -> None:
        self.step_model = step_model
        self.balance = balance
        self.trace = trace
        self.size = size
        self.stretches: list[_Stretch] = []
        self.steps = 0

    def add(self, stretch: _Stretch) -> None:
        self.stretches.append(stretch)
        self.steps += stretch.k
        if self.steps >= self.size:
            self.flush()

    def flush(self) -> None:
        """The staged steps as rows: per-worker loads ``L0 + m * growth`` (step m of its plan), busy times from
        the step model, starts (a stretch's first at its start, the others at the end of the step before),
        lengths, running requests and tokens sampled."""
        stretches = self.stretches
        if not stretches:
            return
        plans = [s.plan for s in stretches]
        k = np.array([s.k for s in stretches])
        heads = np.cumsum(k) - k  # row of each stretch's first step
        step_of_plan = np.arange(self.steps) - np.repeat(heads - [s.first for s in stretches], k)
        loads = (np.repeat(np.array([p.scheduled.load for p in plans]), k, axis=0)
                 + step_of_plan[:, None] * np.repeat(np.array([p.growth for p in plans]), k, axis=0))
        spans = [(s.first, s.first + s.k) for s in stretches]
        durations = np.concatenate([p.durations[a:b] for p, (a, b) in zip(plans, spans)])
        opening = [i for i, s in enumerate(stretches) if s.first == 0]  # stretches that start with a step 0
        busy = self.step_model.busy(loads, durations, heads[opening],
                                    np.array([plans[i].local_time for i in opening]).reshape(len(opening), -1))
        if self.balance is not None:
            self.balance.add_steps(loads, busy, durations)
        if self.trace is not None:
            starts = np.empty(self.steps)
            starts[1:] = np.concatenate([p.ends[a:b] for p, (a, b) in zip(plans, spans)])[:-1]
            starts[heads] = [s.start for s in stretches]
            running = np.repeat(np.array([s.running for s in stretches], dtype=np.float64), k)
            tokens = running.copy()
            tokens[heads] = [s.tokens0 for s in stretches]
            self.trace.add(starts, durations, loads, busy, running, tokens)
        self.stretches = []
        self.steps = 0
