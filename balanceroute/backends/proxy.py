"""The proxy backend: ``backend=proxy`` routes the run's workload through ``balanceroute proxy`` with the run's router.

A run starts what it needs and stops what it started:

1. the backends: ``backend.targets`` (base URLs of servers already running: vLLM, or vLLM's external-LB DP ranks)
   or, when it is null, an emulated fleet of ``parallel.dp`` ranks (``balanceroute emulate``, started exactly as
   ``backend=emulated`` starts it, :class:`~balanceroute.backends.emulated.EmulatedBackend`; the proxy talks to
   the ranks' own endpoints, not to the fleet's front end);
2. the proxy (``balanceroute proxy``) over them with ``router`` and ``backend.proxy`` settings, its log
   in the run folder (``proxy.log``);
3. the benchmark client (:mod:`balanceroute.bench`) through the proxy, recording the backend of every request
   (``X-Balanceroute-Worker``).

Results add the proxy's own counts (``proxy_backend_completed`` ... per backend, ``proxy_errors``) and the KV
balance of its tracked loads sampled at every routing decision (``mean_imbalance``, ``mean_spread``,
``mean_kv_load``, ``balance_sampled_at``) from its /stats. With the emulated fleet, ``backend.fleet.time_scale`` works as in backend=emulated (arrivals spread by X,
measured times divided by X).

Sections read: ``backend`` (conf/backend/proxy.yaml); with the emulated fleet also ``model`` and
``parallel`` (as backend=emulated).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys

from balanceroute.backends import RunOutput, RunSpec
from balanceroute.backends.checks import (
    bench_options,
    check_bench,
    check_dispatch,
    check_positive,
    check_started_server,
)
from balanceroute.backends.emulated import EmulatedBackend, rescale
from balanceroute.bench import benchmark
from balanceroute.config import ConfigError
from balanceroute.config.backends import EmulatedBackendConfig, ProxyBackendConfig
from balanceroute.config.schema import ModelConfig, ParallelConfig
from balanceroute.policies.dispatch import DISPATCH_MODES
from balanceroute.protocol.headers import WORKER_HEADER
from balanceroute.proxy.telemetry import OUTCOMES
from balanceroute.proxy.upstreams import check_targets
from balanceroute.serving import ManagedServer, ServerError, free_port

log = logging.getLogger(__name__)

PROXY_LOG = "proxy.log"
COMMAND = (sys.executable, "-m", "balanceroute.cli", "proxy")


class ProxyBackend:
    """Checks the targets or the fleet and the proxy settings up front; runs on :meth:`run`."""

    def __init__(self, backend: ProxyBackendConfig, *, model: ModelConfig, parallel: ParallelConfig) -> None:
        proxy = backend.proxy
        check_bench(backend.bench)
        self.dispatch = check_dispatch(backend.dispatch, "proxy", DISPATCH_MODES)
        check_positive("backend.proxy.max_num_seqs", proxy.max_num_seqs, integer=True, allow_none=True)
        check_positive("backend.proxy.health_interval_s", proxy.health_interval_s)
        check_started_server(proxy, "backend.proxy")
        self.fleet: EmulatedBackend | None = None
        if backend.targets:
            try:
                self.targets = list(check_targets(backend.targets))
            except ValueError as exc:
                raise ConfigError(f"backend.targets: {exc}") from None
            if not backend.model_name:
                raise ConfigError("backend.model_name: give the model name the targets serve (requests name it)")
            self.model_name = backend.model_name
            self.max_num_seqs = proxy.max_num_seqs
        else:
            # The proxy routes; the fleet's own front end is not used, so it never holds a pool.
            fleet = EmulatedBackendConfig(**dataclasses.asdict(backend.fleet), dispatch="on_arrival",
                                          bench=backend.bench)
            self.fleet = EmulatedBackend(fleet, model=model, parallel=parallel, key="backend.fleet")
            self.targets = []
            self.model_name = backend.model_name or self.fleet.preset.name
            self.max_num_seqs = proxy.max_num_seqs or self.fleet.preset.max_num_seqs
        if self.dispatch == "pool" and self.max_num_seqs is None:
            raise ConfigError("backend.proxy.max_num_seqs: pool dispatch needs the targets' slots (their "
                              "--max-num-seqs)")
        self.backend = backend
        self.proxy = proxy
        self.scale = self.fleet.scale if self.fleet is not None else 1.0

    def proxy_command(self, spec: RunSpec, targets: list[str], port: int) -> list[str]:
        """``balanceroute proxy`` arguments for this run."""
        p = self.proxy
        cmd = [*COMMAND, "--targets", ",".join(targets), "--router", spec.router["name"], "--seed", str(spec.seed),
               "--dispatch", self.dispatch, "--host", p.host, "--port", str(port),
               "--health-interval", repr(float(p.health_interval_s))]
        if self.max_num_seqs is not None:
            cmd += ["--max-num-seqs", str(self.max_num_seqs)]
        for key, value in spec.router.items():
            if key != "name":
                cmd += ["--router-param", f"{key}={json.dumps(value)}"]
        return cmd

    def run(self, spec: RunSpec) -> RunOutput:
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        servers: list[ManagedServer] = []
        targets = self.targets
        if self.fleet is not None:
            fleet = self.fleet.fleet_server(spec)
            servers.append(fleet)
            host = fleet.url.rsplit(":", 1)[0]
            targets = [f"{host}:{fleet.port + 1 + g}" for g in range(self.fleet.dp)]
        p = self.proxy
        port = p.port or free_port(p.host)
        proxy = ManagedServer("balanceroute proxy", self.proxy_command(spec, targets, port), spec.run_dir / PROXY_LOG,
                              p.host, port, cwd=spec.run_dir, ready_timeout_s=p.ready_timeout_s,
                              stop_grace_s=p.stop_timeout_s, timeout_hint="raise backend.proxy.ready_timeout_s")
        servers.append(proxy)
        endpoint, bench = bench_options(self.backend.bench)
        workload = spec.workload if self.fleet is None else self.fleet.scaled(spec.workload)
        started: list[ManagedServer] = []
        try:
            for server in servers:
                started.append(server.start())
            result = benchmark(proxy.url + endpoint, workload, model=self.model_name, seed=spec.seed,
                               progress=spec.progress, worker_header=WORKER_HEADER, **bench)
            proxy.check_alive()
            stats = json.loads(proxy.fetch("/stats"))
        except ServerError as exc:
            raise ConfigError(f"backend=proxy: {exc}") from exc
        finally:
            for server in reversed(started):
                server.stop()
        requests, summary = result.requests, dict(result.summary)
        if self.scale != 1:
            requests, metrics = rescale(result, 1 / self.scale, len(targets))
            summary.update(metrics)
        for outcome in OUTCOMES:
            summary[f"proxy_backend_{outcome}"] = [b[outcome] for b in stats["backends"]]
        summary.update({k: v for k, v in stats["balance"].items() if k != "num_workers"})
        summary.update(proxy_errors=stats["errors"], backend="proxy", targets=targets, num_workers=len(targets),
                       dispatch=self.dispatch, time_scale=self.scale)
        return RunOutput(summary=summary, requests=requests, timeline=None)

