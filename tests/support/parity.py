"""Parity tests of live routing against the simulator (issue 6): the emulated fleet as a subprocess, and workloads
whose arrivals keep clear of step boundaries.

A live routing decision depends on which steps have ended when a request arrives, so an arrival within the
client's, the router's and the server's timing jitter of a step boundary could fall on either side of it and see
one step more or less of progress than in the simulator. :func:`spaced_workload` therefore adjusts a workload
first, with the simulator: any arrival closer than ``margin_s`` (emulated seconds) to a step boundary, or to the
previous arrival, is moved ``margin_s`` past it, until none is. Step boundaries are every step start (the
timeline, kept whole: with the barrier one row per fleet step, without it one per rank step) and every finish; a
step that starts at an arrival on an idle rank starts relative to that arrival live as well, so it does not count
for that arrival. The live fleet is then time-scaled so that the jitter stays well inside the margin.

The margin is a premise, not a guarantee: a process starved for longer than the margin (a loaded machine) sends,
forwards or delivers late enough to cross a boundary. :func:`wall_clock_lateness` measures, from what the client saw,
how far a run strayed from the simulated schedule, so a test can tell a run whose premise held (its decisions must
match) from one that is inconclusive (:func:`conclusive_run` repeats a run that routed differently while late).

Used by tests/emulate/test_emulate_parity.py (the fleet's front end) and tests/proxy/test_proxy_parity.py
(``balanceroute proxy`` over the ranks' own endpoints).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from balanceroute.backends.emulated import COMMAND
from balanceroute.bench import BenchResult
from balanceroute.policies import make_policy
from balanceroute.sim import SimConfig, SimResult, simulate
from balanceroute.workload import Workload


def parity_workload(n: int = 36, *, seed: int = 3, rate: float = 12.0) -> Workload:
    """``n`` Poisson arrivals at ``rate``/s with short prompts (4-39 tokens) and outputs (2-13 tokens): enough
    overlap on a few tiny-preset ranks that load-aware policies do not just go round in turn."""
    rng = np.random.default_rng(seed)
    return Workload(np.cumsum(rng.exponential(1 / rate, n)), rng.integers(4, 40, n), rng.integers(2, 14, n),
                    np.zeros(n, dtype=np.int64))


def spaced_workload(workload: Workload, policy: str, config: SimConfig, margin_s: float,
                    max_moves: int = 100) -> Workload:
    """``workload`` with arrivals moved (later ones keeping their gaps) until every arrival is at least
    ``margin_s`` from any step boundary of its simulation under ``policy`` and ``config``, and from the previous
    arrival. AssertionError if that takes more than ``max_moves`` moves."""
    close = margin_s - 1e-9  # an arrival moved to exactly margin_s past a boundary may round to a hair closer
    wl = workload
    for _ in range(max_moves):
        result = simulate(wl, make_policy(policy), config)
        bounds = np.unique(np.concatenate([result.timeline["time_s"].to_numpy(),
                                           result.requests["finish_s"].to_numpy()]))
        arrival = wl.arrival_s.copy()
        for i, a in enumerate(arrival):
            near = bounds[(np.abs(bounds - a) < close) & (bounds != a)]
            if i and a - arrival[i - 1] < close:
                near = np.append(near, arrival[i - 1])
            if near.size:
                arrival[i:] += near.max() + margin_s - a
                break
        else:
            return wl
        wl = dataclasses.replace(wl, arrival_s=arrival)
    raise AssertionError(f"could not space the arrivals {margin_s} s away from step boundaries in {max_moves} moves")


def simulated_token_times(result: SimResult) -> list[np.ndarray]:
    """Per request (in request order), the simulated time of each of its output tokens: a running request gains
    one token at the end of every step of its worker from its first token to its finish, and a worker's steps
    run back to back while it has running requests, so a step's end is the next step's start (the timeline must
    be whole: ``timeline_max_rows`` above the number of steps; with or without the barrier it has a row per rank
    and step)."""
    steps = result.timeline
    times = []
    for r in result.requests.itertuples():
        starts = steps.loc[steps["worker"] == r.worker, "time_s"].to_numpy()
        t = np.concatenate([[r.first_token_s], starts[(starts > r.first_token_s) & (starts < r.finish_s)],
                            [r.finish_s]])
        t = np.unique(t)
        assert len(t) == r.output_len, f"request {r.Index}: {len(t)} token times for {r.output_len} tokens"
        times.append(t)
    return times


def wall_clock_lateness(live: BenchResult, sim: SimResult, time_scale: float) -> dict[str, float]:
    """How late the live run was against the simulated schedule on the wall clock, from the client's records (s):
    ``send``, the most any request left the client after its due time; ``token``, the most any output token
    reached the client after its simulated time (scaled; an upper bound on how late a router in between saw it,
    and it includes a request's late arrival at its rank, which shifts that rank's steps). Requests that did not
    stream all their tokens are left to the caller's checks."""
    got = live.requests
    ids = got["request_id"].to_numpy()
    start = float(np.median(got["scheduled_s"].to_numpy() - sim.requests["arrival_s"].to_numpy()[ids] * time_scale))
    planned = simulated_token_times(sim)
    token = max((float(np.max(seen - start - planned[i] * time_scale))
                 for i, seen in zip(ids, live.token_times) if len(seen) == len(planned[i])), default=0.0)
    send = float(np.max(got["arrival_s"].to_numpy() - got["scheduled_s"].to_numpy()))
    return {"send": send, "token": token}


