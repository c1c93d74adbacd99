"""A step group: workers that advance engine steps together, each with a vLLM-like scheduler.

With the EP barrier all G workers form one group (every step lasts ``max_g t_g + b * mean L + c_0``); without it
each worker is a group of its own with its own clock (``t_g + b * L_g + c_0``: the shared term of a group of one).

Per step and worker the scheduler follows vLLM V1: running requests first (one token per decoding request, the
rest of the token budget to requests still prefilling, oldest first), then admission of waiting requests, first
come first served, while a batch slot, the token budget and KV blocks allow (chunked prefill: a prompt that does
not fit in the budget continues next step). KV is allocated in blocks for the tokens a step computes, so a
request holds ceil(computed / block_size) blocks. When a worker's running requests need more blocks than it has,
its most recently admitted requests are preempted (recompute): their KV is dropped, their generated tokens are
kept (they were already streamed), they go back to the front of the worker's queue and, when admitted again,
re-prefill prompt + generated tokens at the prefill rate before sampling their next token; a worker that
preempted admits nothing that step (as vLLM). What is lost is the compute spent on the dropped KV and the time
until readmission.

Speed: running requests live in a columnar table (one numpy row per field) and every step is vectorised over
it. A scheduled step is followed, where nothing can change, by a planned stretch of pure decode steps (up to the
next completion, the next possible KV shortage, the next arrival or deadline): their loads grow linearly
(``L_g + m * running_g`` at step m), so their step times are a small (steps x workers) array and the per-request
counters advance by the stretch length at once. KV blocks in use are bounded by ``load / block_size + running``
and counted exactly only when that bound comes near the capacity.

A group is driven by a host (:class:`StepHost`): the simulator's :class:`~balanceroute.sim.simulator.Simulation`,
which runs it from one known arrival to the next, or the emulator's live engine (:mod:`balanceroute.emulate`),
which runs it against a wall clock and hands the tokens of each step to HTTP clients. The step code is the same.
"""
from __future__ import annotations

import heapq
from collections import deque
from typing import Protocol

import numpy as np

from balanceroute.load import LoadTracker, Router
from balanceroute.metrics import BalanceAccumulator
from balanceroute.sim.presets import ModelPreset
from balanceroute.sim.state import COMPLETED, FAILED, QUEUED, RUNNING, TIMEOUT, RequestState, WeightedSamples
from balanceroute.sim.timeline import TimelineBuffer
from balanceroute.steady import StepTrace

# ufunc reductions without the ndarray-method wrappers (a hot path on arrays of a few workers)
_max, _sum, _cumsum = np.maximum.reduce, np.add.reduce, np.add.accumulate

