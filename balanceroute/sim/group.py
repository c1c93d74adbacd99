"""A step group: workers that advance engine steps together, each with a vLLM-like scheduler.

With the EP barrier all G workers form one group (every step lasts ``max_g t_g + b * mean L + c_0``); without it
each worker is a group of its own with its own clock (``t_g + b * L_g + c_0``: the shared term of a group of one).

The group is the lock-step loop. Its parts, each in its own module: the requests it holds (running:
:mod:`~balanceroute.sim.running`, waiting: :mod:`~balanceroute.sim.waiting`); the scheduler that decides what each
worker runs in the next step (:mod:`~balanceroute.sim.scheduler`); the step model that times that step and the pure
decode steps that can follow it unchanged (:mod:`~balanceroute.sim.step_model`); and the recorder of statistics
(:mod:`~balanceroute.sim.recording`). Here the planned steps are applied (tokens, first tokens, inter-token gaps)
and the events at a step boundary handled: completions, timeouts, aborts, and the host's turn.

A group is driven by a host (:class:`StepHost`): the simulator's :class:`~balanceroute.sim.simulator.Simulation`,
which runs it from one known arrival to the next, or the emulator's live engine (:mod:`balanceroute.emulate`),
which runs it against a wall clock and hands the tokens of each step to HTTP clients. The step code is the same.
"""
from __future__ import annotations

import heapq
from typing import Protocol

import numpy as np

from balanceroute.load import LoadTracker, Router
from balanceroute.metrics import BalanceAccumulator
from balanceroute.sim.presets import ModelPreset
from balanceroute.sim.recording import StepRecorder
from balanceroute.sim.running import CHUNK, NREM, PF, RID, SLOT, C, J, RunningTable, S, W
from balanceroute.sim.scheduler import Scheduler
from balanceroute.sim.state import COMPLETED, FAILED, QUEUED, RUNNING, TIMEOUT, RequestState, WeightedSamples
from balanceroute.sim.step_model import MAX_SPAN, StepModel, StepPlan
from balanceroute.sim.waiting import WaitingQueues
from balanceroute.steady import StepTrace

_max = np.maximum.reduce  # the ufunc reduction without the ndarray-method wrapper (hot, on a few requests)


class StepHost(Protocol):
    """What a step group reads from and reports to the one driving it."""

    req: RequestState            # every request's state (the group's rows and queues hold indices into it)
    model: ModelPreset
    tracker: LoadTracker         # told of admissions, preemptions and tokens
    router: Router               # told of failures (timeouts)
    itl: WeightedSamples         # inter-token gaps
    balance: BalanceAccumulator  # per-step balance (groups built with record_balance only)
    steps: StepTrace | None      # per-step figures for the steady window (record_balance groups; None: not kept)
    timeout_s: float
    timeline_rows_per_group: int

    def pool_wants_steps(self) -> bool:
        """True when the host may place requests at the next step boundary (so steps must not be batched)."""

    def completed(self, requests: np.ndarray) -> None:
        """These requests just finished (status, counters and finish time are written back)."""

    def on_boundary(self, group: StepGroup) -> None:
        """``group`` reached a step boundary (at ``group.clock``); the host may enqueue or abort requests."""