def conclusive_run(attempt: Callable[[], BenchResult], sim: SimResult, time_scale: float, margin_s: float,
                   attempts: int = 3) -> BenchResult:
    """The first of up to ``attempts`` runs of ``attempt`` that either routed every request as ``sim`` did or kept
    its lateness (:func:`wall_clock_lateness`) inside the margin on the wall clock, so that the caller's checks
    decide; a run that routed differently while late is inconclusive and runs again. AssertionError with every
    attempt's lateness if none was conclusive (the machine was too busy for this test to show anything)."""
    limit = margin_s * time_scale
    seen = []
    for _ in range(attempts):
        live = attempt()
        lateness = wall_clock_lateness(live, sim, time_scale)
        routed = live.requests.sort_values("request_id")["worker"].tolist()
        if routed == sim.requests["worker"].tolist() or max(lateness.values()) < limit:
            return live
        seen.append({k: round(v * 1000, 1) for k, v in lateness.items()})
    raise AssertionError(f"every run routed differently from the simulator while straying more than the margin "
                         f"({limit * 1000:.0f} ms) from its schedule, so none shows anything; lateness in ms per "
                         f"run: {seen}")


@contextlib.contextmanager
def fleet_process(ranks: int, *args: str, log: Path, timeout_s: float = 60) -> Iterator[dict]:
    """``balanceroute emulate --ranks RANKS --port 0 ARGS`` running; yields {"front": URL, "ranks": [URL, ...],
    "process": Popen}. Stops it with SIGTERM at the end and checks that it exits cleanly."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([*COMMAND, "--ranks", str(ranks), "--port", "0", *args], stdout=subprocess.PIPE,
                                bufsize=0, stderr=err, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        urls = _read_urls(proc, ranks, timeout_s, log)
        yield {**urls, "process": proc}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _read_urls(proc: subprocess.Popen, ranks: int, timeout_s: float, log: Path) -> dict:
    """The URLs the fleet prints (``front URL``, then ``rank G URL`` per rank); stdout is unbuffered, so select
    sees every line."""
    urls: dict = {"front": None, "ranks": []}
    deadline = time.monotonic() + timeout_s
    while len(urls["ranks"]) < ranks and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        words = proc.stdout.readline().decode().split()
        if not words:
            break
        if words[0] == "front":
            urls["front"] = words[1]
        elif words[0] == "rank":
            urls["ranks"].append(words[2])
    if urls["front"] is None or len(urls["ranks"]) < ranks:
        raise RuntimeError(f"the fleet did not print its URLs; log:\n{log.read_text()}")
    return urls
