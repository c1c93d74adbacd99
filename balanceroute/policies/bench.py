"""Decision benchmark: how long one routing decision takes on a realistic snapshot.

    python -m balanceroute.policies.bench --workers 8 --active-per-worker 200 [--json] [--policies a,b]
                                          [--iterations N] [--budget-s S] [--seed S]

The cluster: G workers, each holding ``active-per-worker`` unfinished requests with Azure-conversation-like
lengths (lognormal prompts of mean ~1155 tokens, lognormal outputs of mean ~211 tokens, clipped to 32k / 4k),
each part-way through its output (age uniform in [0, output)), placed round-robin; two free batch slots per
worker. It is built from the policy types alone (:class:`Cluster`), as a backend's load tracker
(:class:`balanceroute.load.LoadTracker`) would hold it after routing those requests, so that this command needs
nothing above the policies. Learning policies first see 5000 finished requests from the same distribution (a few
hundred distinct prompt hashes, so exact matches exist).

What is timed, with ``time.perf_counter_ns`` after a warm-up and with the garbage collector off (``--iterations``
calls, fewer for a policy so slow that they would take more than ``--budget-s`` seconds, e.g. phi at G = 64):

- ``choose``: ``policy.choose(snapshot, prompt_len)`` on a prebuilt snapshot: the policy's own decision cost.
- ``snapshot+choose``: :meth:`Cluster.snapshot` (``with_requests=policy.needs_requests``) plus ``choose``: what
  a backend pays per on-arrival decision, as the snapshot is built by the code the load tracker's runs
  (:meth:`ClusterSnapshot.from_counts`, :meth:`RequestTable.take`).
- ``assign`` (pool-mode policies only): one pool round placing a pool of 2G waiting requests into the 2G free
  slots (greedy then scarce stage for br0/br_h).

``--json`` prints one object ``{policy: {"p50_us": ..., "p99_us": ..., "n": ..., "with_snapshot_p50_us": ...,
"with_snapshot_p99_us": ..., ["assign_p50_us": ..., "assign_p99_us": ..., "assign_n": ...]}}`` where p50/p99
are of ``choose`` and n counts the timed calls. The machine's load average before and after is printed too (on
stderr with ``--json``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from balanceroute.policies import (
    ClusterSnapshot,
    PendingRequests,
    Policy,
    RequestTable,
    available_policies,
    make_policy,
)
from balanceroute.policies.checks import int_problem

PROMPT_MEAN, OUTPUT_MEAN = 1155.0, 211.0
PROMPT_MAX, OUTPUT_MAX = 32768, 4096
SIGMA = 1.0
FREE_SLOTS_PER_WORKER = 2
#: Seconds of timed calls per policy and measurement at most (slow reference policies get fewer calls).
DEFAULT_BUDGET_S = 5.0
#: ... but never fewer timed calls than this.
MIN_TIMED = 20
HISTORY = 5000
DISTINCT_PROMPTS = 400


def _lognormal(rng: np.random.Generator, mean: float, size: int, high: int) -> np.ndarray:
    """Integer lengths, lognormal with the given mean (before clipping to [1, high])."""
    return np.clip(rng.lognormal(np.log(mean) - SIGMA ** 2 / 2, SIGMA, size), 1, high).astype(np.int64)


@dataclass(frozen=True)
class Cluster:
    """The state a backend's load tracker keeps: per-worker counts and limits, and the requests it has routed
    (``requests``: one row per slot, ``active`` marking the slots of unfinished ones)."""

    kv_load: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    kv_capacity: np.ndarray
    kv_usage: np.ndarray
    max_num_seqs: int
    requests: RequestTable
    active: np.ndarray

    def snapshot(self, *, with_requests: bool = False) -> ClusterSnapshot:
        """What :meth:`balanceroute.load.LoadTracker.snapshot` returns for this state, built the same way."""
        return ClusterSnapshot.from_counts(
            self.kv_load, self.running, self.waiting, kv_capacity=self.kv_capacity, kv_usage=self.kv_usage,
            max_num_seqs=self.max_num_seqs,
            requests=self.requests.take(np.flatnonzero(self.active)) if with_requests else None)


def build_cluster(workers: int, active_per_worker: int, seed: int = 0) -> Cluster:
    """``workers * active_per_worker`` running requests part-way through their outputs, placed round-robin.

    ``remaining`` holds the true remaining output (the simulator's knowledge, for oracle predictors).
    """
    rng = np.random.default_rng(seed)
    n = workers * active_per_worker
    prompts = _lognormal(rng, PROMPT_MEAN, n, PROMPT_MAX)
    outputs = _lognormal(rng, OUTPUT_MEAN, n, OUTPUT_MAX)
    hashes = rng.integers(1, DISTINCT_PROMPTS, n)
    generated = (rng.random(n) * outputs).astype(np.int64)
    requests = RequestTable(worker=np.arange(n) % workers, prompt_len=prompts, generated=generated,
                            remaining=(outputs - generated).astype(np.float64), prompt_hash=hashes)
    return Cluster(
        kv_load=np.bincount(requests.worker, weights=requests.load, minlength=workers),
        running=np.bincount(requests.worker, minlength=workers), waiting=np.zeros(workers, dtype=np.int64),
        kv_capacity=np.full(workers, np.inf), kv_usage=np.zeros(workers),
        max_num_seqs=active_per_worker + FREE_SLOTS_PER_WORKER, requests=requests, active=np.ones(n, dtype=bool))


def warm_up(policy: Policy, seed: int = 0) -> None:
    """Feed a learning policy the history of finished requests it would have seen."""
    rng = np.random.default_rng(seed + 1)
    for length, h in zip(_lognormal(rng, OUTPUT_MEAN, HISTORY, OUTPUT_MAX).tolist(),
                         rng.integers(1, DISTINCT_PROMPTS, HISTORY).tolist()):
        policy.observe_finished(length, prompt_hash=h)


def _percentiles_us(samples_ns: list[int]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(samples_ns, dtype=np.float64) / 1000.0, [50, 99])
    return round(float(p50), 2), round(float(p99), 2)


def _time(fn: Callable[[int], object], iterations: int, warmup: int, budget_s: float) -> tuple[float, float, int]:
    """(p50, p99, timed calls): after a warm-up; a policy slower than budget_s / iterations gets fewer calls."""
    clock = time.perf_counter_ns
    per_call_ns = []
    for i in range(3):  # the fastest of three: one call may be preempted
        start = clock()
        fn(i)
        per_call_ns.append(clock() - start)
    per_call_s = max(min(per_call_ns), 1) / 1e9
    fit = int(budget_s / per_call_s)
    iterations = min(iterations, max(MIN_TIMED, fit))
    for i in range(min(warmup, max(1, fit // 10))):
        fn(i)
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(iterations):
            start = clock()
            fn(i)
            samples.append(clock() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    p50, p99 = _percentiles_us(samples)
    return p50, p99, iterations


def _has_pool_mode(policy: Policy) -> bool:
    return type(policy).assign is not Policy.assign


def run_benchmark(workers: int, active_per_worker: int, policies: Sequence[str], iterations: int = 2000,
                  seed: int = 0, budget_s: float = DEFAULT_BUDGET_S) -> dict[str, dict[str, float]]:
    """Time every policy; returns ``{policy: {"p50_us", "p99_us", "with_snapshot_p50_us", ...}}``."""
    cluster = build_cluster(workers, active_per_worker, seed)
    rng = np.random.default_rng(seed + 2)
    arrivals = _lognormal(rng, PROMPT_MEAN, 1024, PROMPT_MAX).tolist()
    pending = PendingRequests(prompt_len=_lognormal(rng, PROMPT_MEAN, 2 * workers, PROMPT_MAX),
                              prompt_hash=rng.integers(1, DISTINCT_PROMPTS, 2 * workers),
                              output_len=_lognormal(rng, OUTPUT_MEAN, 2 * workers, OUTPUT_MAX))
    return {name: _time_policy(make_policy(name, seed=seed), cluster, arrivals, pending, iterations, seed,
                               budget_s)
            for name in policies}


def _time_policy(policy: Policy, cluster: Cluster, arrivals: list[int], pending: PendingRequests,
                 iterations: int, seed: int, budget_s: float) -> dict[str, float]:
    warm_up(policy, seed)
    warmup = max(50, iterations // 10)
    with_requests = policy.needs_requests
    snap = cluster.snapshot(with_requests=with_requests)
    row = {}
    row["p50_us"], row["p99_us"], row["n"] = _time(
        lambda i: policy.choose(snap, arrivals[i & 1023]), iterations, warmup, budget_s)
    row["with_snapshot_p50_us"], row["with_snapshot_p99_us"], _ = _time(
        lambda i: policy.choose(cluster.snapshot(with_requests=with_requests), arrivals[i & 1023]),
        iterations, warmup, budget_s)
    if _has_pool_mode(policy):
        rounds = max(MIN_TIMED, iterations // 10)
        row["assign_p50_us"], row["assign_p99_us"], row["assign_n"] = _time(
            lambda i: policy.assign(snap, pending), rounds, max(5, rounds // 10), budget_s)
    return row


def format_table(results: dict[str, dict[str, float]], workers: int, active_per_worker: int, load: str = "") -> str:
    """A plain-text table of the results (microseconds; n = timed calls); ``load``: the machine's, for its title."""
    lines = [
        (f"decision latency in microseconds, G={workers} workers, {active_per_worker} active requests/worker "
         f"({workers * active_per_worker} total){'; ' + load if load else ''}"),
        ("choose = policy.choose on a prebuilt snapshot; snapshot+choose adds building it as a load tracker does; "
         f"assign = one pool round placing {2 * workers} waiting requests into {2 * workers} free slots"),
        (f"{'policy':<14}{'choose p50':>12}{'choose p99':>12}{'n':>6}{'snap+ch p50':>13}{'snap+ch p99':>13}"
         f"{'assign p50':>12}{'assign p99':>12}{'n':>6}"),
    ]
    for name, row in results.items():
        assign = (f"{row['assign_p50_us']:>12.1f}{row['assign_p99_us']:>12.1f}{row['assign_n']:>6}"
                  if "assign_p50_us" in row else f"{'-':>12}{'-':>12}{'-':>6}")
        lines.append(f"{name:<14}{row['p50_us']:>12.1f}{row['p99_us']:>12.1f}{row['n']:>6}"
                     f"{row['with_snapshot_p50_us']:>13.1f}{row['with_snapshot_p99_us']:>13.1f}{assign}")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else text
    problem = int_problem(value, 1)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m balanceroute.policies.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=_positive_int, default=8, help="number of DP workers G (default 8)")
    parser.add_argument("--active-per-worker", type=_positive_int, default=200,
                        help="unfinished requests per worker (default 200)")
    parser.add_argument("--policies", default=",".join(available_policies()),
                        help="comma-separated policy names (default: all)")
    parser.add_argument("--iterations", type=_positive_int, default=2000, help="timed decisions per policy")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"at most this many seconds of timed calls per policy (default {DEFAULT_BUDGET_S:g}); "
                             "slower policies get fewer calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in names if p not in available_policies()]
    if unknown or not names:
        parser.error(f"unknown policy {', '.join(unknown) or '(none given)'}; valid policies: "
                     f"{', '.join(available_policies())}")
    if not args.budget_s > 0:
        parser.error(f"--budget-s must be > 0 seconds, got {args.budget_s}")
    load_before = os.getloadavg()
    results = run_benchmark(args.workers, args.active_per_worker, names, args.iterations, args.seed, args.budget_s)
    # latencies from a busy machine are not comparable: say how busy it was (on stderr beside the JSON)
    load = "machine load average (1, 5, 15 min) before / after: " + " / ".join(
        " ".join(f"{x:.2f}" for x in avg) for avg in (load_before, os.getloadavg()))
    if args.json:
        print(json.dumps(results))
        print(load, file=sys.stderr)
    else:
        print(format_table(results, args.workers, args.active_per_worker, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
