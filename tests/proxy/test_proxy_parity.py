"""Parity (issue 6): ``balanceroute proxy`` over an emulated fleet's per-rank endpoints (``balanceroute emulate
--no-barrier``: independent ranks, the dense / external-LB case the proxy is for) routes every request as
``simulate(..., SimConfig(barrier=False))`` does for the same arrivals, preset and G, and every request gets the same
token counts.

The policies are deterministic and their inputs are ones the proxy observes exactly: round_robin (none), jsq
(requests in flight: the proxy counts a request from routing until its stream ends, the simulator until the step
of its last token, which the emulator streams at that step's end) and jsq_load (prompt plus generated tokens of
the requests in flight: generated tokens stream with the emulator's continuous usage; the prompt is charged at
routing time, so the proxy counts it with a tokenizer that counts as the emulator does, one token per
whitespace-separated word; docs/proxy.md, "Parity with the simulator").

Arrivals are spaced away from the simulated step boundaries (tests/support/parity.py). The margin on the wall clock
is larger than for the fleet's own front end (tests/emulate/test_emulate_parity.py): the proxy routes on tokens as
they reach it, so besides the request's two loopback hops (client to proxy, proxy to rank) every token's delivery
counts. A run that routed differently while the client saw a token later than the margin is inconclusive and runs
again (:func:`~tests.support.parity.conclusive_run`); on an idle machine tokens arrive 4-7 ms after their scaled
simulated time, against a margin of 24 ms.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from balanceroute.backends.proxy import COMMAND
from balanceroute.bench import benchmark
from balanceroute.policies import make_policy
from balanceroute.protocol.headers import WORKER_HEADER
from balanceroute.serving import ManagedServer, free_port
from balanceroute.sim import SimConfig, simulate
from tests.support.parity import conclusive_run, fleet_process, parity_workload, spaced_workload

pytestmark = pytest.mark.wallclock  # routing equal to the simulator's needs tokens on time

RANKS = 4
TIME_SCALE = 3.0
MARGIN_S = 0.008  # emulated; 24 ms on the wall clock
REQUESTS = 32  # ~3.5 s emulated per policy
CONFIG = SimConfig(num_workers=RANKS, model="tiny", barrier=False, timeline_max_rows=10_000_000)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[dict]:
    """One fleet for every policy: an idle rank starts its next step at the next arrival, as in a fresh fleet."""
    log = tmp_path_factory.mktemp("fleet") / "fleet.log"
    with fleet_process(RANKS, "--model", "tiny", "--no-barrier", "--time-scale", str(TIME_SCALE), log=log) as f:
        yield f


def word_tokenizer(folder: Path) -> Path:
    """A tokenizer.json counting one token per whitespace-separated word, as the emulator counts text prompts (and
    as the bench client writes them): every word maps to the unknown token."""
    tokenizers = pytest.importorskip("tokenizers", reason="the optional 'tokenizers' package is not installed")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return folder


@contextlib.contextmanager
def proxy_process(targets: list[str], policy: str, log: Path, *args: str) -> Iterator[ManagedServer]:
    """``balanceroute proxy`` over ``targets`` with ``policy``, running until the block ends."""
    port = free_port()
    command = [*COMMAND, "--targets", ",".join(targets), "--router", policy, "--port", str(port), *args]
    with ManagedServer("balanceroute proxy", command, log, "127.0.0.1", port, ready_timeout_s=60) as proxy:
        yield proxy


@pytest.mark.parametrize("policy", ["round_robin", "jsq", "jsq_load"])
def test_the_proxy_routes_like_the_simulator(policy, fleet, tmp_path):
    args = ("--tokenizer", str(word_tokenizer(tmp_path / "words"))) if policy == "jsq_load" else ()
    wl = spaced_workload(parity_workload(REQUESTS), policy, CONFIG, MARGIN_S)
    simulated = simulate(wl, make_policy(policy), CONFIG)
    sim = simulated.requests
    assert sim["status"].eq("completed").all()
    live = dataclasses.replace(wl, arrival_s=wl.arrival_s * TIME_SCALE)
    stats = {}

    def attempt():
        with proxy_process(fleet["ranks"], policy, tmp_path / "proxy.log", *args) as proxy:
            result = benchmark(proxy.url + "/v1/completions", live, model="tiny", worker_header=WORKER_HEADER)
            stats.update(json.loads(proxy.fetch("/stats")))
        return result

    got = conclusive_run(attempt, simulated, TIME_SCALE, MARGIN_S).requests.sort_values("request_id")
    assert got["status"].eq("completed").all(), got["error_detail"].tolist()
    assert got["token_count_source"].eq("usage").all()  # the counts below are the ranks' own
    assert got["prompt_len"].tolist() == sim["prompt_len"].tolist() == wl.prompt_len.tolist()
    assert got["output_len"].tolist() == sim["output_len"].tolist() == wl.output_len.tolist()
    assert got["worker"].tolist() == sim["worker"].tolist()
    if policy != "round_robin":  # the decisions depend on timing: not all requests went round in turn
        assert got["worker"].tolist() != [i % RANKS for i in range(len(wl))]
    # the proxy's own view: every request completed where the simulator put it, and all load released
    assert [b["completed"] for b in stats["backends"]] == np.bincount(sim["worker"], minlength=RANKS).tolist()
    assert stats["tracked_requests"] == 0
    assert [(b["inflight"], b["kv_load"]) for b in stats["backends"]] == [(0, 0.0)] * RANKS
