"""What a step group records of the steps it applies: statistics for the results, kept apart from stepping.

Every group keeps a timeline (per-worker load, running and waiting, thinned to a bound:
:class:`~balanceroute.sim.timeline.TimelineBuffer`) and its peak per-worker load. A group of workers behind the EP
barrier also feeds the host's balance metrics (:class:`~balanceroute.metrics.BalanceAccumulator`) and, when the
host keeps one, the per-step trace from which :mod:`balanceroute.steady` takes the steady window. Steps are
recorded a planned stretch at a time, as arrays, like they are applied.

A stretch is often a step or two (an arrival cuts it), so what a record costs is the count of numpy calls, not the
rows: the simulator's steps are therefore staged here in blocks (:class:`_StagedSteps`: a few row copies per
record) and handed to the balance metrics and the per-step trace a block at a time, which compute the same
figures as step by step (the accumulator sums in its own fixed blocks either way).
"""
from __future__ import annotations

import numpy as np

from balanceroute.metrics import BalanceAccumulator
from balanceroute.sim.running import RunningTable
from balanceroute.sim.step_model import MAX_SPAN, StepPlan
from balanceroute.sim.timeline import TimelineBuffer
from balanceroute.steady import StepTrace

_max = np.maximum.reduce  # the ufunc reduction without the ndarray-method wrapper (hot, on a few workers)


class StepRecorder:
    """Records the steps of the global ``workers``; ``balance`` (and ``trace``, if not None) only for a barrier
    group (None: the host samples balance itself)."""

    def __init__(self, workers: np.ndarray, timeline_rows: int, balance: BalanceAccumulator | None,
                 trace: StepTrace | None) -> None:
        self.timeline = TimelineBuffer(workers, timeline_rows)
        self.peak_load = 0.0  # largest per-worker KV load of any step (tokens)
        self.balance = balance
        # with a step trace (the simulator's), balance and trace are fed a block at a time: the host flushes
        # before reading them; without one (the live emulator reads its balance at any time) balance is fed
        # directly
        self.staged = None if trace is None or balance is None else _StagedSteps(balance, trace, len(workers))

    def record(self, plan: StepPlan, first: int, durations: np.ndarray, start: float, step: int, tokens0: int,
               running: RunningTable, waiting: np.ndarray, before: int = 0,
               waiting_before: np.ndarray | None = None) -> None:
        """Record planned steps ``first .. first + len(durations) - 1`` of ``plan``, just applied: numbered from
        ``step``, starting at ``start``; ``tokens0``: output tokens sampled in the first of them (every later one
        samples one per running request); ``running``: the requests that ran in them; ``waiting``: requests
        waiting per worker meanwhile, except in the first ``before`` steps, which ended before the host enqueued
        more: ``waiting_before`` waited then.

        A worker's busy time in a step is its local time t_g plus the shared phase (b * mean L + c_0, which every
        worker spends in the all-to-all and expert work), so T - busy_g = max_g t_g - t_g is exactly its wait at
        the barrier, and the barrier idle fraction counts waiting only.
        """
        k = len(durations)
        last = first + k - 1
        load0 = plan.scheduled.load
        top = plan.peak[last] if last else _max(load0)
        if top > self.peak_load:
            self.peak_load = float(top)
        per_worker = running.per_worker
        for m, stop, queued in ((first, first + before, waiting_before), (first + before, last + 1, waiting)):
            if m < stop:
                self.timeline.add(step + m - first, start if m == first else float(plan.ends[m - 1]),
                                  plan.ends[m:stop], load0 if m == 0 else plan.loads[m],
                                  None if stop - m == 1 else per_worker, per_worker, queued)
        acc = self.balance
        if acc is None:
            return
        if plan.loads is None:  # a single step (step 0): its busy times come from its local times
            local = plan.local_time
            loads, busy = load0[None, :], ((local - _max(local)) + durations[0])[None, :]  # exact at the max
        else:  # step 0's row of plan.busy is the one above too (StepModel.plan)
            loads, busy = plan.loads[first:last + 1], plan.busy[first:last + 1]
        if self.staged is None:
            acc.add_steps(loads, busy, durations)
        else:
            self.staged.add(start, plan.ends[first:last], durations, loads, busy, running.count, tokens0)

    def flush(self) -> None:
        """Hand the staged steps to the balance metrics and the per-step trace (before they are read)."""
        if self.staged is not None:
            self.staged.flush()


class _StagedSteps:
    """Steps staged for a :class:`BalanceAccumulator` and a :class:`StepTrace`: starts, lengths, per-worker
    loads and busy times, running requests and tokens sampled, ``size`` steps at a time."""

    def __init__(self, balance: BalanceAccumulator, trace: StepTrace, num_workers: int,
                 size: int = 16 * MAX_SPAN) -> None:  # a stretch fits
        self.balance = balance
        self.trace = trace
        self.start = np.empty(size)
        self.length = np.empty(size)
        self.load = np.empty((size, num_workers))
        self.busy = np.empty((size, num_workers))
        self.running = np.empty(size)
        self.tokens = np.empty(size)
        self.n = 0

    def add(self, start: float, later_starts: np.ndarray, length: np.ndarray, load: np.ndarray,
            busy: np.ndarray, running: int, tokens0: int) -> None:
        """k steps: the first starting at ``start``, the others at ``later_starts`` (k - 1); their lengths (k,),
        loads and busy times (k, G); ``running`` requests in each; ``tokens0`` tokens sampled in the first step,
        one per running request in each later one."""
        k = len(length)
        if self.n + k > len(self.length):
            self.flush()
        n = self.n
        rows = slice(n, n + k)
        self.start[n] = start
        self.start[n + 1:n + k] = later_starts
        self.length[rows] = length
        self.load[rows] = load
        self.busy[rows] = busy
        self.running[rows] = running
        self.tokens[n] = tokens0
        self.tokens[n + 1:n + k] = running
        self.n = n + k

    def flush(self) -> None:
        n = self.n
        if n:
            self.balance.add_steps(self.load[:n], self.busy[:n], self.length[:n])
            self.trace.add(self.start[:n], self.length[:n], self.load[:n], self.busy[:n], self.running[:n],
                           self.tokens[:n])
            self.n = 0
