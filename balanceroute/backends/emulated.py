"""The emulated backend: ``backend=emulated`` starts an emulated vLLM DP fleet, benchmarks it, and stops it.

The fleet (``balanceroute emulate``, :mod:`balanceroute.emulate`) runs as a subprocess with its log in the run
folder (``emulator.log``): ``parallel.dp`` ranks of the ``model`` group's preset (with its coefficient overrides),
the run's ``router`` routing inside its DP front end as vLLM's internal load balancer would. The benchmark client
(:mod:`balanceroute.bench`) sends the run's workload to the front end and records which rank served each request
(the ``X-Balanceroute-Worker`` header). The numbers should match ``backend=sim`` for the same configuration up to
the wall clock's noise, since the step timing is the simulator's own code.

``backend.time_scale`` X runs the modelled GPU X times slower on the wall clock: the workload's arrivals are
spread by X and every measured time is divided by X again, so results stay in the modelled GPU's seconds
(X > 1 helps a slow or busy machine keep up; the fleet's step lateness is in ``emulator_step_lateness_*``).

Results add to the client's summary: ``vllm_engine_requests`` / ``_prompt_tokens`` / ``_generation_tokens`` (the
fleet's per-rank Prometheus counters over the run, as backend=vllm reports them), with the barrier the KV balance
over the fleet's steps (``mean_imbalance``, ``mean_spread``, ``mean_kv_load``, ``barrier_idle_fraction``: the
simulator's definitions; warm-up requests included) and the fleet's own statistics (``emulator_*``).

Sections read: ``model`` (preset and overrides, as backend=sim), ``parallel.dp``, ``backend``
(conf/backend/emulated.yaml).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import socket
import sys
from typing import Any

import numpy as np
import pandas as pd

from balanceroute.backends import RunOutput, RunSpec
from balanceroute.backends.checks import (
    bench_options,
    check_bench,
    check_dispatch,
    check_positive,
    check_started_server,
)
from balanceroute.backends.sim import model_preset
from balanceroute.bench import benchmark
from balanceroute.bench.result import BenchResult
from balanceroute.config import ConfigError
from balanceroute.config.backends import EmulatedBackendConfig
from balanceroute.config.schema import ModelConfig, ParallelConfig
from balanceroute.metrics import itl_from_token_times, summarize
from balanceroute.protocol.headers import WORKER_HEADER
from balanceroute.serving import ENGINE_COUNTERS, ManagedServer, ServerError, engine_counter
from balanceroute.sim.presets import get_preset
from balanceroute.workload import Workload

log = logging.getLogger(__name__)

FLEET_LOG = "emulator.log"
#: How the fleet is started (``balanceroute emulate`` in this Python).
COMMAND = (sys.executable, "-m", "balanceroute.cli", "emulate")
#: Per-request time columns of the client's records (seconds), rescaled by the time scale.
_TIME_COLUMNS = ("arrival_s", "first_token_s", "finish_s", "scheduled_s", "queue_s", "lateness_s")


def free_port_block(host: str, count: int, attempts: int = 50, *, key: str = "backend") -> int:
    """A port P such that P .. P + count - 1 are all free now (the fleet binds its front end and ranks there)."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind((host, 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise ConfigError(f"{key}.port: found no {count} consecutive free ports on {host}; set {key}.port")


