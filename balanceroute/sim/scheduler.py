"""A step group's scheduler: what each worker runs in the step starting now (vLLM V1's scheduler, per worker).

Running requests first: one token per decoding request, the rest of the token budget to requests still
prefilling, oldest first. Then admission of waiting requests, first come first served, while a batch slot, the
token budget and KV blocks allow (chunked prefill: a prompt that does not fit in the budget continues next step).
KV is allocated in blocks for the tokens a step computes, so a request holds ceil(computed / block_size) blocks.
When a worker's running requests need more blocks than it has, its most recently admitted requests are preempted
(recompute): their KV is dropped, their generated tokens are kept (they were already streamed), they go back to
the front of the worker's queue and, when admitted again, re-prefill prompt + generated tokens at the prefill rate
before sampling their next token; a worker that preempted admits nothing that step (as vLLM). What is lost is the
compute spent on the dropped KV and the time until readmission.

Counting blocks exactly is a pass over every running request, so it is avoided where it cannot matter: blocks in
use are bounded by ``load / block_size + running`` (a request wastes less than one block) and counted exactly
only when that bound comes near the capacity.

The scheduler decides and does not time: it hands the step model (:mod:`balanceroute.sim.step_model`) the step's
per-worker load and prefill tokens and how many pure decode steps may follow before anything can change.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from balanceroute.load import LoadTracker
from balanceroute.sim.presets import ModelPreset
from balanceroute.sim.running import CHUNK, NREM, PF, RID, SEQ, C, J, RunningTable, S, W
from balanceroute.sim.state import QUEUED, RUNNING, RequestState
from balanceroute.sim.step_model import MAX_SPAN, ScheduledStep
from balanceroute.sim.waiting import WaitingQueues

_max = np.maximum.reduce  # the ufunc reduction without the ndarray-method wrapper (hot, on a few workers)


class Scheduler:
    """Schedules the steps of the workers whose ``running`` and ``waiting`` requests it is given.

    ``req`` holds every request's state; ``tracker`` is told of admissions and preemptions; ``pool_wants_steps``
    says whether the host may place requests at the next step boundary (then no decode steps may follow unplanned);
    ``max_span``: the most steps one decision may hold for (1: every step is scheduled on its own, the reference).
    """

    def __init__(self, model: ModelPreset, req: RequestState, tracker: LoadTracker, running: RunningTable,
                 waiting: WaitingQueues, pool_wants_steps: Callable[[], bool], max_span: int = MAX_SPAN) -> None:
        self.req = req
        self.tracker = tracker
        self.running = running
        self.waiting = waiting
        self.pool_wants_steps = pool_wants_steps
        self.max_span = max_span
        self.num_workers = running.per_worker.size
        self.block_size = model.block_size
        self.capacity_blocks = model.kv_capacity_blocks
        self.max_seqs = model.max_num_seqs
        self.token_budget = model.max_num_batched_tokens
        # per schedule: KV blocks per worker after this step's allocation (exact, or the upper bound; None: the
        # bound, not computed yet, see _block_bound), whether exact, the load of the requests running before the
        # admissions (the bound's input) and its largest entry; what the admissions add to the load; the prefill
        # tokens per worker (None: none prefills) and whether a prefill chunk stops short of its prompt's end
        self._blocks: np.ndarray | None = np.zeros(self.num_workers)
        self._blocks_exact = False
        self._load = self._blocks
        self._peak_load = 0.0
        self._admitted_load: list[int] | None = None
        self._prefill: list[int] | None = None
        self._cut = False

    def schedule(self, now: float) -> ScheduledStep | None:
        """Decide the step starting at ``now``: allocate KV for the running requests (preempting on workers that
        are over capacity), then admit waiting ones. None when nothing runs."""
        running, g, cap, block = self.running, self.num_workers, self.capacity_blocks, self.block_size
        blocked = None
        self._admitted_load = None
        if running.count:
            while True:
                new, budget_left = self._running_tokens()
                n = running.count
                kv = running.fields[C, :n] + (1 if new is None else new)  # tokens each holds after this step
                w = running.fields[W, :n]
                load = np.bincount(w, weights=kv, minlength=g)
                self._blocks_exact = False
                blocks = None
                self._peak_load = max(load.tolist())  # (Python's max: cheaper on a few workers)
                if self._peak_load / block + self.max_seqs <= cap:  # far from full
                    break
                blocks = load / block + running.per_worker
                if _max(blocks) <= cap:
                    break
                blocks = np.bincount(w, weights=-(-kv // block), minlength=g)
                self._blocks_exact = True
                over = blocks > cap
                if not over.any():
                    break
                blocked = over if blocked is None else blocked | over
                self._preempt(over, blocks, kv, now)
        else:
            self._prefill, self._cut = None, False
            budget_left = np.full(g, self.token_budget, dtype=np.int64)
            load, blocks = np.zeros(g), np.zeros(g)
            self._blocks_exact = True
        self._blocks = blocks
        self._load = load
        if self.waiting.total:
            self._admit(self.token_budget - running.per_worker if budget_left is None else budget_left, blocked)
        if running.count == 0:
            if self.waiting.total:
                raise RuntimeError("simulator bug: requests wait on an empty worker that cannot admit them")
            return None
        return self._scheduled_step()

    def _running_tokens(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Tokens each running request computes this step (None: one each) and the token budget left per worker
        (None: one token per running request is taken, computed only if requests wait). Sets the prefill tokens
        per worker and whether a chunk stops short (the admissions add theirs)."""
        running = self.running
        n, fields = running.count, running.fields
        self._prefill, self._cut = None, False
        if running.prefilling == 0:
            return None, None
        pf = fields[PF, :n].astype(bool)
        left = (self.token_budget - np.bincount(fields[W, :n][~pf], minlength=self.num_workers)).tolist()
        prefill = self._prefill = [0] * self.num_workers
        rows = pf.nonzero()[0]
        rows = rows[np.argsort(fields[SEQ, rows])]
        for r in rows.tolist():  # few: a prompt continued from the previous step, per worker
            w = fields[W, r]
            rest = int(fields[S, r] + fields[J, r] - fields[C, r])
            chunk = min(rest, left[w])
            fields[CHUNK, r] = chunk
            left[w] -= chunk
            prefill[w] += chunk
            self._cut |= chunk < rest
        return np.where(pf, fields[CHUNK, :n], 1), np.array(left, dtype=np.int64)

    def _block_bound(self) -> np.ndarray:
        """KV blocks per worker after this step's allocation, as kept (exact or bounded); the bound from the load
        (a request wastes less than a block) is computed here when first needed: most steps never need it."""
        if self._blocks is None:
            self._blocks = self._load / self.block_size + self.running.per_worker
        return self._blocks

    def _may_run_short(self, growth: int) -> bool:
        """Whether a worker's blocks plus ``growth`` more per slot could exceed the capacity (then the stretch
        is cut where blocks could run out). The per-worker bound is only built when the one from the peak load
        (which is larger: a worker runs at most ``max_seqs`` requests) does not settle it."""
        cap, seqs = self.capacity_blocks, self.max_seqs
        if self._blocks is None and (self._peak_load / self.block_size + seqs) + seqs * growth <= cap:
            return False
        return _max(self._block_bound()) + seqs * growth > cap

    def _exact_blocks(self) -> np.ndarray:
        """Exact KV blocks per worker of the running requests after this step's allocation (a request holds
        ceil(its tokens after the step / block_size))."""
        running = self.running
        n, fields = running.count, running.fields
        new = np.where(fields[PF, :n] > 0, fields[CHUNK, :n], 1) if running.prefilling else 1
        self._blocks_exact = True
        return np.bincount(fields[W, :n], weights=-(-(fields[C, :n] + new) // self.block_size),
                           minlength=self.num_workers)

    def _preempt(self, over: np.ndarray, blocks: np.ndarray, kv: np.ndarray, now: float) -> None:
        """Free KV on overfull workers by preempting their most recently admitted requests (vLLM recompute)."""
        running, req = self.running, self.req
        n, fields = running.count, running.fields
        drop = np.zeros(n, dtype=bool)
        for w in np.flatnonzero(over).tolist():
            rows = np.flatnonzero(fields[W, :n] == w)
            deficit = int(blocks[w]) - self.capacity_blocks
            for r in rows[np.argsort(-fields[SEQ, rows])].tolist():
                if deficit <= 0:
                    break
                drop[r] = True
                deficit -= -(-int(kv[r]) // self.block_size)
                rid = int(fields[RID, r])
                req.generated[rid] = fields[J, r]
                req.computed[rid] = 0
                req.needs_prefill[rid] = True
                req.status[rid] = QUEUED
                req.preemptions[rid] += 1
                if not fields[PF, r]:  # a decoding request sampled its latest token at the end of the last step
                    req.last_token[rid] = now
                self.waiting.push_front(rid, w)  # the oldest preempted ends up first, as vLLM's prepend
                self.tracker.preempted(rid)
        running.remove(np.flatnonzero(drop), drop)

    def _admit(self, budget_left: np.ndarray, blocked: np.ndarray | None) -> None:
        """FCFS admission on each worker (not ``blocked`` by a preemption) while a slot, token budget and KV
        blocks allow.

        Free blocks come from the bound on blocks in use; only when a request does not fit under the bound are
        the blocks counted exactly (rare: the bound is loose by less than a block per request).
        """
        req, block, cap, running, waiting = self.req, self.block_size, self.capacity_blocks, self.running, self.waiting
        status, prompt, output, generated, computed = req.status, req.prompt, req.output, req.generated, req.computed
        base = self._block_bound()
        admitted = [0] * self.num_workers  # KV blocks of the admitted requests
        added = [0] * self.num_workers  # their KV tokens after the step
        columns: list[tuple] = []
        for w in waiting.count.nonzero()[0].tolist():
            if blocked is not None and blocked[w]:
                continue
            queue = waiting.fifo[w]
            slots = self.max_seqs - int(running.per_worker[w])
            left = int(budget_left[w])
            free = int(cap - base[w])
            taken = 0
            while slots > 0 and left > 0 and queue:
                r = queue[0]
                if status[r] != QUEUED:  # failed while waiting: drop the stale entry
                    queue.popleft()
                    continue
                s, j, c = int(prompt[r]), int(generated[r]), int(computed[r])
                rest = s + j - c
                chunk = min(rest, left)
                need = -(-(c + chunk) // block)
                if need > free:
                    if self._blocks_exact:
                        break
                    base = self._exact_blocks()  # of the requests running before this round's admissions
                    free = int(cap - base[w]) - admitted[w]
                    if need > free:
                        break
                queue.popleft()
                slots -= 1
                left -= chunk
                free -= need
                admitted[w] += need
                taken += 1
                pf = int(req.needs_prefill[r])
                if pf:
                    if self._prefill is None:
                        self._prefill = [0] * self.num_workers
                    self._prefill[w] += chunk
                    self._cut |= chunk < rest
                added[w] += c + (chunk if pf else 1)
                columns.append((r, w, req.slot[r], s, j, c, j - output[r], running.admissions, pf, chunk))
                running.admissions += 1
                running.prefilling += pf
                running.without_first_token += j == 0
                status[r] = RUNNING
                self.tracker.started(r)
            if taken:
                waiting.leave(w, taken)
                running.per_worker[w] += taken
        self._blocks = base + admitted
        if columns:
            self._admitted_load = added
            running.add(np.array(columns, dtype=np.int64).T)

    def _scheduled_step(self) -> ScheduledStep:
        """The step as scheduled, and how many steps it holds for.

        Step 0 is followed by pure decode steps when after it every request decodes (all prefill chunks complete
        their prompt) and no worker could admit more (nothing waits where a slot is free): then each step adds one
        token per request, up to the first completion, the first possible KV shortage and ``max_span``.
        """
        running = self.running
        n, fields = running.count, running.fields
        load = self._load if self._admitted_load is None else self._load + self._admitted_load
        decode_after = not self._cut
        if decode_after and self.waiting.total:
            decode_after = not ((self.waiting.count > 0) & (running.per_worker < self.max_seqs)).any()
        steps = 1
        if decode_after and self.max_span > 1 and not self.pool_wants_steps():
            steps = min(-int(_max(fields[NREM, :n])), self.max_span)  # the first completion ends the stretch
            # a request needs at most one new block per block_size steps; count exactly only if that could
            # exceed the capacity
            cap, per_worker, growth = self.capacity_blocks, running.per_worker, 1 + steps // self.block_size
            if steps > 1 and self._may_run_short(growth):
                blocks = self._blocks
                if (blocks + per_worker * growth > cap).any():
                    if not self._blocks_exact:
                        blocks = self._exact_blocks()
                    busy = per_worker > 0
                    free = cap - blocks[busy]
                    steps = min(steps, 1 + self.block_size * int((free // per_worker[busy]).min()))
        return ScheduledStep(load, self._prefill, steps)
