"""Helpers for the simulator tests (imported as ``sim_helpers``): small workloads, and a run with bookkeeping
checks at every step that also hands back the live simulation."""
from __future__ import annotations

import numpy as np

from balanceroute.policies import Policy, make_policy
from balanceroute.sim import SimConfig, SimResult
from balanceroute.sim.simulator import Simulation
from balanceroute.workload import Workload


def workload(prompt, output, arrival=None) -> Workload:
    """Requests with the given lengths, all at t = 0 unless arrival times are given."""
    prompt = np.asarray(prompt, dtype=np.int64)
    arrival = np.zeros(len(prompt)) if arrival is None else np.asarray(arrival, dtype=np.float64)
    return Workload(arrival, prompt, np.broadcast_to(np.asarray(output, dtype=np.int64), prompt.shape).copy(),
                    np.zeros(len(prompt), dtype=np.int64))


def random_workload(n: int, *, seed: int = 0, rate: float = 5.0, prompt_max: int = 120,
                    output_max: int = 40) -> Workload:
    rng = np.random.default_rng(seed)
    return Workload(np.cumsum(rng.exponential(1 / rate, n)), rng.integers(1, prompt_max, n),
                    rng.integers(1, output_max, n), rng.integers(0, 5, n))


def run(wl: Workload, policy: Policy | str = "jsq_load", **config) -> tuple[SimResult, Simulation]:
    """Simulate with bookkeeping checks at every step boundary; returns the result and the simulation."""
    config.setdefault("model", "tiny")
    config.setdefault("num_workers", 2)
    config.setdefault("check_invariants", True)
    sim = Simulation(wl, make_policy(policy) if isinstance(policy, str) else policy, SimConfig(**config))
    return sim.run(), sim

