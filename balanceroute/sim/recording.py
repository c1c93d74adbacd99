"""What a step group records of the steps it applies: statistics for the results, kept apart from stepping.

Every group keeps a timeline (per-worker load, running and waiting, thinned to a bound:
:class:`~balanceroute.sim.timeline.TimelineBuffer`) and its peak per-worker load. A group of workers behind the EP
barrier also feeds the host's balance metrics (:class:`~balanceroute.metrics.BalanceAccumulator`) and, when the
host keeps one, the per-step trace from which :mod:`balanceroute.steady` takes the steady window. Steps are
recorded a planned stretch at a time, as arrays, like they are applied.
"""
from __future__ import annotations

import numpy as np

from balanceroute.metrics import BalanceAccumulator
from balanceroute.sim.running import RunningTable
from balanceroute.sim.step_model import StepPlan
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
        self.trace = trace

    def record(self, plan: StepPlan, first: int, durations: np.ndarray, start: float, step: int, tokens0: int,
               running: RunningTable, waiting: np.ndarray) -> None:
        """Record planned steps ``first .. first + len(durations) - 1`` of ``plan``, just applied: numbered from
        ``step``, starting at ``start``; ``tokens0``: output tokens sampled in the first of them (every later one
        samples one per running request); ``running``: the requests that ran in them; ``waiting``: requests
        waiting per worker meanwhile.

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
        kv0 = load0 if first == 0 else plan.loads[first]
        per_worker = running.per_worker
        self.timeline.add(step, start, plan.ends[first:last + 1], kv0, None if k == 1 else per_worker, per_worker,
                          waiting)
        acc, trace = self.balance, self.trace
        if acc is None:
            return
        n = running.count
        if first == 0:
            local = plan.local_time
            busy = (local - _max(local)) + durations[0]  # exact at the max
            acc.add_step(load0, busy, float(durations[0]))
            if trace is not None:
                trace.add(np.array([start]), durations[:1], load0[None, :], busy[None, :], n, tokens0)
            tokens0 = n
            first, durations = 1, durations[1:]
        if first <= last:
            stop = last + 1
            acc.add_steps(plan.loads[first:stop], plan.busy[first:stop], durations)
            if trace is not None:
                trace.add(plan.ends[first - 1:last], durations, plan.loads[first:stop], plan.busy[first:stop], n,
                          tokens0)
