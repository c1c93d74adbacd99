"""When and where the proxy sends a request: on arrival (``route``) or from a pool as slots free (``place_pool``).

Both use :class:`balanceroute.load.Router`, the same policy-plus-tracker the simulator and the vLLM plugin call.
Backends that fail their health check are hidden from the policy through the snapshot's ``eligible`` mask, which
every policy honours (``Policy.pick_min`` and the pool placements restrict themselves to eligible workers), so a
policy never needs to know that a backend is down.

Pool mode holds requests in the proxy, oldest first, and runs a placement round (``Router.place_pool``, the
policy's ``assign``: br0's two-stage pool form, bf_io, or FCFS over ``choose`` for the others) whenever something
changes: a request arrives, a request releases its slot, a backend comes back. A backend's slots are
``max_num_seqs`` minus the requests the proxy has in flight there. A round shows the policy the
:data:`~balanceroute.policies.dispatch.POOL_WINDOW` oldest waiting requests, as the simulator's pool does, so its
cost does not grow with the queue.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Hashable

import numpy as np

from balanceroute.load import LoadTracker, Router
from balanceroute.policies import PendingRequests, Policy
from balanceroute.policies.dispatch import DISPATCH_MODES, POOL_WINDOW


class NoLiveBackendError(RuntimeError):
    """Every backend failed its last health check."""


class LiveRouter(Router):
    """A :class:`Router` whose policy sees only the backends marked live in ``live`` (a shared boolean array)."""

    def __init__(self, policy: Policy, tracker: LoadTracker, live: np.ndarray) -> None:
        super().__init__(policy, tracker)
        self.live = live

    def snapshot(self):
        snap = super().snapshot()
        if not self.live.all():
            snap.eligible = self.live.copy()
        return snap


class Dispatcher:
    """On-arrival dispatch: each request is routed the moment it arrives, among the live backends."""

    mode = "on_arrival"

    def __init__(self, router: LiveRouter) -> None:
        self.router = router
        #: Called with the seconds each routing decision took (the proxy's decision-time histogram).
        self.on_decision: Callable[[float], None] = lambda seconds: None

    @property
    def pending(self) -> int:
        return 0

    async def acquire(self, request_id: Hashable, prompt_len: int, prompt_hash: int = 0) -> int:
        """The backend the request goes to (its load is charged there); NoLiveBackendError if none is live."""
        if not self.router.live.any():
            raise NoLiveBackendError("no backend is healthy")
        start = time.perf_counter()
        worker = self.router.route(request_id, prompt_len, prompt_hash=prompt_hash, running=True)
        self.on_decision(time.perf_counter() - start)
        return worker

    def release(self, request_id: Hashable, completed: bool) -> None:
        """Release the request's load: finished (its length teaches learning policies) or aborted."""
        if completed:
            self.router.finish(request_id)
        else:
            self.router.abort(request_id)

    def backends_changed(self) -> None:
        """A backend went down or came back (pool mode places waiting requests)."""


class PoolDispatcher(Dispatcher):
    """Pool dispatch: requests wait in the proxy until a placement round gives them a backend's free slot."""

    mode = "pool"

    def __init__(self, router: LiveRouter) -> None:
        if router.tracker.max_num_seqs is None:
            raise ValueError("pool dispatch needs the slots per backend (max_num_seqs)")
        super().__init__(router)
        self._waiting: dict[Hashable, tuple[int, int, asyncio.Future]] = {}
        self._scheduled = False

    @property
    def pending(self) -> int:
        return len(self._waiting)

    async def acquire(self, request_id: Hashable, prompt_len: int, prompt_hash: int = 0) -> int:
        if not self.router.live.any():
            raise NoLiveBackendError("no backend is healthy")
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (prompt_len, prompt_hash, future)
        self._schedule()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # placed, but the client left before it was sent
                super().release(request_id, False)
                self._schedule()
            else:
                self._waiting.pop(request_id, None)
            raise

    def release(self, request_id: Hashable, completed: bool) -> None:
        super().release(request_id, completed)
        self._schedule()

    def backends_changed(self) -> None:
        self._schedule()

    def _schedule(self) -> None:
        """Run one placement round soon (once per loop iteration, however many events asked for it)."""
        if not self._scheduled and self._waiting:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._place)

    def _place(self) -> None:
        self._scheduled = False
        for request_id in [r for r, (_, _, f) in self._waiting.items() if f.done()]:
            del self._waiting[request_id]  # cancelled by its client since it was queued
        t = self.router.tracker
        free = (t.max_num_seqs - t.running - t.waiting > 0) & self.router.live
        if not self._waiting or not free.any():
            return
        ids = list(itertools.islice(self._waiting, POOL_WINDOW))
        entries = [self._waiting[r] for r in ids]
        pending = PendingRequests(prompt_len=np.fromiter((e[0] for e in entries), np.int64, len(entries)),
                                  prompt_hash=np.fromiter((e[1] for e in entries), np.int64, len(entries)))
        start = time.perf_counter()
        assignment = self.router.place_pool(ids, pending)
        self.on_decision(time.perf_counter() - start)
        for i, worker in zip(assignment.index, assignment.worker):
            _, _, future = self._waiting.pop(ids[i])
            future.set_result(int(worker))
        if len(assignment):  # requests beyond the window may fit the slots still free
            self._schedule()


def make_dispatcher(mode: str, router: LiveRouter) -> Dispatcher:
    if mode == "on_arrival":
        return Dispatcher(router)
    if mode == "pool":
        return PoolDispatcher(router)
    raise ValueError(f"unknown dispatch mode {mode!r}; valid: {', '.join(DISPATCH_MODES)}")
