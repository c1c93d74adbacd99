"""Parity (issue 6): for the same arrivals and a deterministic policy, the emulated fleet's front end (a
subprocess, time-scaled) and the simulator make the same routing decisions and the same token counts.

The arrivals are first spaced away from the simulated step boundaries (tests/support/parity.py explains why); a run
that routed differently while straying from the simulated schedule by more than that margin is inconclusive and runs
again.
"""
from __future__ import annotations

import dataclasses

import pytest

from balanceroute.bench import benchmark
from balanceroute.policies import make_policy
from balanceroute.protocol.headers import WORKER_HEADER
from balanceroute.sim import SimConfig, simulate
from tests.support.parity import conclusive_run, fleet_process, parity_workload, spaced_workload

pytestmark = pytest.mark.wallclock  # routing equal to the simulator's needs tokens on time

RANKS = 4
TIME_SCALE = 1.5
MARGIN_S = 0.008  # emulated; 12 ms on the wall clock


def config() -> SimConfig:
    return SimConfig(num_workers=RANKS, model="tiny", barrier=True, timeline_max_rows=10_000_000)


@pytest.mark.parametrize("policy", ["jsq_load", "round_robin"])
def test_the_front_end_routes_like_the_simulator(policy, tmp_path):
    wl = spaced_workload(parity_workload(), policy, config(), MARGIN_S)
    simulated = simulate(wl, make_policy(policy), config())
    sim = simulated.requests
    assert sim["status"].eq("completed").all()
    live = dataclasses.replace(wl, arrival_s=wl.arrival_s * TIME_SCALE)

    def attempt():
        with fleet_process(RANKS, "--model", "tiny", "--router", policy, "--time-scale", str(TIME_SCALE),
                           log=tmp_path / "fleet.log") as fleet:
            return benchmark(fleet["front"] + "/v1/completions", live, model="tiny", worker_header=WORKER_HEADER)

    got = conclusive_run(attempt, simulated, TIME_SCALE, MARGIN_S).requests.sort_values("request_id")
    assert got["status"].eq("completed").all(), got["error_detail"].tolist()
    assert got["prompt_len"].tolist() == sim["prompt_len"].tolist() == wl.prompt_len.tolist()
    assert got["output_len"].tolist() == sim["output_len"].tolist() == wl.output_len.tolist()
    assert got["worker"].tolist() == sim["worker"].tolist()
    if policy == "jsq_load":  # the decisions depend on timing: not all requests went round in turn
        assert got["worker"].tolist() != [i % RANKS for i in range(len(wl))]
