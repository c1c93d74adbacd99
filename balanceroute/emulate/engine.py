"""The live engine: the simulator's step groups (:mod:`balanceroute.sim.group`) driven by a wall clock.

Requests arrive when clients send them, so the engine learns of them one at a time (:meth:`LiveEngine.submit`)
and its request state grows as they come (:meth:`RequestState.append`). Time is *emulated* time: seconds of the
modelled GPU since the engine started, ``(loop.time() - start) / time_scale``; ``time_scale`` X multiplies every
modelled duration on the wall clock (0.1 runs ten times faster than the modelled GPU, 10 ten times slower).

Driving. The groups plan steps exactly as in the simulator; the engine arms one event-loop timer for the end of
the earliest planned step, and when it fires it advances every group to the current emulated time. A new request
first brings the groups up to the present (so it is routed on the state a simulator would show at that time),
then joins its worker's queue: the step under way is kept and the request can be admitted at the next one, which
is where the simulator puts an arrival too (a planned stretch of decode steps is cut there, so an unknown arrival
never falls inside a batched stretch). Routing and step timing therefore do not depend on how late the event loop
runs; only the delivery of tokens to clients does (:meth:`LiveEngine.stats` reports that lateness).

Tokens. At every step boundary the requests that gained tokens get them (:class:`TokenStream`): the HTTP layer
waits on a stream and writes what arrived. Cancelling a request (client gone) frees its slot and KV at the next
step boundary, as vLLM aborts between steps; a queued request leaves at once.

Routing. Requests sent to a rank's own endpoint are recorded on that rank; requests to the front end are routed
by a :class:`~balanceroute.load.Router` over the engine's exact load (every request of every rank, fed by the
step groups' events, as vLLM's internal DP coordinator sees its engines). The live router is not told output
lengths, so oracle predictors have nothing to read.

Memory: the per-request columns keep every request ever submitted (about 130 bytes each); the running state is
bounded by the workers' slots.
"""
from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np

from balanceroute.load import LoadTracker, Router
from balanceroute.metrics import BalanceAccumulator
from balanceroute.policies import Policy
from balanceroute.policies.checks import int_problem, number_problem
from balanceroute.sim.group import RID, C, J, StepGroup, W
from balanceroute.sim.presets import ModelPreset
from balanceroute.sim.state import ABORTED, QUEUED, RUNNING, RequestState

#: Step lateness samples kept for :meth:`LiveEngine.stats` (a ring buffer of the most recent ones).
LATENESS_SAMPLES = 65_536


class RequestRejected(ValueError):
    """A request the engine cannot serve (too long for a worker's KV cache, bad lengths); the message says why."""


class TokenStream:
    """One request as the HTTP layer sees it: tokens generated so far, and whether it has finished.

    :meth:`wait` returns after the next change (new tokens, finished or aborted); ``tokens`` is the running count
    (a handler that fell behind finds several new tokens at once).
    """

    __slots__ = ("_event", "finished", "id", "max_tokens", "prompt_len", "tokens", "worker")

    def __init__(self, request_id: int, worker: int, prompt_len: int, max_tokens: int) -> None:
        self.id = request_id
        self.worker = worker
        self.prompt_len = prompt_len
        self.max_tokens = max_tokens
        self.tokens = 0
        self.finished = False
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()
        self._event.clear()

    def _update(self, tokens: int, finished: bool = False) -> None:
        self.tokens = tokens
        self.finished = finished
        self._event.set()


class _NoSamples:
    """The step groups record inter-token gaps for the simulator's summary; a live run measures them at the
    client, so they are dropped here (a long-running server must not accumulate them)."""

    @staticmethod
    def add(values, weights) -> None:
        return None