class EmulatedBackend:
    """Checks the backend settings and the model preset up front; starts, benchmarks and stops the fleet on run."""

    def __init__(self, backend: EmulatedBackendConfig, *, model: ModelConfig, parallel: ParallelConfig,
                 key: str = "backend") -> None:
        """``key`` is where ``backend`` sits in the configuration (the proxy backend's fleet is
        ``backend.fleet``), for the messages."""
        self.preset = model_preset(model)
        self.dp = parallel.dp
        check_positive(f"{key}.time_scale", backend.time_scale)
        check_dispatch(backend.dispatch, "emulated", ("on_arrival",), " (its DP front end routes each request when "
                       "it arrives, as vLLM's; it has no central pool)")
        check_started_server(backend, key)
        check_bench(backend.bench)
        self.backend = backend
        self.key = key
        self.scale = float(backend.time_scale)

    def command(self, spec: RunSpec, port: int) -> list[str]:
        """``balanceroute emulate`` arguments for this run (model overrides and router parameters included)."""
        b = self.backend
        cmd = [*COMMAND, "--ranks", str(self.dp), "--model", self.preset.name, "--host", b.host,
               "--port", str(port), "--barrier" if b.barrier else "--no-barrier", "--time-scale", repr(self.scale),
               "--router", spec.router["name"], "--seed", str(spec.seed)]
        base = dataclasses.asdict(get_preset(self.preset.name))
        for key, value in dataclasses.asdict(self.preset).items():
            if value != base[key] and key != "description":
                cmd += ["--model-param", f"{key}={json.dumps(value)}"]
        for key, value in spec.router.items():
            if key != "name":
                cmd += ["--router-param", f"{key}={json.dumps(value)}"]
        return cmd

    def fleet_server(self, spec: RunSpec) -> ManagedServer:
        """The fleet for ``spec`` as a managed server, not started: front end at ``url``, rank g's own endpoint on
        port ``port + 1 + g``."""
        b = self.backend
        port = b.port or free_port_block(b.host, self.dp + 1, key=self.key)
        return ManagedServer("balanceroute emulate", self.command(spec, port), spec.run_dir / FLEET_LOG, b.host,
                             port, cwd=spec.run_dir, ready_timeout_s=b.ready_timeout_s,
                             stop_grace_s=b.stop_timeout_s, timeout_hint=f"raise {self.key}.ready_timeout_s")

    def scaled(self, workload: Workload) -> Workload:
        """``workload`` on the fleet's wall clock: arrivals spread by the time scale."""
        if self.scale == 1:
            return workload
        return dataclasses.replace(workload, arrival_s=workload.arrival_s * self.scale)

    def run(self, spec: RunSpec) -> RunOutput:
        b = self.backend
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        fleet = self.fleet_server(spec)
        endpoint, bench = bench_options(b.bench)
        workload = self.scaled(spec.workload)
        try:
            with fleet:
                before = fleet.metrics()
                result = benchmark(fleet.url + endpoint, workload, model=self.preset.name, seed=spec.seed,
                                   progress=spec.progress, worker_header=WORKER_HEADER, **bench)
                fleet.check_alive()
                after = fleet.metrics()
                stats = json.loads(fleet.fetch("/stats"))
        except ServerError as exc:
            raise ConfigError(f"backend=emulated: {exc}") from exc
        requests = result.requests
        summary = dict(result.summary)
        if self.scale != 1:
            requests, metrics = rescale(result, 1 / self.scale, self.dp)
            summary.update(metrics)
        for suffix, name in ENGINE_COUNTERS:
            delta = zip(engine_counter(after, name, self.dp), engine_counter(before, name, self.dp))
            summary[f"vllm_engine_{suffix}"] = [round(a - c) for a, c in delta]
        balance = stats.pop("balance")
        if balance:  # the barrier's per-step KV balance, the simulator's definition
            summary.update({k: v for k, v in balance.items() if k != "num_workers"})
        summary.update({f"emulator_{k}": v for k, v in stats.items()})
        summary.update(backend="emulated", model=self.preset.name, barrier=b.barrier, time_scale=self.scale,
                       num_workers=self.dp)
        return RunOutput(summary=summary, requests=requests, timeline=None)


def rescale(result: BenchResult, factor: float, num_workers: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The records with every time multiplied by ``factor``, and the metrics recomputed from them."""
    requests = result.requests.copy()
    for col in _TIME_COLUMNS:
        requests[col] = requests[col] * factor
    done = (requests["status"] == "completed").to_numpy()
    times = [t * factor for t, ok in zip(result.token_times, done) if ok]
    metrics = summarize(requests, duration_s=result.summary["duration"] * factor,
                        itl_s=itl_from_token_times(times) if times else np.zeros(0), num_workers=num_workers).as_dict()
    return requests, metrics
