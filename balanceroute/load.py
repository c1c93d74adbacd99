"""Per-worker request bookkeeping that produces the routing snapshot, shared by all backends.

A backend reports what happens to each request — routed, started (admitted to a batch), preempted, tokens
generated, finished, aborted — and :class:`LoadTracker` keeps per-worker sums up to date in O(1) per event
(plus vectorised bulk updates for the simulator, which advances thousands of requests per step). Per-request
state lives in preallocated numpy arrays indexed by a *slot* that is stable for the request's lifetime, so a
horizon policy's projection is a vectorised gather over the active slots, never a Python loop.

:class:`Router` joins a tracker and a policy: it is what a backend calls to route and to report.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from balanceroute.policies.base import Assignment, ClusterSnapshot, PendingRequests, RequestTable
from balanceroute.policies.policy import Policy

WAITING, RUNNING = 0, 1


class UnknownRequestError(KeyError):
    """An event named a request the tracker never saw routed (or already released)."""


class LoadTracker:
    """Exact per-worker load from request events.

    Per worker: ``kv_load`` (prompt + generated tokens of unfinished routed requests), ``running``, ``waiting``.
    ``kv_capacity`` (tokens) and ``max_num_seqs`` are optional limits used for ``kv_usage`` and ``free_slots``;
    a backend that knows the engine's real KV usage reports it with :meth:`set_kv_usage`.
    """

    def __init__(self, num_workers: int, *, kv_capacity: float | Sequence[float] | None = None,
                 max_num_seqs: int | None = None, initial_slots: int = 1024) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        g = num_workers
        self.num_workers = g
        self.kv_load = np.zeros(g, dtype=np.float64)
        self.running = np.zeros(g, dtype=np.int64)
        self.waiting = np.zeros(g, dtype=np.int64)
        cap = np.inf if kv_capacity is None else kv_capacity
        self.kv_capacity = np.broadcast_to(np.asarray(cap, dtype=np.float64), (g,)).copy()
        if np.any(self.kv_capacity <= 0):
            raise ValueError(f"kv_capacity must be > 0 tokens, got {self.kv_capacity.tolist()}")
        self._finite_capacity = bool(np.any(np.isfinite(self.kv_capacity)))  # x / inf = 0
        self.max_num_seqs = max_num_seqs
        self._zero_usage = np.zeros(g)
        self._reported_usage: np.ndarray | None = None
        self.epoch = 0
        # per-request arrays, indexed by slot (row = slot; rows of released requests are stale until reused); the
        # remaining tokens are not stored but derived from the true output length (NaN: unknown) when a policy
        # reads the table: tokens are counted far more often
        n = max(16, initial_slots)
        self._requests = RequestTable(
            worker=np.zeros(n, dtype=np.int64), prompt_len=np.zeros(n, dtype=np.int64),
            generated=np.zeros(n, dtype=np.int64), prompt_hash=np.zeros(n, dtype=np.int64))
        self._output_len = np.full(n, np.nan)
        self._state = np.zeros(n, dtype=np.int8)
        self._active = np.zeros(n, dtype=bool)
        self._free: list[int] = list(range(n - 1, -1, -1))
        self._slot: dict[Hashable, int] = {}

    # ---- events -----------------------------------------------------------------------------------------------
    def routed(self, request_id: Hashable, worker: int, prompt_len: int, *, prompt_hash: int = 0,
               output_len: int | None = None, running: bool = False) -> int:
        """A request of ``prompt_len`` tokens was sent to ``worker``; returns its slot.

        It counts as waiting until :meth:`started`, unless ``running`` (a backend that cannot see the engine's
        queue). ``output_len`` is the true output length, known only to the simulator (oracle predictors).
        """
        if request_id in self._slot:
            raise ValueError(f"request {request_id!r} is already routed")
        if not 0 <= worker < self.num_workers:
            raise ValueError(f"worker {worker} out of range 0..{self.num_workers - 1}")
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._slot[request_id] = slot
        rows = self._requests
        rows.worker[slot] = worker
        rows.prompt_len[slot] = prompt_len
        rows.generated[slot] = 0
        self._output_len[slot] = np.nan if output_len is None else output_len
        rows.prompt_hash[slot] = prompt_hash
        self._state[slot] = RUNNING if running else WAITING
        self._active[slot] = True
        self.kv_load[worker] += prompt_len
        (self.running if running else self.waiting)[worker] += 1
        self.epoch += 1
        return slot

    def started(self, request_id: Hashable) -> None:
        """The engine admitted the request to its running batch."""
        self._move(self.slot_of(request_id), RUNNING)

    def preempted(self, request_id: Hashable) -> None:
        """The engine sent the request back to its waiting queue (vLLM recompute preemption)."""
        self._move(self.slot_of(request_id), WAITING)

    def tokens(self, request_id: Hashable, n: int = 1) -> None:
        """``n`` new output tokens were generated for the request."""
        slot = self.slot_of(request_id)
        rows = self._requests
        rows.generated[slot] += n
        self.kv_load[rows.worker[slot]] += n
        self.epoch += 1

    def set_prompt_len(self, request_id: Hashable, prompt_len: int) -> None:
        """Correct the prompt length a request is charged with (a proxy routes on an estimate and learns the
        exact count from the server's usage report)."""
        slot = self.slot_of(request_id)
        rows = self._requests
        self.kv_load[rows.worker[slot]] += prompt_len - rows.prompt_len[slot]
        rows.prompt_len[slot] = prompt_len
        self.epoch += 1

    def tokens_bulk(self, slots: np.ndarray, n: int | np.ndarray = 1, *, per_worker: np.ndarray | None = None,
                    first_worker: int = 0) -> None:
        """Vectorised :meth:`tokens` for many slots at once (decode steps of the simulator).

        ``per_worker`` (with a scalar ``n`` only): how many of ``slots`` each of the workers ``first_worker``,
        ``first_worker + 1``, ... holds, for a caller that keeps these counts anyway (the simulator's step
        groups): the loads then grow without looking up and counting the slots' workers, two of the four passes
        over the slots.
        """
        if len(slots) == 0:
            return
        rows = self._requests
        rows.generated[slots] += n
        if per_worker is not None:
            self.kv_load[first_worker:first_worker + len(per_worker)] += per_worker * n
        elif np.ndim(n) == 0:
            self.kv_load += np.bincount(rows.worker[slots], minlength=self.num_workers) * float(n)
        else:
            self.kv_load += np.bincount(rows.worker[slots], weights=n, minlength=self.num_workers)
        self.epoch += 1

    def finished(self, request_id: Hashable) -> int:
        """The request completed; its load is released. Returns its output token count."""
        return self._release(request_id)

    def aborted(self, request_id: Hashable) -> int:
        """The request was cancelled or failed; its load is released. Returns tokens generated so far."""
        return self._release(request_id)

    def set_kv_usage(self, kv_usage: Sequence[float]) -> None:
        """Use the engines' own KV usage fractions instead of kv_load / kv_capacity."""
        self._reported_usage = np.asarray(kv_usage, dtype=np.float64)
        self.epoch += 1

    # ---- reading ------------------------------------------------------------------------------------------------
    def slot_of(self, request_id: Hashable) -> int:
        try:
            return self._slot[request_id]
        except KeyError:
            raise UnknownRequestError(f"request {request_id!r} is not routed or already released") from None

    def worker_of(self, request_id: Hashable) -> int:
        return int(self._requests.worker[self.slot_of(request_id)])

    def generated_of(self, request_id: Hashable) -> int:
        return int(self._requests.generated[self.slot_of(request_id)])

    def prompt_len_of(self, request_id: Hashable) -> int:
        return int(self._requests.prompt_len[self.slot_of(request_id)])

    def prompt_hash_of(self, request_id: Hashable) -> int:
        return int(self._requests.prompt_hash[self.slot_of(request_id)])

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, request_id: Hashable) -> bool:
        return request_id in self._slot

    def snapshot(self, *, with_requests: bool = False) -> ClusterSnapshot:
        """The policy's view: per-worker arrays (shared, read-only by convention) and, if asked, the requests.

        Cheap by design (it is on every decision's path, :meth:`ClusterSnapshot.from_counts`): derived arrays are
        only computed where a limit makes them vary; unknown capacity reuses a constant array.
        """
        if self._reported_usage is not None:
            usage = self._reported_usage
        elif self._finite_capacity:
            usage = self.kv_load / self.kv_capacity
        else:
            usage = self._zero_usage
        return ClusterSnapshot.from_counts(
            self.kv_load, self.running, self.waiting, kv_capacity=self.kv_capacity, kv_usage=usage,
            max_num_seqs=self.max_num_seqs, requests=self.request_table() if with_requests else None,
            epoch=self.epoch)

    def request_table(self) -> RequestTable:
        """Per-request arrays of the unfinished requests (a vectorised gather over active slots)."""
        active = np.flatnonzero(self._active)
        table = self._requests.take(active)
        table.remaining = self._output_len[active] - table.generated
        return table

    # ---- internals ------------------------------------------------------------------------------------------------
    def _move(self, slot: int, state: int) -> None:
        if self._state[slot] == state:
            return
        w = self._requests.worker[slot]
        src, dst = (self.waiting, self.running) if state == RUNNING else (self.running, self.waiting)
        src[w] -= 1
        dst[w] += 1
        self._state[slot] = state
        self.epoch += 1

    def _release(self, request_id: Hashable) -> int:
        slot = self._slot.pop(request_id, None)
        if slot is None:
            raise UnknownRequestError(f"request {request_id!r} is not routed or already released")
        rows = self._requests
        w = rows.worker[slot]
        generated = int(rows.generated[slot])
        self.kv_load[w] -= rows.prompt_len[slot] + generated
        (self.running if self._state[slot] == RUNNING else self.waiting)[w] -= 1
        self._active[slot] = False
        self._free.append(slot)
        self.epoch += 1
        return generated

    def _grow(self) -> None:
        """Double the slots (new rows zero, output length NaN)."""
        old = len(self._requests)

        def doubled(arr: np.ndarray) -> np.ndarray:
            return np.concatenate([arr, np.full(old, np.nan if arr.dtype.kind == "f" else 0, dtype=arr.dtype)])

        rows = self._requests
        self._requests = RequestTable(
            worker=doubled(rows.worker), prompt_len=doubled(rows.prompt_len), generated=doubled(rows.generated),
            prompt_hash=doubled(rows.prompt_hash))
        self._output_len = doubled(self._output_len)
        self._state = doubled(self._state)
        self._active = doubled(self._active)
        self._free.extend(range(2 * old - 1, old - 1, -1))


