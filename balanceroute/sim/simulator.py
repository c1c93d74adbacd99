"""The DP+EP step simulator: a workload, a routing policy and a model preset in; per-request records out.

Arrivals are routed exactly as a live router would route them: through :class:`balanceroute.load.Router`, whose
:class:`~balanceroute.load.LoadTracker` the simulator keeps up to date (routed, started, preempted, tokens,
finished, aborted), asking the policy at the moment the request arrives (``on_arrival``) or, in ``pool`` dispatch,
whenever a request waits centrally and a worker has a free slot. The true output length is passed along, so oracle
predictors work; nothing else of the future is visible to the policy.

Time: the workers' steps (:mod:`balanceroute.sim.group`) run until the next arrival; an idle cluster jumps to it.
A routing decision sees each worker as of its last completed step; the request joins the worker's queue and can be
admitted at the worker's next step. Deployment shapes (ALGORITHMS.md section 3):

- ``colocated``: the prompt is prefilled on the DP worker, inside the barrier-synchronised steps.
- ``disaggregated``: prompts are prefilled on separate prefill instances, modelled as one first-come-first-served
  pool (:mod:`balanceroute.sim.prefill`): in client order, request i's prefill ends at
  ``done_i = max(client_i + prompt_i / min(r, R), done_{i-1} + prompt_i / R)`` with r =
  ``external_prefill_tokens_per_s`` (one request's prefill speed) and R = ``prefill_pool_tokens_per_s`` (the
  pool's throughput; None = ample: ``done_i = max(client_i + prompt_i / r, done_{i-1})``). Requests thus reach
  the DP router in client order, never reordered by prompt length. Each arrives with its prompt KV computed except
  the last token; the decode worker computes that token in its first step and samples the first output token (vLLM
  recomputes the last token of a fully cached prefix to obtain logits). TTFT is thus external prefill time
  (including waiting in the prefill pool) + decode-side queueing + one decode step. The only prefill a decode
  worker does is recompute after preemption.

Failures: a request whose KV can never fit a worker (prompt + output - 1 tokens > capacity, in whole blocks) fails
with error ``kv_capacity`` when it arrives, without being routed; a request not finished ``timeout_s`` after its
client arrival fails with ``timeout`` at the first step boundary after its deadline (in the pool: at the
deadline). Requests still in flight when ``horizon_s`` is reached are ``unfinished``.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from balanceroute.load import LoadTracker, Router
from balanceroute.metrics import BalanceAccumulator, records_frame, summarize
from balanceroute.policies import PendingRequests, Policy
from balanceroute.policies.checks import bool_problem, choice_problem, int_problem, number_problem
from balanceroute.policies.dispatch import DISPATCH_MODES, POOL_WINDOW
from balanceroute.sim.group import StepGroup
from balanceroute.sim.pool import CentralPool
from balanceroute.sim.prefill import prefill_completion
from balanceroute.sim.presets import ModelPreset, get_preset
from balanceroute.sim.running import RID, C, J, W
from balanceroute.sim.state import (
    ERROR_NAMES,
    FAILED,
    KV_CAPACITY,
    QUEUED,
    STATUS_NAMES,
    TIMEOUT,
    RequestState,
    WeightedSamples,
)
from balanceroute.sim.step_model import MAX_SPAN
from balanceroute.sim.timeline import timeline_frame
from balanceroute.steady import StepTrace
from balanceroute.workload import Workload

log = logging.getLogger(__name__)

PREFILL_MODES = ("colocated", "disaggregated")


@dataclass
class SimConfig:
    """One simulated deployment.

    - ``num_workers``: DP workers G; ``model``: a :class:`ModelPreset` or a preset name.
    - ``dispatch``: ``on_arrival`` (route on arrival, queue at the worker) or ``pool`` (hold centrally, place into
      free slots). ``barrier``: workers step together (EP); False runs each worker on its own clock (dense models,
      independent DP workers; the balance metrics then sample the workers' KV loads at every arrival instead of
      every step, ``num_steps`` counts those samples, and there is no barrier idle fraction).
      ``prefill``: ``colocated`` or ``disaggregated``.
    - ``timeout_s``: a request not finished this long after arriving fails (inf: never).
    - ``horizon_s``: stop the simulated clock here; requests in flight are ``unfinished`` (None: run to the end).
    - ``seed``: recorded with the result; the simulation itself is deterministic (the workload and the policy carry
      their own seeds).
    - ``timeline_max_rows``: bound on the timeline's rows (steps are thinned evenly to fit).
    - ``pool_window``: pool dispatch shows the policy at most this many of the oldest waiting requests per round
      (a real router bounds its scan too; it keeps a round's cost independent of how long the pool grows).
    - ``check_invariants``: verify the engine's bookkeeping at every step boundary (slow; for tests).
    - ``max_span``: the most engine steps one scheduling decision may cover (a stretch of pure decode steps timed
      at once, :mod:`balanceroute.sim.step_model`); 1 schedules and times every step on its own: the plain
      per-step loop, kept as the reference. Both give the same run up to float rounding of the step times
      (tests/sim/test_sim_reference.py: counts equal, times and their statistics within 1e-9 relative).
    """

    num_workers: int
    model: ModelPreset | str = "qwen3_30b_a3b"
    dispatch: str = "on_arrival"
    barrier: bool = True
    prefill: str = "colocated"
    timeout_s: float = 600.0
    horizon_s: float | None = None
    seed: int = 0
    timeline_max_rows: int = 100_000
    pool_window: int = POOL_WINDOW
    check_invariants: bool = False
    max_span: int = MAX_SPAN

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            self.model = get_preset(self.model)
        if not isinstance(self.model, ModelPreset):
            raise ValueError(f"model must be a ModelPreset or a preset name, got {type(self.model).__name__}")
        problems = {"num_workers": int_problem(self.num_workers, 1), "seed": int_problem(self.seed, 0),
                    "timeline_max_rows": int_problem(self.timeline_max_rows, 1),
                    "pool_window": int_problem(self.pool_window, 1),
                    "max_span": int_problem(self.max_span, 1, MAX_SPAN),
                    "dispatch": choice_problem(self.dispatch, DISPATCH_MODES),
                    "prefill": choice_problem(self.prefill, PREFILL_MODES),
                    "barrier": bool_problem(self.barrier), "check_invariants": bool_problem(self.check_invariants),
                    "timeout_s": number_problem(self.timeout_s, 0, low_open=True, allow_inf=True),
                    "horizon_s": None if self.horizon_s is None else number_problem(self.horizon_s, 0, low_open=True)}
        for name, problem in problems.items():
            if problem:
                raise ValueError(f"{name} {problem}")


@dataclass
class SimResult:
    """``summary``: the :func:`balanceroute.metrics.summarize` record (``Summary.as_dict()``) plus balance metrics
    and the run's settings; ``requests``: per-request records (:data:`balanceroute.metrics.REQUEST_COLUMNS`), in
    workload order; ``timeline``: sampled steps (time_s, step, worker, kv_load, running, waiting); ``steps``: every
    barrier step (:data:`balanceroute.steady.STEP_COLUMNS`; None without the barrier), for the steady window."""

    summary: dict[str, Any]
    requests: pd.DataFrame
    timeline: pd.DataFrame = field(repr=False)
    steps: pd.DataFrame | None = field(default=None, repr=False)


def simulate(workload: Workload, policy: Policy, config: SimConfig, *, progress: bool = False) -> SimResult:
    """Simulate ``workload`` routed by ``policy`` on the deployment ``config``."""
    if not isinstance(policy, Policy):
        raise ValueError(f"policy must be a balanceroute Policy instance (see make_policy), got "
                         f"{type(policy).__name__}")
    return Simulation(workload, policy, config).run(progress=progress)


class _IntIds:
    """``ids[i]`` as a Python int, for Router.place_pool, without converting the whole pool."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids

    def __getitem__(self, i: int) -> int:
        return int(self.ids[i])

    def __len__(self) -> int:
        return len(self.ids)


class Simulation:
    """The run loop: arrivals, routing, the pool and the step groups. Build one per run."""

    def __init__(self, workload: Workload, policy: Policy, config: SimConfig) -> None:
        self.config = config
        self.model = m = config.model
        self.timeout_s = float(config.timeout_s)
        g = config.num_workers
        disagg = config.prefill == "disaggregated"
        client = np.asarray(workload.arrival_s, dtype=np.float64)
        prompt = np.asarray(workload.prompt_len, dtype=np.int64)
        # Workloads are in client order and prefill keeps it (FIFO pool), so requests reach the router in that order.
        arrival = prefill_completion(client, prompt, m.external_prefill_tokens_per_s,
                                     m.prefill_pool_tokens_per_s) if disagg else client
        order = np.arange(len(workload))
        self.req = RequestState(order, arrival[order], client[order], prompt[order],
                                np.asarray(workload.output_len, dtype=np.int64)[order],
                                np.asarray(workload.prompt_hash, dtype=np.int64)[order], disaggregated=disagg)
        self.tracker = LoadTracker(g, kv_capacity=m.kv_capacity_tokens, max_num_seqs=m.max_num_seqs,
                                   initial_slots=min(len(workload), g * m.max_num_seqs * 2) + 16)
        self.router = Router(policy, self.tracker)
        self.pool_mode = config.dispatch == "pool"
        self.pool = CentralPool(self.req, self.timeout_s, config.pool_window)
        self.itl = WeightedSamples()
        self.balance = BalanceAccumulator(g)
        self.steps = StepTrace() if config.barrier else None
        n_groups = 1 if config.barrier else g
        self.timeline_rows_per_group = max(1, config.timeline_max_rows // n_groups)
        if config.barrier:
            self.groups = [StepGroup(self, 0, g, record_balance=True, max_span=config.max_span)]
        else:
            self.groups = [StepGroup(self, w, 1, record_balance=False, max_span=config.max_span) for w in range(g)]
        self.group_of = np.zeros(g, dtype=np.int64) if config.barrier else np.arange(g)

    # ---- the loop ----------------------------------------------------------------------------------------------------
    def run(self, *, progress: bool = False) -> SimResult:
        wall = time.perf_counter()
        req = self.req
        n = req.n
        arrival = req.arrival
        horizon = math.inf if self.config.horizon_s is None else float(self.config.horizon_s)
        nxt = 0
        bar = tqdm(total=n, disable=not progress, file=sys.stderr, unit="req", mininterval=1.0,
                   desc=f"sim {self.router.policy.name or type(self.router.policy).__name__}")
        with bar:
            while True:
                until = min(float(arrival[nxt]) if nxt < n else math.inf, horizon, self.pool.next_deadline())
                self._advance(until, end=until >= horizon)
                if until == math.inf or until >= horizon:
                    break
                now = until
                for r in self.pool.expire(now):
                    req.status[r] = FAILED
                    req.error[r] = TIMEOUT
                    req.finish[r] = now
                first = nxt
                while nxt < n and arrival[nxt] <= now:
                    self._arrive(nxt, now)
                    nxt += 1
                if self.pool_mode:
                    self._place(now)
                if not self.config.barrier:
                    self.balance.add_step(np.concatenate([grp.resident_kv() for grp in self.groups]))
                if nxt > first:
                    bar.update(nxt - first)
        return self._result(time.perf_counter() - wall)

    def _advance(self, until: float, *, end: bool) -> None:
        groups = self.groups
        if len(groups) == 1:
            # steps before ``until`` may be deferred (StepGroup.advance) unless they end the run or a boundary
            # before it may place pool requests
            groups[0].advance(until, defer=not end and not self.pool_wants_steps())
            return
        # Independent workers interact only through routing, which happens at arrivals, except in pool mode with
        # requests waiting centrally: then a slot freed at one worker's step boundary is filled at that moment,
        # so the workers are advanced in the order of their step ends.
        while self.pool_mode and len(self.pool):
            ends = [grp.pending_end() for grp in groups]
            first = int(np.argmin(ends))
            if ends[first] > until:
                return
            others = min(ends[:first] + ends[first + 1:])
            groups[first].advance(min(until, others))
        for grp in groups:
            grp.advance(until)

    # ---- arrivals and routing ----------------------------------------------------------------------------------------
    def _arrive(self, r: int, now: float) -> None:
        req = self.req
        prompt, output = int(req.prompt[r]), int(req.output[r])
        if not self.model.fits(prompt, output):
            req.status[r] = FAILED
            req.error[r] = KV_CAPACITY
            req.finish[r] = now
            return
        if self.pool_mode:
            self.pool.add(r)
            return
        worker = self.router.route(r, prompt, prompt_hash=int(req.prompt_hash[r]), output_len=output)
        self._enqueue(r, worker, now)

    def _enqueue(self, r: int, worker: int, now: float) -> None:
        self.groups[self.group_of[worker]].enqueue(r, worker, now)

    def pool_wants_steps(self) -> bool:
        """Whether pool placement may happen at the next step boundary (so steps must not be batched)."""
        return self.pool_mode and len(self.pool) > 0 and bool((self._free_slots() > 0).any())

    def _free_slots(self) -> np.ndarray:
        t = self.tracker
        return self.model.max_num_seqs - (t.running + t.waiting)

    def completed(self, requests: np.ndarray) -> None:
        """A step group finished these requests: release their load (and teach learning policies)."""
        for r in requests.tolist():
            self.router.finish(r)

    def on_boundary(self, group: StepGroup) -> None:
        """Called by a step group after each step: pool placement and, if asked, invariant checks."""
        if self.pool_mode and len(self.pool):
            self._place(group.clock)
        if self.config.check_invariants:
            self.check_invariants()

    def _place(self, now: float) -> None:
        """One pool-mode round: the policy places waiting pool requests into free slots."""
        if not len(self.pool):
            return
        free = self._free_slots()
        if not (free > 0).any():
            return
        ids, req = self.pool.oldest(), self.req
        pending = PendingRequests(prompt_len=req.prompt[ids], prompt_hash=req.prompt_hash[ids],
                                  output_len=req.output[ids])
        assignment = self.router.place_pool(_IntIds(ids), pending)
        if not len(assignment):
            return
        workers = np.asarray(assignment.worker, dtype=np.int64)
        over = np.bincount(workers, minlength=len(free)) > np.maximum(free, 0)
        if over.any():
            raise RuntimeError(f"policy {self.router.policy!r} placed pool requests on worker(s) "
                               f"{np.flatnonzero(over).tolist()} beyond their free slots {free.tolist()}")
        placed = np.asarray(assignment.index, dtype=np.int64)
        for i, w in zip(placed.tolist(), workers.tolist(), strict=True):
            self._enqueue(int(ids[i]), w, now)
        self.pool.remove(placed)

    # ---- checks and results --------------------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Raise AssertionError if the engine's bookkeeping is inconsistent (tests run it at every boundary).

        KV blocks in use (ceil(computed / block) per running request) within capacity on every worker; running
        counts within the slots; waiting counts equal to the live queue entries; the load tracker's per-worker
        load equal to prompt + generated tokens of the requests routed there and not finished.
        """
        req, model = self.req, self.model
        expected = np.zeros(self.config.num_workers)
        for grp in self.groups:
            n, tab, g, running = grp.running.count, grp.running.fields, grp.num_workers, grp.running.per_worker
            blocks = np.bincount(tab[W, :n], weights=-(-tab[C, :n] // model.block_size), minlength=g)
            cap = model.kv_capacity_blocks
            assert (blocks <= cap).all(), f"KV blocks {blocks} over capacity {cap}"
            assert np.array_equal(np.bincount(tab[W, :n], minlength=g), running), "running counts"
            assert (running <= model.max_num_seqs).all(), f"more running than slots: {running}"
            live = [sum(req.status[r] == QUEUED for r in q) for q in grp.waiting.fifo]
            assert live == grp.waiting.count.tolist(), f"waiting counts {grp.waiting.count} != queues {live}"
            np.add.at(expected, grp.first_worker + tab[W, :n], req.prompt[tab[RID, :n]] + tab[J, :n])
            for r in grp.waiting.live(req.status):
                expected[req.worker[r]] += req.prompt[r] + req.generated[r]
        load = self.tracker.kv_load
        assert np.allclose(load, expected), f"tracker load {load} != routed prompt + generated {expected}"

    def _result(self, wall_s: float) -> SimResult:
        req, cfg = self.req, self.config
        for grp in self.groups:
            grp.recorder.flush()
        unfinished = [r for grp in self.groups for r in grp.release_all()]
        for r in unfinished:
            self.router.abort(r)
        status = np.array([STATUS_NAMES[k] for k in range(len(STATUS_NAMES))], dtype=object)[req.status]
        error = np.array(ERROR_NAMES, dtype=object)[req.error]
        back = np.empty(req.n, dtype=np.int64)
        back[req.request_id] = np.arange(req.n)  # workload order
        seen = self.model.frontend_latency_s  # tokens reach the client this much after their step
        requests = records_frame(
            request_id=req.request_id[back], worker=req.worker[back], arrival_s=req.client_arrival[back],
            first_token_s=req.first_token[back] + seen, finish_s=req.finish[back] + seen, prompt_len=req.prompt[back],
            output_len=req.generated[back], target_output_len=req.output[back], status=status[back],
            error=error[back], preemptions=req.preemptions[back])
        itl, weights = self.itl.arrays()
        summary = summarize(requests, itl_s=itl, itl_weights=weights, balance=self.balance.summary(),
                            num_workers=cfg.num_workers).as_dict()
        summary.update({
            "backend": "sim",
            "model": self.model.name,
            "router": self.router.policy.name,
            "dispatch": cfg.dispatch,
            "barrier": cfg.barrier,
            "prefill": cfg.prefill,
            "seed": cfg.seed,
            "max_num_seqs": self.model.max_num_seqs,
            "kv_capacity_tokens": self.model.kv_capacity_tokens,
            "peak_kv_usage": max(grp.recorder.peak_load for grp in self.groups) / self.model.kv_capacity_tokens,
            "sim_wall_time_s": wall_s,
        })
        log.debug("simulated %d requests in %.2f s", req.n, wall_s)
        return SimResult(summary=summary, requests=requests,
                         timeline=timeline_frame([grp.recorder.timeline for grp in self.groups]),
                         steps=None if self.steps is None else self.steps.frame())
