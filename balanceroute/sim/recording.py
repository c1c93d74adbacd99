"""What a step group records of the steps it applies: statistics for the results, kept apart from stepping.

Every group keeps a timeline (per-worker load, running and waiting, thinned to a bound:
:class:`~balanceroute.sim.timeline.TimelineBuffer`) and its peak per-worker load. A group of workers behind the EP
barrier also feeds the host's balance metrics (:class:`~balanceroute.metrics.BalanceAccumulator`) and, when the
host keeps one, the per-step trace from which :mod:`balanceroute.steady` takes the steady window.

Steps are recorded a planned stretch at a time, like they are applied, and a stretch is often a step or two (an
arrival cuts it), so what a record costs is its Python and numpy calls, not its rows. A record therefore only
notes the stretch, a few values appended to lists (:class:`_Notes`: its plan's arrays and which of its steps ran);
the per-step rows are computed from the notes in bulk, a few thousand steps at a time, elementwise as the step
model defines them, so the figures are the same as step by step (the accumulator sums in its own fixed blocks
either way). The host flushes the notes before it reads the results.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from balanceroute.metrics import BalanceAccumulator
from balanceroute.sim.step_model import MAX_SPAN, StepModel, StepPlan
from balanceroute.sim.timeline import TimelineBuffer
from balanceroute.steady import StepTrace


class StepRecorder:
    """Records the steps of the global ``workers``: a timeline, and ``balance`` and ``trace`` (either may be None:
    not kept) for a barrier group, whose busy times come from its ``step_model``. Stretches are noted and turned
    into per-step rows once ``stretches`` are noted or ``cells`` per-worker entries (steps x workers), and by
    :meth:`flush`: bounds on the notes (the G groups of workers without the barrier each keep their own) and on the
    flush's temporary arrays."""

    def __init__(self, workers: np.ndarray, timeline_rows: int, step_model: StepModel,
                 balance: BalanceAccumulator | None, trace: StepTrace | None, stretches: int = 512,
                 cells: int = 2 ** 15) -> None:
        self.timeline = TimelineBuffer(workers, timeline_rows)
        self.peak_load = 0.0  # largest per-worker KV load of any step (tokens)
        self.step_model = step_model
        self.balance = balance
        self.trace = trace
        self.max_stretches = stretches
        self.max_steps = max(MAX_SPAN, cells // len(workers))
        self.notes = _Notes()

    def record(self, plan: StepPlan, first: int, k: int, start: float, step: int, tokens0: int, running: int,
               waiting: np.ndarray, before: int = 0, waiting_before: np.ndarray | None = None) -> None:
        """Record planned steps ``first .. first + k - 1`` of ``plan``, just applied: numbered from ``step``,
        starting at ``start``; ``tokens0``: output tokens sampled in the first of them (every later one samples
        one per running request); ``running``: requests that ran in each; ``waiting``: requests waiting per
        worker meanwhile (copied), except in the first ``before`` steps, which ended before the host enqueued
        more: ``waiting_before`` waited then."""
        notes = self.notes
        if first == 0:  # the plan's step 0: its busy times come from its local times, which count its prefill
            notes.opening.append(len(notes.k))
            notes.prefill.append(plan.scheduled.prefill_tokens)
        notes.load0.append(plan.scheduled.load)
        notes.growth.append(plan.growth)
        notes.first.append(first)
        notes.k.append(k)
        notes.start.append(start)
        notes.step.append(step)
        notes.running.append(running)
        notes.tokens0.append(tokens0)
        notes.durations.append(plan.durations[first:first + k])
        notes.ends.append(plan.ends[first:first + k])
        if before:
            notes.waiting.append(waiting_before)
            notes.waiting_steps.append(before)
        notes.waiting.append(waiting.copy())
        notes.waiting_steps.append(k - before)
        notes.steps += k
        if notes.steps >= self.max_steps or len(notes.k) >= self.max_stretches:
            self.flush()

    def flush(self) -> None:
        """Turn the noted stretches into per-step rows for the timeline, the balance metrics and the per-step
        trace (the host calls it before it reads them): per-worker loads ``L0 + m * growth`` (step m of its
        plan), busy times from the step model, starts (a stretch's first at its start, the others at the end of
        the step before), lengths, running requests and tokens sampled."""
        notes, self.notes = self.notes, _Notes()
        if not notes.k:
            return
        k = np.array(notes.k)
        heads = np.cumsum(k) - k  # row of each stretch's first step
        rows = np.arange(notes.steps)
        growth = np.repeat(np.array(notes.growth), k, axis=0)
        loads = (np.repeat(np.array(notes.load0), k, axis=0)
                 + (rows - np.repeat(heads - notes.first, k))[:, None] * growth)
        self.peak_load = max(self.peak_load, float(loads.max()))
        durations = np.concatenate(notes.durations)
        starts = np.empty(notes.steps)
        starts[1:] = np.concatenate(notes.ends)[:-1]
        starts[heads] = notes.start
        self.timeline.add(rows + np.repeat(notes.step - heads, k), starts, loads, growth,
                          np.repeat(np.array(notes.waiting), notes.waiting_steps, axis=0))
        if self.balance is None and self.trace is None:
            return
        prefill = np.zeros((len(notes.opening), loads.shape[1]))
        for row, tokens in enumerate(notes.prefill):
            if tokens is not None:
                prefill[row] = tokens
        busy = self.step_model.busy(loads, durations, heads[notes.opening], prefill)
        if self.balance is not None:
            self.balance.add_steps(loads, busy, durations)
        if self.trace is not None:
            running = np.repeat(np.array(notes.running, dtype=np.float64), k)
            tokens = running.copy()
            tokens[heads] = notes.tokens0
            self.trace.add(starts, durations, loads, busy, running, tokens)


@dataclass(slots=True)
class _Notes:
    """Noted stretches, a list per field (see :meth:`StepRecorder.record`); ``opening`` lists the stretches that
    start with their plan's step 0 and ``prefill`` those steps' prefill tokens; ``waiting`` and ``waiting_steps`` give
    the waiting counts of consecutive runs of steps; ``steps`` counts the steps."""

    load0: list[np.ndarray] = field(default_factory=list)
    growth: list[list[int]] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    k: list[int] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    tokens0: list[int] = field(default_factory=list)
    durations: list[np.ndarray] = field(default_factory=list)
    ends: list[np.ndarray] = field(default_factory=list)
    opening: list[int] = field(default_factory=list)
    prefill: list[list[int] | None] = field(default_factory=list)
    waiting: list[np.ndarray] = field(default_factory=list)
    waiting_steps: list[int] = field(default_factory=list)
    steps: int = 0