class Router:
    """A policy plus the load it routes by: what every backend calls.

    ``route`` asks the policy and records the request as routed; ``place_pool`` runs a pool-mode round;
    ``finish``/``abort`` release the load and feed finished output lengths to learning policies.
    """

    def __init__(self, policy: Policy, tracker: LoadTracker) -> None:
        self.policy = policy
        self.tracker = tracker

    def snapshot(self) -> ClusterSnapshot:
        return self.tracker.snapshot(with_requests=self.policy.needs_requests)

    def route(self, request_id: Hashable, prompt_len: int, *, prompt_hash: int = 0,
              output_len: int | None = None, running: bool = False) -> int:
        """Choose a worker for one arriving request and record it there."""
        worker = self.policy.choose(self.snapshot(), prompt_len, prompt_hash=prompt_hash, output_len=output_len)
        self.tracker.routed(request_id, worker, prompt_len, prompt_hash=prompt_hash, output_len=output_len,
                            running=running)
        return worker

    def place_pool(self, request_ids: Sequence[Hashable], pending: PendingRequests) -> Assignment:
        """One pool-mode round: the policy assigns pending requests to free slots; placed ones are recorded
        as running. ``request_ids[i]`` names ``pending[i]``."""
        assignment = self.policy.assign(self.snapshot(), pending)
        for i, worker in zip(assignment.index, assignment.worker):
            self.tracker.routed(
                request_ids[i], worker, int(pending.prompt_len[i]),
                prompt_hash=0 if pending.prompt_hash is None else int(pending.prompt_hash[i]),
                output_len=None if pending.output_len is None else int(pending.output_len[i]),
                running=True)
        return assignment

    def finish(self, request_id: Hashable) -> int:
        """Release a completed request; its output length teaches learning policies."""
        prompt_hash = self.tracker.prompt_hash_of(request_id)
        output_len = self.tracker.finished(request_id)
        self.policy.observe_finished(output_len, prompt_hash=prompt_hash)
        return output_len

    def abort(self, request_id: Hashable) -> int:
        """Release a cancelled or failed request (its length is not a completed sample)."""
        return self.tracker.aborted(request_id)