# rows of the running table: request, local worker, tracker slot, prompt, generated j, computed c, j - target
# output (-remaining: 0 when done; kept next to j and c so one add advances all three), admission order,
# prefilling flag, this step's prefill chunk
RID, W, SLOT, S, J, C, NREM, SEQ, PF, CHUNK = range(10)
_FIELDS = 10
#: Longest stretch of steps planned at once (bounds the steps x workers arrays).
MAX_SPAN = 256
_STEPS = np.arange(MAX_SPAN, dtype=np.float64)  # step offsets m of a stretch, as a column and as a row
_STEPS_COL = _STEPS[:, None]


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
    """Workers ``first_worker .. first_worker + num_workers - 1`` stepping together."""

    def __init__(self, sim: StepHost, first_worker: int, num_workers: int, *, record_balance: bool) -> None:
        self.sim = sim
        self.req = sim.req
        self.first = first_worker
        self.G = g = num_workers
        m = sim.model
        self.a, self.b, self.c0, self.cw, self.p = m.a, m.b, m.c0, m.cw, m.p
        self.b_mean = m.b / g  # b * mean(L) = b_mean * sum(L)
        self.B = m.block_size
        self.cap_blocks = m.kv_capacity_blocks
        self.max_seqs = m.max_num_seqs
        self.budget = m.max_num_batched_tokens
        self.record_balance = record_balance
        self.timeline = TimelineBuffer(np.arange(first_worker, first_worker + g), sim.timeline_rows_per_group)
        self.clock = 0.0
        self.step = 0
        self.peak_load = 0.0  # largest per-worker KV load of any step (tokens)
        # per worker
        self.queues: list[deque] = [deque() for _ in range(g)]
        self.waiting = np.zeros(g, dtype=np.int64)   # live entries of each queue
        self.n_wait = 0
        self.n_run = np.zeros(g, dtype=np.int64)     # running requests
        # running table
        self.n = 0
        self.n_pf = 0        # rows still prefilling
        self.n_nofirst = 0   # rows that have not produced their first token
        self.seq = 0         # admission counter (preemption picks the highest)
        self.tab = np.zeros((_FIELDS, 64), dtype=np.int64)
        self.deadlines: list[tuple[float, int]] = []
        # the plan: steps _off.._K-1 of it remain (step _off starts at self.clock); step end times and durations;
        # step 0's per-worker load and local time
        self._off = self._K = 0
        self._ends: np.ndarray | None = None
        self._T: np.ndarray | None = None
        self._L0: np.ndarray | None = None
        self._local0: np.ndarray | None = None
        self._new: np.ndarray | None = None     # tokens per row of step 0 when it has prefill chunks (else 1 each)
        self._loads: np.ndarray | None = None   # (steps x workers) loads of a planned stretch, and their max
        self._top: np.ndarray | None = None
        self._busy: np.ndarray | None = None   # barrier mode: per-worker busy time of those steps
        self._blocks: np.ndarray | None = None  # per-worker KV blocks after step 0: exact or an upper bound
        self._load: np.ndarray | None = None    # step 0's per-worker load when scheduling already has it
        self._exact = False

    # ---- interface for the simulation ----------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return self.n == 0 and self.n_wait == 0

    def enqueue(self, r: int, worker: int, now: float) -> None:
        """Request r was sent to (global) ``worker`` at time ``now`` (and recorded there by the host's tracker);
        it waits for the worker's next step."""
        req = self.req
        req.worker[r] = worker
        req.slot[r] = self.sim.tracker.slot_of(r)
        req.status[r] = QUEUED
        if self.idle:
            self.clock = max(self.clock, now)  # an idle engine starts a step as soon as work arrives
            self._ends = None
        elif self._ends is not None:
            self._K = min(self._K, self._off + 1)  # the step under way stays; later ones may now admit it
        g = worker - self.first
        self.queues[g].append(r)
        self.waiting[g] += 1
        self.n_wait += 1
        heapq.heappush(self.deadlines, (req.client_arrival[r] + self.sim.timeout_s, r))

    def pending_end(self) -> float:
        """End time of the group's next step (inf when idle)."""
        if self._ends is None:
            if self.idle:
                return np.inf
            self._schedule(np.inf)
        return float(self._ends[self._off])

    def advance(self, until: float) -> None:
        """Run every step that ends at or before ``until`` (stopping at deadlines to fail late requests)."""
        while True:
            if self._ends is None:
                if self.idle or self.clock >= until:
                    return
                self._schedule(until)
            ends = self._ends[self._off:self._K]
            k = int(ends.searchsorted(until, side="right"))
            deadline = self.next_deadline()
            if deadline <= ends[-1]:
                k = min(k, int(ends.searchsorted(deadline, side="left")) + 1)
            if k == 0:
                return
            self._apply(k)
            self._boundary()

    def next_deadline(self) -> float:
        heap, status = self.deadlines, self.req.status
        while heap and status[heap[0][1]] >= COMPLETED:
            heapq.heappop(heap)
        return heap[0][0] if heap else np.inf

    def resident_kv(self) -> np.ndarray:
        """KV tokens held per worker right now."""
        n = self.n
        return np.bincount(self.tab[W, :n], weights=self.tab[C, :n], minlength=self.G)

    def release_all(self) -> list[int]:
        """End of run: write back the counters of running requests; returns every request still in the group."""
        n, req = self.n, self.req
        rid = self.tab[RID, :n]
        req.generated[rid] = self.tab[J, :n]
        left = rid.tolist()
        for q in self.queues:
            left.extend(r for r in q if req.status[r] == QUEUED)
        return left

    # ---- scheduling ------------------------------------------------------------------------------------------------
    def _schedule(self, until: float) -> None:
        """Decide the step starting at ``self.clock`` (allocation, preemption, admission) and plan its timing
        (``until``: the next event outside the group, beyond which a longer plan would be wasted)."""
        g, cap = self.G, self.cap_blocks
        blocked = None
        self._load = None
        if self.n:
            while True:
                new, budget_left = self._running_tokens()
                kv = self.tab[C, :self.n] + (1 if new is None else new)  # tokens each row holds after this step
                w = self.tab[W, :self.n]
                load = np.bincount(w, weights=kv, minlength=g)
                self._load = load if new is None else None  # step 0's load, unless admissions add to it
                self._exact = False
                top = float(_max(load)) / self.B
                blocks = None
                if top + self.max_seqs <= cap:  # far from full: sum ceil(kv / B) <= load / B + running
                    break
                blocks = load / self.B + self.n_run
                if _max(blocks) <= cap:
                    break
                blocks = np.bincount(w, weights=-(-kv // self.B), minlength=g)
                self._exact = True
                over = blocks > cap
                if not over.any():
                    break
                blocked = over if blocked is None else blocked | over
                self._preempt(over, blocks, kv)
        else:
            budget_left = np.full(g, self.budget, dtype=np.int64)
            blocks = np.zeros(g)
            self._exact = True
        self._blocks = load / self.B + self.n_run if blocks is None else blocks
        if self.n_wait:
            self._admit(budget_left, blocked)
        if self.n == 0:
            if self.n_wait:
                raise RuntimeError("simulator bug: requests wait on an empty worker that cannot admit them")
            self._ends = None
            return
        self._plan(until)

    def _running_tokens(self) -> tuple[np.ndarray | None, np.ndarray]:
        """Tokens each running row computes this step (None: one each) and the token budget left per worker."""
        n, tab = self.n, self.tab
        if self.n_pf == 0:
            return None, self.budget - self.n_run
        pf = tab[PF, :n].astype(bool)
        left = (self.budget - np.bincount(tab[W, :n][~pf], minlength=self.G)).tolist()
        rows = np.flatnonzero(pf)
        rows = rows[np.argsort(tab[SEQ, rows])]
        for r in rows.tolist():  # few: a prompt continued from the previous step, per worker
            w = tab[W, r]
            chunk = min(int(tab[S, r] + tab[J, r] - tab[C, r]), left[w])
            tab[CHUNK, r] = chunk
            left[w] -= chunk
        return np.where(pf, tab[CHUNK, :n], 1), np.array(left, dtype=np.int64)

    def _exact_blocks(self) -> np.ndarray:
        """Exact per-worker KV blocks after step 0's allocation (a row holds ceil(its tokens after the step / B))."""
        n, tab = self.n, self.tab
        kv = tab[C, :n] + (1 if self._new is None else self._new)
        self._exact = True
        return np.bincount(tab[W, :n], weights=-(-kv // self.B), minlength=self.G)

    def _preempt(self, over: np.ndarray, blocks: np.ndarray, kv: np.ndarray) -> None:
        """Free KV on overfull workers by preempting their most recently admitted rows (vLLM recompute)."""
        n, tab, req, tracker = self.n, self.tab, self.req, self.sim.tracker
        drop = np.zeros(n, dtype=bool)
        for w in np.flatnonzero(over).tolist():
            rows = np.flatnonzero(tab[W, :n] == w)
            deficit = int(blocks[w]) - self.cap_blocks
            for r in rows[np.argsort(-tab[SEQ, rows])].tolist():
                if deficit <= 0:
                    break
                drop[r] = True
                deficit -= -(-int(kv[r]) // self.B)
                rid = int(tab[RID, r])
                req.generated[rid] = tab[J, r]
                req.computed[rid] = 0
                req.needs_prefill[rid] = True
                req.status[rid] = QUEUED
                req.preemptions[rid] += 1
                if not tab[PF, r]:  # a decoding row sampled its latest token at the end of the last step
                    req.last_token[rid] = self.clock
                self.queues[w].appendleft(rid)  # the oldest preempted ends up first, as vLLM's prepend
                self.waiting[w] += 1
                self.n_wait += 1
                self.n_run[w] -= 1
                self.n_pf -= int(tab[PF, r])
                self.n_nofirst -= int(tab[J, r] == 0)
                tracker.preempted(rid)
        self._compact(~drop)

    def _admit(self, budget_left: np.ndarray, blocked: np.ndarray | None) -> None:
        """FCFS admission on each worker while a slot, token budget and KV blocks allow.

        Free blocks come from the bound on blocks in use; only when a request does not fit under the bound are
        the blocks counted exactly (rare: the bound is loose by less than a block per request).
        """
        req, B, cap, tracker = self.req, self.B, self.cap_blocks, self.sim.tracker
        status, prompt, output, generated, computed = req.status, req.prompt, req.output, req.generated, req.computed
        base = self._blocks
        admitted = np.zeros(self.G, dtype=np.int64)
        rows: list[tuple] = []
        for w in np.flatnonzero(self.waiting).tolist():
            if blocked is not None and blocked[w]:
                continue
            q = self.queues[w]
            slots = self.max_seqs - int(self.n_run[w])
            left = int(budget_left[w])
            free = int(cap - base[w])
            taken = 0
            while slots > 0 and left > 0 and q:
                r = q[0]
                if status[r] != QUEUED:  # failed while waiting: drop the stale entry
                    q.popleft()
                    continue
                s, j, c = int(prompt[r]), int(generated[r]), int(computed[r])
                chunk = min(s + j - c, left)
                need = -(-(c + chunk) // B)
                if need > free:
                    if self._exact:
                        break
                    base = self._exact_running_blocks()
                    free = int(cap - base[w]) - int(admitted[w])
                    if need > free:
                        break
                q.popleft()
                slots -= 1
                left -= chunk
                free -= need
                admitted[w] += need
                taken += 1
                pf = int(req.needs_prefill[r])
                rows.append((r, w + self.first, req.slot[r], s, j, c, j - output[r], self.seq, pf, chunk))
                self.seq += 1
                self.n_pf += pf
                self.n_nofirst += j == 0
                status[r] = RUNNING
                tracker.started(r)
            if taken:
                self.waiting[w] -= taken
                self.n_wait -= taken
                self.n_run[w] += taken
        self._blocks = base + admitted
        if rows:
            self._load = None
            k = len(rows)
            self._reserve(k)
            block = np.array(rows, dtype=np.int64).T
            block[W] -= self.first
            self.tab[:, self.n:self.n + k] = block
            self.n += k

    def _exact_running_blocks(self) -> np.ndarray:
        """Exact blocks of the rows present before this round's admissions (they enter the table after it)."""
        n, tab = self.n, self.tab
        new = np.where(tab[PF, :n] > 0, tab[CHUNK, :n], 1) if self.n_pf else 1
        self._exact = True
        return np.bincount(tab[W, :n], weights=-(-(tab[C, :n] + new) // self.B), minlength=self.G)

    def _plan(self, until: float) -> None:
        """Timing of the scheduled step and of the stretch of pure decode steps that can follow it.

        Step 0 is what was scheduled (prefill chunks included). It is followed by pure decode steps when after it
        every row decodes (all prefill chunks complete their prompt) and no worker could admit more (nothing
        waits where a slot is free): then step m >= 1 has loads ``L0 + m * running`` (each row adds one token per
        step), up to the first completion, the first possible KV shortage and MAX_SPAN.
        """
        n, tab, g = self.n, self.tab, self.G
        w = tab[W, :n]
        if self.n_pf:
            pf = tab[PF, :n] > 0
            chunk = tab[CHUNK, :n]
            new = np.where(pf, chunk, 1)
            load = np.bincount(w, weights=tab[C, :n] + new, minlength=g)
            local = self.cw + self.a * load + self.p * np.bincount(w[pf], weights=chunk[pf], minlength=g)
            tail = bool((chunk[pf] == (tab[S, :n] + tab[J, :n] - tab[C, :n])[pf]).all())
            self._new = new
        else:
            load = np.bincount(w, weights=tab[C, :n] + 1, minlength=g) if self._load is None else self._load
            local = self.cw + self.a * load
            tail = True
            self._new = None
        if tail and self.n_wait:
            tail = not ((self.waiting > 0) & (self.n_run < self.max_seqs)).any()
        span = 1
        if tail and not self.sim.pool_wants_steps():
            span = min(-int(_max(tab[NREM, :n])), MAX_SPAN)  # the first completion ends the stretch
            # a row needs at most one new block per B steps; count exactly only if that could exceed the capacity
            if span > 1 and _max(self._blocks) + self.max_seqs * (1 + span // self.B) > self.cap_blocks:
                blocks = self._blocks
                if (blocks + self.n_run * (1 + span // self.B) > self.cap_blocks).any():
                    if not self._exact:
                        blocks = self._blocks = self._exact_blocks()
                    busy = self.n_run > 0
                    free = self.cap_blocks - blocks[busy]
                    span = min(span, 1 + self.B * int((free // self.n_run[busy]).min()))
        total = float(_sum(load))
        T0 = float(_max(local)) + self.b_mean * total + self.c0
        if span > 1:  # decode steps only grow longer: plan no further than the step that crosses the next event
            ahead = min(until, self.next_deadline()) - self.clock - T0
            shortest = self.cw + self.c0 + self.a * float(_max(load)) + self.b_mean * total
            if ahead < (span - 2) * shortest:
                span = max(int(ahead / shortest), 0) + 2
        if span == 1:
            self._loads = None
            T = np.array([T0])
        else:  # step m: loads L0 + m * running; T = c_w + c_0 + a * max_g L + b * mean L
            loads = load + _STEPS_COL[:span] * self.n_run
            top = _max(loads, axis=1)
            T = (self.cw + self.c0 + self.b_mean * total) + self.a * top + (self.b_mean * n) * _STEPS[:span]
            T[0] = T0
            self._loads, self._top = loads, top
            if self.record_balance:  # busy time of each worker in steps m >= 1 (see _record)
                self._busy = self.a * (loads - top[:, None]) + T[:, None]
        self._L0, self._local0, self._T = load, local, T
        self._ends = self.clock + _cumsum(T)
        self._off, self._K = 0, span

    # ---- applying steps -------------------------------------------------------------------------------------------
    def _apply(self, k: int) -> None:
        """Apply the next k planned steps: step 0 as scheduled, the others pure decode steps."""
        n, tab, req = self.n, self.tab, self.req
        off = self._off
        T, ends = self._T[off:off + k], self._ends[off:off + k]
        start = self.clock
        first_weight = n  # ITL samples: each step's duration, once per row decoding in it (step 0: fewer)
        tokens0 = n  # tokens sampled in the first of these steps (the others: n each)
        if off or self._new is None:  # decode steps: every row computes one token and samples one, k times
            if self.n_nofirst:
                fresh = tab[J, :n] == 0
                req.first_token[tab[RID, :n][fresh]] = ends[0]
                first_weight -= self.n_nofirst
                self.n_nofirst = 0
            tab[J:NREM + 1, :n] += k  # generated, computed and -remaining (adjacent rows)
            self.sim.tracker.tokens_bulk(tab[SLOT, :n], k)
        else:  # step 0 computes prefill chunks: rows that computed their last uncomputed token sample one
            tab[C, :n] += self._new
            j0 = tab[J, :n]
            sampled = tab[C, :n] == tab[S, :n] + j0
            first = sampled & (j0 == 0)
            if first.any():
                req.first_token[tab[RID, :n][first]] = ends[0]
                self.n_nofirst -= int(first.sum())
            # decoding rows sampled at the end of the previous step too: their gap is this step; a recompute's
            # first token follows the last token before its preemption
            prefilling = tab[PF, :n] > 0
            later = sampled & (j0 > 0)
            first_weight = int(_sum(later & ~prefilling))
            resumed = later & prefilling
            if resumed.any():
                self.sim.itl.add(ends[0] - req.last_token[tab[RID, :n][resumed]], 1)
            done_prefill = sampled & prefilling
            self.n_pf -= int(_sum(done_prefill))
            tab[PF, :n][done_prefill] = 0
            tab[J, :n] += sampled
            tab[NREM, :n] += sampled
            tokens0 = int(_sum(sampled))
            if k > 1:  # the tail: all rows decode (a plan only has one when step 0 leaves no prefill behind)
                tab[J:NREM + 1, :n] += k - 1
                self.sim.tracker.tokens_bulk(tab[SLOT, :n], k)
            else:
                self.sim.tracker.tokens_bulk(tab[SLOT, :n][sampled], 1)
        itl = self.sim.itl
        if first_weight == n:
            itl.add(T, n)
        else:
            itl.add(T[:1], first_weight)
            itl.add(T[1:], n)
        self._record(off, k, start, T, tokens0)
        self._off = off + k
        self.clock = float(ends[-1])
        self.step += k

    def _record(self, off: int, k: int, start: float, T: np.ndarray, tokens0: int) -> None:
        """Balance metrics, step trace, peak load and timeline of planned steps off .. off + k - 1, just applied
        (``tokens0``: output tokens sampled in the first of them; every later one samples one per row).

        A worker's busy time in a step is its local time t_g plus the shared phase (b * mean L + c_0, which every
        worker spends in the all-to-all and expert work), so T - busy_g = max_g t_g - t_g is exactly its wait at
        the barrier, and the barrier idle fraction counts waiting only.
        """
        last = off + k - 1
        top = self._top[last] if last else _max(self._L0)
        if top > self.peak_load:
            self.peak_load = float(top)
        kv0 = self._L0 if off == 0 else self._loads[off]
        slope = None if k == 1 else self.n_run
        self.timeline.add(self.step, start, self._ends[off:last + 1], kv0, slope, self.n_run, self.waiting)
        if not self.record_balance:
            return
        acc, trace, n = self.sim.balance, self.sim.steps, self.n
        if off == 0:
            local = self._local0
            busy = (local - _max(local)) + T[0]  # exact at the max
            acc.add_step(self._L0, busy, float(T[0]))
            if trace is not None:
                trace.add(np.array([start]), T[:1], self._L0[None, :], busy[None, :], n, tokens0)
            tokens0 = n
            off, T = 1, T[1:]
        if off <= last:
            stop = last + 1
            acc.add_steps(self._loads[off:stop], self._busy[off:stop], T)
            if trace is not None:
                trace.add(self._ends[off - 1:last], T, self._loads[off:stop], self._busy[off:stop], n, tokens0)

    # ---- events at a step boundary --------------------------------------------------------------------------------
    def _boundary(self) -> None:
        """Events at the step boundary just reached: completions, timeouts, pool placement.

        Inside a planned stretch nothing completes (it ends at the first completion), so the plan is kept unless
        a request timed out.
        """
        if self._off == self._K:
            self._ends = None
            n = self.n
            done = self.tab[NREM, :n] >= 0
            if done.any():
                self._complete(done)
        if self.deadlines and self.deadlines[0][0] <= self.clock and self._expire():
            self._ends = None
        self.sim.on_boundary(self)

    def _complete(self, done: np.ndarray) -> None:
        tab, req = self.tab, self.req
        idx = done.nonzero()[0]
        rid = tab[RID, idx]
        req.generated[rid] = tab[J, idx]
        req.status[rid] = COMPLETED
        req.finish[rid] = self.clock
        self._release_rows(idx, done)
        self.sim.completed(rid)

    def _expire(self) -> bool:
        """Fail every request of the group whose deadline has passed (waiting or running); True if any did."""
        req, router, clock = self.req, self.sim.router, self.clock
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
        :meth:`StepHost.on_boundary`), since the planned steps include its row: the plan is dropped and the next
        step scheduled without it, as vLLM frees an aborted request's KV before its next step.
        """
        running = self.req.status[r] == RUNNING
        self._take_out([r])
        self.req.status[r] = FAILED
        self.req.error[r] = error
        self.req.finish[r] = self.clock
        if running:
            self._ends = None

    def _take_out(self, requests: list[int]) -> None:
        """Remove queued or running requests from the queues' counts and the running table (counters saved)."""
        req, status = self.req, self.req.status
        running = []
        for r in requests:
            if status[r] == QUEUED:  # its queue entry is dropped when it surfaces
                w = int(req.worker[r]) - self.first
                self.waiting[w] -= 1
                self.n_wait -= 1
            else:
                running.append(r)
        if running:
            n = self.n
            hit = np.isin(self.tab[RID, :n], running)
            idx = np.flatnonzero(hit)
            req.generated[self.tab[RID, idx]] = self.tab[J, idx]
            self.n_pf -= int(self.tab[PF, idx].sum())
            self.n_nofirst -= int((self.tab[J, idx] == 0).sum())
            self._release_rows(idx, hit)

    def _release_rows(self, idx: np.ndarray, mask: np.ndarray) -> None:
        self.n_run -= np.bincount(self.tab[W, idx], minlength=self.G)
        self._compact(~mask)

    # ---- table storage ---------------------------------------------------------------------------------------------
    def _compact(self, keep: np.ndarray) -> None:
        k = int(_sum(keep))
        if k == self.n:
            return
        self.tab[:, :k] = self.tab[:, :self.n][:, keep]
        self.n = k

    def _reserve(self, extra: int) -> None:
        size = self.tab.shape[1]
        if self.n + extra <= size:
            return
        size = max(2 * size, self.n + extra)
        grown = np.zeros((_FIELDS, size), dtype=np.int64)
        grown[:, :self.n] = self.tab[:, :self.n]
        self.tab = grown