class StepGroup:
    """Workers ``first_worker .. first_worker + num_workers - 1`` stepping together; ``record_balance``: this group
    feeds the host's balance metrics and step trace (the barrier group); ``max_span``: the most steps planned at
    once (1: step by step, the reference the batched stretches are tested against)."""

    def __init__(self, host: StepHost, first_worker: int, num_workers: int, *, record_balance: bool,
                 max_span: int = MAX_SPAN) -> None:
        self.host = host
        self.req = host.req
        self.first_worker = first_worker
        self.num_workers = num_workers
        self.clock = 0.0
        self.step = 0  # steps applied so far (the number of the next one)
        self.running = RunningTable(num_workers)
        self.waiting = WaitingQueues(num_workers)
        self.deadlines: list[tuple[float, int]] = []  # (deadline, request) of every request queued or running here
        self.scheduler = Scheduler(host.model, host.req, host.tracker, self.running, self.waiting,
                                   host.pool_wants_steps, max_span)
        self.step_model = StepModel(host.model, num_workers)
        self.recorder = StepRecorder(np.arange(first_worker, first_worker + num_workers),
                                     host.timeline_rows_per_group, self.step_model,
                                     host.balance if record_balance else None, host.steps if record_balance else None)
        self.plan: StepPlan | None = None  # the steps decided and timed, not all applied yet (None: none)
        self._waiting_then = self.waiting.count  # waiting counts while the plan's done steps ran (see _count)

    # ---- interface for the host ------------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return self.running.count == 0 and self.waiting.total == 0

    def enqueue(self, r: int, worker: int, now: float) -> None:
        """Request r was sent to (global) ``worker`` at time ``now`` (and recorded there by the host's tracker);
        it waits for the worker's next step."""
        req = self.req
        req.worker[r] = worker
        req.slot[r] = self.host.tracker.slot_of(r)
        req.status[r] = QUEUED
        if self.idle:
            self.clock = max(self.clock, now)  # an idle engine starts a step as soon as work arrives
            self.plan = None
        elif self.plan is not None:
            self.plan.keep_current_step()
        self.waiting.push(r, worker - self.first_worker)
        heapq.heappush(self.deadlines, (float(req.client_arrival[r]) + self.host.timeout_s, r))

    def pending_end(self) -> float:
        """End time of the group's next step (inf when idle)."""
        if self.plan is None:
            if self.idle:
                return np.inf
            self._schedule(np.inf)
        return float(self.plan.ends[self.plan.done])

    def advance(self, until: float, *, defer: bool = False) -> None:
        """Run every step that ends at or before ``until`` (stopping at deadlines to fail late requests).

        ``defer``: the host only needs the load tracker to be current at ``until`` (it routes there) and has
        nothing to do at the boundaries before it. Then the steps of a stretch that continues past ``until`` are
        only counted in the tracker; they are applied and recorded together with the step under way, when it
        ends: an arrival in the middle of a stretch costs one application instead of two. Not for a host that
        reads the running table between steps (the live emulator streams each step's tokens).
        """
        while True:
            if self.plan is None:
                if self.idle or self.clock >= until:
                    return
                self._schedule(until)
            plan = self.plan
            ends = plan.ends[plan.done:plan.length]
            k = int(ends.searchsorted(until, side="right"))
            deadline = self.next_deadline()
            if deadline <= ends[-1]:
                k = min(k, int(ends.searchsorted(deadline, side="left")) + 1)
            if defer and 0 < k < len(ends) and ends[k - 1] < deadline and (plan.done or k > 1):
                self._count(k)
                return
            if k == 0:
                return
            self._apply(plan.done - plan.applied + k)
            self._boundary()

    def next_deadline(self) -> float:
        heap, status = self.deadlines, self.req.status
        while heap and status[heap[0][1]] >= COMPLETED:
            heapq.heappop(heap)
        return heap[0][0] if heap else np.inf

    def resident_kv(self) -> np.ndarray:
        """KV tokens held per worker right now."""
        n, fields = self.running.count, self.running.fields
        return np.bincount(fields[W, :n], weights=fields[C, :n], minlength=self.num_workers)

    def release_all(self) -> list[int]:
        """End of run: write back the counters of running requests; returns every request still in the group."""
        n, fields, req = self.running.count, self.running.fields, self.req
        rid = fields[RID, :n]
        req.generated[rid] = fields[J, :n]
        return rid.tolist() + self.waiting.live(req.status)

    # ---- deciding the next steps -----------------------------------------------------------------------------------
    def _schedule(self, until: float) -> None:
        """Decide the step starting at ``self.clock`` and plan its timing and that of the decode steps that can
        follow it (``until``: the next event outside the group, beyond which a longer plan would be wasted)."""
        scheduled = self.scheduler.schedule(self.clock)
        if scheduled is None:
            self.plan = None
            return
        horizon = min(until, self.next_deadline()) if scheduled.max_steps > 1 else until
        self.plan = self.step_model.plan(scheduled, self.running, self.clock, horizon)

    # ---- applying steps --------------------------------------------------------------------------------------------
    def _count(self, k: int) -> None:
        """The next k planned steps after those done have ended: count their tokens in the tracker only.

        Never step 0 alone when it prefills (only the requests completing their prompt sample a token there),
        so every request gets k tokens. The waiting counts are kept for their timeline rows.
        """
        plan = self.plan
        if plan.done == plan.applied:
            self._waiting_then = self.waiting.count.copy()
        self._tokens_to_all(k)
        plan.done += k

    def _tokens_to_all(self, k: int) -> None:
        """Tell the tracker that every running request generated k more tokens (the per-worker counts kept here
        spare it counting the requests' workers)."""
        running = self.running
        self.host.tracker.tokens_bulk(running.fields[SLOT, :running.count], k, per_worker=running.per_worker,
                                      first_worker=self.first_worker)

    def _apply(self, k: int) -> None:
        """Apply the next k planned steps: step 0 as scheduled, the others pure decode steps (those already done
        are in the tracker: the rest are counted there now)."""
        running, req, plan = self.running, self.req, self.plan
        n, fields = running.count, running.fields
        first = plan.applied
        counted = plan.done - first
        durations, ends = plan.durations[first:first + k], plan.ends[first:first + k]
        start = self.clock
        first_weight = n  # ITL samples: each step's duration, once per request decoding in it (step 0: fewer)
        tokens0 = n  # tokens sampled in the first of these steps (the others: n each)
        if first or plan.scheduled.prefill_tokens is None:  # decode steps: each request computes and samples one
            if running.without_first_token:
                fresh = fields[J, :n] == 0
                req.first_token[fields[RID, :n][fresh]] = ends[0]
                first_weight -= running.without_first_token
                running.without_first_token = 0
            fields[J:NREM + 1, :n] += k  # generated, computed and -remaining (adjacent rows)
            self._tokens_to_all(k - counted)
        else:  # step 0 computes prefill chunks: requests that computed their last uncomputed token sample one
            first_weight, tokens0 = self._prefill_step(ends[0], k, counted)
        itl = self.host.itl
        if first_weight == n:
            itl.add(durations, n)
        else:
            itl.add(durations[:1], first_weight)
            itl.add(durations[1:], n)
        self.recorder.record(plan, first, k, start, self.step, tokens0, n, self.waiting.count, counted,
                             self._waiting_then)
        plan.applied = plan.done = first + k
        self.clock = float(ends[-1])
        self.step += k

    def _prefill_step(self, end: float, k: int, counted: int) -> tuple[int, int]:
        """Apply a step 0 that computes prefill chunks (``CHUNK`` tokens of each prefilling request, one of every
        other) and the k - 1 decode steps planned after it (the first ``counted`` of the k are in the tracker
        already). Returns the requests that decoded before it (the ITL weight of its duration) and the tokens it
        sampled.

        A request samples when it has computed its last uncomputed token. A decoding request always does (it
        holds every token but the one it sampled last), so only the prefilling ones, a few, are looked at one
        by one: that costs less than vectorised passes over every running request. A decoding request's gap
        is this step; a recompute's first token follows the last token before its preemption.
        """
        running, fields, req = self.running, self.running.fields, self.req
        n = running.count
        rows = fields[PF, :n].nonzero()[0].tolist()
        unsampled, gaps, done, fresh, fresh_unsampled = [], [], 0, 0, 0
        for r in rows:
            row = fields[:, r].tolist()
            rid, s, j, c, chunk = row[RID], row[S], row[J], row[C], row[CHUNK]
            c += chunk - 1  # its chunk; the one token every request computes is added below
            fields[C, r] = c
            if c + 1 != s + j:
                unsampled.append(r)
                fresh_unsampled += j == 0
                continue
            fields[PF, r] = 0
            done += 1
            if j == 0:
                fresh += 1
                req.first_token[rid] = end
            else:
                gaps.append(end - req.last_token[rid])
        decoding = n - len(rows)
        fresh_decoding = running.without_first_token - fresh - fresh_unsampled
        if fresh_decoding:  # (disaggregated) decoding requests that sample their first token now
            first_token = fields[J, :n] == 0
            first_token[rows] = False
            req.first_token[fields[RID, :n][first_token]] = end
        running.without_first_token -= fresh + fresh_decoding
        if gaps:
            self.host.itl.add(np.array(gaps), 1)
        running.prefilling -= done
        if unsampled:  # a prompt continues next step: a single step (decode steps follow only when none does)
            sampled = np.ones(n, dtype=bool)
            sampled[unsampled] = False
            fields[C, :n] += 1
            fields[J:NREM + 1:NREM - J, :n] += sampled  # generated and -remaining (rows J and NREM)
            self.host.tracker.tokens_bulk(fields[SLOT, :n][sampled], 1)
        else:  # every request sampled; the decode steps after step 0 add a token each (and compute one)
            fields[J:NREM + 1, :n] += k  # generated, computed and -remaining (adjacent rows)
            self._tokens_to_all(k - counted)
        return decoding - fresh_decoding, n - len(unsampled)

    # ---- events at a step boundary ---------------------------------------------------------------------------------
    def _boundary(self) -> None:
        """Events at the step boundary just reached: completions, timeouts, the host's turn (pool placement).

        Inside a planned stretch nothing completes (it ends at the first completion), so the plan is kept unless
        a request timed out.
        """
        if self.plan.applied == self.plan.length:
            self.plan = None
            remaining = self.running.fields[NREM, :self.running.count]
            if len(remaining) and _max(remaining) >= 0:
                self._complete(remaining >= 0)
        if self.deadlines and self.deadlines[0][0] <= self.clock and self._expire():
            self.plan = None
        self.host.on_boundary(self)

    def _complete(self, done: np.ndarray) -> None:
        fields, req = self.running.fields, self.req
        columns = done.nonzero()[0]
        rid = fields[RID, columns]
        req.generated[rid] = fields[J, columns]
        req.status[rid] = COMPLETED
        req.finish[rid] = self.clock
        self.running.remove_completed(columns, done)
        self.host.completed(rid)

    def _expire(self) -> bool:
        """Fail every request of the group whose deadline has passed (waiting or running); True if any did."""
        req, router, clock = self.req, self.host.router, self.clock
        heap, status = self.deadlines, req.status
        late: list[int] = []
        while heap and heap[0][0] <= clock:
            _, r = heapq.heappop(heap)
            if status[r] in (QUEUED, RUNNING):
                late.append(r)
        if not late:
            return False
        self._take_out(late)
        for r in late:
            status[r] = FAILED
            req.error[r] = TIMEOUT
            req.finish[r] = clock
            router.abort(r)
        return True

    def abort(self, r: int, error: int) -> None:
        """Fail request r (queued or running here) with ``error``; the caller releases it from the tracker.

        A queued request may be aborted at any time; a running one only at a step boundary (from the host's
        :meth:`StepHost.on_boundary`), since the planned steps include it: the plan is dropped and the next step
        scheduled without it, as vLLM frees an aborted request's KV before its next step.
        """
        running = self.req.status[r] == RUNNING
        self._take_out([r])
        self.req.status[r] = FAILED
        self.req.error[r] = error
        self.req.finish[r] = self.clock
        if running:
            self.plan = None

    def _take_out(self, requests: list[int]) -> None:
        """Remove queued or running requests from the queues' counts and the running table (counters saved)."""
        req, status = self.req, self.req.status
        running = []
        for r in requests:
            if status[r] == QUEUED:  # its queue entry is dropped when it surfaces
                self.waiting.leave(int(req.worker[r]) - self.first_worker)
            else:
                running.append(r)
        if running:
            fields = self.running.fields
            hit = np.isin(fields[RID, :self.running.count], running)
            columns = np.flatnonzero(hit)
            req.generated[fields[RID, columns]] = fields[J, columns]
            self.running.remove(columns, hit)