class LiveEngine:
    """G emulated DP ranks of ``model``: with ``barrier`` one step group (EP lock-step), else one per rank.

    Call :meth:`start` inside the event loop before submitting; :meth:`stop` cancels the timer and ends every
    open stream. ``policy`` routes front-end requests.
    """

    def __init__(self, model: ModelPreset, num_workers: int, policy: Policy, *, barrier: bool = True,
                 time_scale: float = 1.0, timeline_max_rows: int = 4096) -> None:
        for name, problem in (("num_workers", int_problem(num_workers, 1)),
                              ("time_scale", number_problem(time_scale, 0, low_open=True))):
            if problem:
                raise ValueError(f"{name} {problem}")
        self.model = model
        self.num_workers = g = num_workers
        self.barrier = barrier
        self.time_scale = float(time_scale)
        # what the step groups read from their host (balanceroute.sim.group.StepHost)
        self.req = RequestState.empty()
        self.tracker = LoadTracker(g, kv_capacity=model.kv_capacity_tokens, max_num_seqs=model.max_num_seqs)
        self.router = Router(policy, self.tracker)
        self.itl = _NoSamples()
        self.timeout_s = math.inf  # vLLM does not time requests out; clients do
        n_groups = 1 if barrier else g
        self.timeline_rows_per_group = max(1, timeline_max_rows // n_groups)
        self.balance = BalanceAccumulator(g)  # KV balance per barrier step, as the simulator measures it
        self.steps = None  # no step trace: the run's steady window is taken from the client's records
        if barrier:
            self.groups = [StepGroup(self, 0, g, record_balance=True)]
        else:
            self.groups = [StepGroup(self, w, 1, record_balance=False) for w in range(g)]
        self.group_of = np.zeros(g, dtype=np.int64) if barrier else np.arange(g)
        # delivery
        self.streams: dict[int, TokenStream] = {}
        self._delivered = np.zeros(len(self.req.status), dtype=np.int64)
        self._aborting: set[int] = set()
        # counters per rank (vLLM's Prometheus counters)
        self.requests_finished = np.zeros(g, dtype=np.int64)
        self.requests_aborted = np.zeros(g, dtype=np.int64)
        self.prompt_tokens = np.zeros(g, dtype=np.int64)
        self.generation_tokens = np.zeros(g, dtype=np.int64)
        # clock and timer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._lateness = np.zeros(LATENESS_SAMPLES)
        self._late_n = 0

    # ---- clock ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the clock (emulated time 0 is now); must run inside the event loop that serves requests."""
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()

    def now(self) -> float:
        """Emulated seconds since :meth:`start`."""
        return (self._loop.time() - self._start) / self.time_scale

    def stop(self) -> None:
        """Stop stepping (after the server has closed its connections, which cancels the open requests)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---- requests ----------------------------------------------------------------------------------------------
    def submit(self, prompt_len: int, max_tokens: int, *, worker: int | None = None, prompt_hash: int = 0
               ) -> TokenStream:
        """Add a request that generates ``max_tokens`` tokens after a prompt of ``prompt_len``; ``worker`` sends
        it to that rank, None lets the front-end router choose. Raises :class:`RequestRejected` if it cannot run.
        """
        if prompt_len < 1 or max_tokens < 1:
            raise RequestRejected(f"a request needs a prompt of >= 1 token and max_tokens >= 1, got prompt "
                                  f"{prompt_len} and max_tokens {max_tokens}")
        if not self.model.fits(prompt_len, max_tokens):
            raise RequestRejected(f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) needs "
                                  f"{prompt_len + max_tokens - 1} tokens of KV cache, more than one rank holds "
                                  f"({self.model.kv_capacity_blocks * self.model.block_size}, model "
                                  f"{self.model.name!r})")
        if worker is not None and not 0 <= worker < self.num_workers:
            raise RequestRejected(f"worker {worker} out of range 0..{self.num_workers - 1}")
        now = self.catch_up()
        r = self.req.append(now, prompt_len, max_tokens, prompt_hash)
        if r == len(self._delivered):
            self._delivered = np.concatenate([self._delivered, np.zeros(len(self.req.status) - r, dtype=np.int64)])
        if worker is None:
            worker = self.router.route(r, prompt_len, prompt_hash=prompt_hash)
        else:
            self.tracker.routed(r, worker, prompt_len, prompt_hash=prompt_hash)
        stream = TokenStream(r, worker, prompt_len, max_tokens)
        self.streams[r] = stream
        self.groups[self.group_of[worker]].enqueue(r, worker, now)
        self._arm()
        return stream

    def cancel(self, stream: TokenStream) -> None:
        """Abort a request (its client went away): a queued one leaves now, a running one frees its slot and KV
        at its group's next step boundary. No-op once it has finished."""
        r = stream.id
        if self.streams.pop(r, None) is None:
            return
        stream._update(stream.tokens, finished=True)
        status = self.req.status[r]
        if status == QUEUED:
            self._abort(r)
        elif status == RUNNING:
            self._aborting.add(r)

    def _abort(self, r: int) -> None:
        worker = int(self.req.worker[r])
        self.groups[self.group_of[worker]].abort(r, ABORTED)
        self.router.abort(r)
        self.requests_aborted[worker] += 1

    # ---- stepping ------------------------------------------------------------------------------------------------
    def catch_up(self) -> float:
        """Apply every step that has ended by now (delivering its tokens); returns the emulated time."""
        now = self.now()
        for grp in self.groups:
            grp.advance(now)
        return now

    def _arm(self) -> None:
        """Set the timer to the end of the earliest planned step (none when every group is idle)."""
        end = min(grp.pending_end() for grp in self.groups)
        at = self._start + end * self.time_scale if end < math.inf else math.inf
        if at == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at < math.inf:
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._lateness[self._late_n % LATENESS_SAMPLES] = self._loop.time() - self._timer_at
        self._late_n += 1
        self.catch_up()
        self._arm()

    # ---- step-group host (balanceroute.sim.group.StepHost) ----------------------------------------------------
    def pool_wants_steps(self) -> bool:
        return False

    def completed(self, requests: np.ndarray) -> None:
        req = self.req
        workers = req.worker[requests]
        self._count_tokens(requests, req.generated[requests], workers)
        np.add.at(self.requests_finished, workers, 1)
        for r in requests.tolist():
            self.router.finish(r)
            self._aborting.discard(r)
            stream = self.streams.pop(r, None)
            if stream is not None:
                stream._update(int(req.generated[r]), finished=True)

    def on_boundary(self, group: StepGroup) -> None:
        """Hand each running request of ``group`` the tokens of the step(s) just applied; apply aborts."""
        n, tab = group.running.count, group.running.fields
        rids, gen = tab[RID, :n], tab[J, :n]
        new = np.flatnonzero(gen != self._delivered[rids])
        if new.size:
            rids, gen = rids[new], gen[new]
            self._count_tokens(rids, gen, group.first_worker + tab[W, :n][new])
            streams = self.streams
            for r, tokens in zip(rids.tolist(), gen.tolist()):
                stream = streams.get(r)
                if stream is not None:
                    stream._update(tokens)
        if self._aborting:
            mine = [r for r in self._aborting if self.group_of[self.req.worker[r]] == self.group_of[group.first_worker]]
            for r in mine:
                self._aborting.discard(r)
                if self.req.status[r] in (QUEUED, RUNNING):
                    self._abort(r)

    def _count_tokens(self, rids: np.ndarray, generated: np.ndarray, workers: np.ndarray) -> None:
        """Counters for tokens generated since the last delivery (and the prompt, at a request's first token)."""
        before = self._delivered[rids]
        np.add.at(self.generation_tokens, workers, generated - before)
        first = before == 0
        if first.any():
            np.add.at(self.prompt_tokens, workers[first], self.req.prompt[rids[first]])
        self._delivered[rids] = generated

    # ---- reading -------------------------------------------------------------------------------------------------
    def rank_state(self) -> dict[str, np.ndarray]:
        """Per rank: running and waiting requests, and the fraction of KV blocks in use (vLLM's gauges)."""
        running, waiting, blocks = [], [], []
        for grp in self.groups:
            n, tab = grp.running.count, grp.running.fields
            running.append(grp.running.per_worker)
            waiting.append(grp.waiting.count)
            blocks.append(np.bincount(tab[W, :n], weights=-(-tab[C, :n] // self.model.block_size),
                                      minlength=grp.num_workers))
        return {"running": np.concatenate(running), "waiting": np.concatenate(waiting),
                "kv_cache_usage": np.concatenate(blocks) / self.model.kv_capacity_blocks}

    def stats(self) -> dict[str, Any]:
        """Steps run, requests seen, how late step ends were handled on the wall clock (ms): p50, p99, max
        over the most recent :data:`LATENESS_SAMPLES` timer firings, and with the barrier the KV balance over
        every step so far (``balance``: :meth:`BalanceAccumulator.summary`, as the simulator reports it)."""
        k = min(self._late_n, LATENESS_SAMPLES)
        late = self._lateness[:k] * 1000
        for grp in self.groups:
            grp.recorder.flush()  # the balance of the steps recorded so far
        p50, p99 = (np.percentile(late, [50, 99]).tolist() if k else (math.nan, math.nan))
        return {"steps": int(sum(grp.step for grp in self.groups)), "requests": int(self.req.n),
                "in_flight": len(self.streams), "timer_firings": int(self._late_n),
                "step_lateness_p50_ms": p50, "step_lateness_p99_ms": p99,
                "step_lateness_max_ms": float(late.max()) if k else math.nan,
                "emulated_time_s": self.now() if self._loop is not None else 0.0, "time_scale": self.time_scale,
                "balance": self.balance.summary() if self.barrier else None}

