"""The vLLM backend: ``backend=vllm`` serves ``model`` with real vLLM, routed by ``router`` inside vLLM's DP front end.

A run starts ``vllm serve`` (:mod:`balanceroute.serving.vllm`) with the balanceroute plugin enabled through the
environment (:mod:`balanceroute.vllm_plugin`), sends the workload with the benchmark client
(:mod:`balanceroute.bench`), reads what happened per engine, and stops the server. Inside a SLURM allocation of
several nodes the deployment spans them (:func:`balanceroute.serving.multinode.across_allocation`, mode
``backend.multinode``: Ray workers or headless vLLM engines on the other nodes, the front end on this one). The
run folder gets, besides the usual result files, ``vllm_server.log``, ``decisions.jsonl`` (every routing
decision with the snapshot it saw) and ``steps/`` (every engine step's composition and timing, the input of
``balanceroute calibrate``; ``backend.step_log``). Per-engine results:

- ``worker_requests`` / ``worker_prompt_tokens`` / ``worker_output_tokens``: from the decision log (what the
  router did and the KV it tracked; warm-up requests included);
- ``vllm_engine_requests`` / ``vllm_engine_prompt_tokens`` / ``vllm_engine_generation_tokens``: vLLM's own
  per-engine Prometheus counters over the run (``vllm:request_success_total{engine="g"}`` ...), an independent
  check of where requests went;
- ``mean_imbalance``, ``mean_spread``, ``mean_kv_load``: the KV balance (:class:`~balanceroute.metrics.
  BalanceAccumulator`) sampled at every routing decision rather than every engine step (``balance_sampled_at``);
  timeline.parquet holds the same samples.

Sections read: ``model.vllm`` (what to serve), ``parallel`` (dp, tp, ep) and ``backend`` (conf/backend/
vllm.yaml).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
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
from balanceroute.bench import benchmark
from balanceroute.config import ConfigError
from balanceroute.config.backends import VllmBackendConfig
from balanceroute.config.schema import ModelConfig, ParallelConfig
from balanceroute.metrics import BalanceAccumulator
from balanceroute.protocol.tokenizer import load_tokenizer
from balanceroute.serving import ENGINE_COUNTERS, ServerError, VllmServer, engine_counter, free_port, serve_command
from balanceroute.serving.multinode import LayoutError, across_allocation, check_mode
from balanceroute.sim.timeline import TIMELINE_COLUMNS
from balanceroute.vllm_plugin.config import STEP_LOG_ENV, UNPATCHED_ENV, RouterConfig
from balanceroute.vllm_plugin.decision_log import ROUTE, engine_totals, read_decision_log
from balanceroute.vllm_plugin.environment import (
    PluginNotInstalledError,
    VllmNotFoundError,
    check_plugin,
    find_vllm,
    python_of,
)
from balanceroute.vllm_plugin.step_log import STEP_LOG_DIR

log = logging.getLogger(__name__)

SERVER_LOG = "vllm_server.log"
DECISION_LOG = "decisions.jsonl"


class VllmBackend:
    """Checks the model's ``vllm`` section, the backend settings and the vLLM installation up front (a
    :class:`ConfigError` naming the key), and runs server + benchmark on ``run``."""

    def __init__(self, backend: VllmBackendConfig, *, model: ModelConfig, parallel: ParallelConfig) -> None:
        if model.vllm is None:
            raise ConfigError(f"model.vllm: model {model.name!r} has no vllm serve settings; choose a model "
                              "config with a vllm: section (qwen3_0_6b, qwen3_30b_a3b, deepseek_v3, "
                              "deepseek_v4_flash, tiny_dense, tiny_moe)")
        if not model.vllm.model:
            raise ConfigError("model.vllm.model: no model to serve; give a Hugging Face name or a local folder "
                              "(the tiny CPU models are made by tests/vllm/tiny_models.py)")
        self.model = model.vllm
        self.served_model = model.vllm.served_model_name or model.vllm.model
        self.dp, self.tp, self.ep = parallel.dp, parallel.tp, parallel.ep
        check_positive("backend.api_server_count", backend.api_server_count, integer=True, allow_none=True)
        check_started_server(backend, "backend")
        check_dispatch(backend.dispatch, "vllm", ("on_arrival",), " (vLLM's DP front end routes each request to an "
                       "engine when it arrives; for pool dispatch put balanceroute proxy in front of DP ranks)")
        check_bench(backend.bench)
        try:
            check_mode(backend.multinode)
        except LayoutError as exc:
            raise ConfigError(str(exc)) from None
        self.backend = backend
        try:
            self.vllm_bin = find_vllm(backend.vllm_bin, venv=os.environ.get("VLLM_CPU_VENV"))
        except VllmNotFoundError as exc:
            raise ConfigError(f"backend.vllm_bin: {exc}") from None
        #: vLLM's interpreter: Ray nodes on an allocation must run the Ray of vLLM's environment.
        self.python = backend.python or python_of(self.vllm_bin)
        if backend.plugin:
            if self.python is None:
                log.warning("cannot tell which Python %s runs with (set backend.python); the plugin's presence is "
                            "checked after the run instead", self.vllm_bin)
            else:
                try:
                    check_plugin(self.python)
                except PluginNotInstalledError as exc:
                    raise ConfigError(f"backend.python: {exc}") from None

    # ---- the run ---------------------------------------------------------------------------------------------------
    def server(self, spec: RunSpec) -> VllmServer:
        """The managed server for ``spec`` (not started): command, log file and whole environment (this
        process's, plus the backend's and the model's ``env`` and the router's variables)."""
        b = self.backend
        port = b.port or free_port(b.host)
        cmd = serve_command(self.vllm_bin, dataclasses.asdict(self.model), dp=self.dp, tp=self.tp, ep=self.ep,
                            host=b.host, port=port, api_server_count=b.api_server_count, extra_args=b.args)
        env = {**os.environ, **b.env, **self.model.env}
        if b.plugin:
            params = {k: v for k, v in spec.router.items() if k != "name"}
            env.update(RouterConfig(spec.router["name"], {**params, "seed": spec.seed},
                                    spec.run_dir.absolute() / DECISION_LOG).to_env())
            env[STEP_LOG_ENV] = str(spec.run_dir.absolute() / STEP_LOG_DIR) if b.step_log else ""
        else:
            env.update(UNPATCHED_ENV)
        return VllmServer(cmd, spec.run_dir / SERVER_LOG, b.host, port, env=env, cwd=spec.run_dir,
                          ready_timeout_s=b.ready_timeout_s, stop_grace_s=b.stop_timeout_s)

    def _tokenizer(self):
        if not self.backend.bench.tokenizer:
            return None
        name = self.model.tokenizer or self.model.model
        try:
            return load_tokenizer(name)
        except ValueError as exc:
            log.warning("synthetic prompts will have approximate lengths: %s", exc)
            return None

    def run(self, spec: RunSpec) -> RunOutput:
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        decisions = spec.run_dir / DECISION_LOG
        decisions.unlink(missing_ok=True)  # the plugin appends; a rerun starts afresh
        shutil.rmtree(spec.run_dir / STEP_LOG_DIR, ignore_errors=True)
        endpoint, bench = bench_options(self.backend.bench)
        tokenizer = self._tokenizer()
        server = self.server(spec)
        try:
            # One node (or no SLURM): nothing to add. Several: the other nodes' part is started here, and the
            # server's health wait and liveness checks also watch it, so a dead node fails the run with its log.
            with across_allocation(server.command, spec.run_dir, dp=self.dp, tp=self.tp,
                                   mode=self.backend.multinode, python=self.python, env=server.env) as head:
                server.command += head.args
                server.env.update(head.env)
                server.watch.append(head.check_alive)
                with server:
                    before = server.metrics()
                    started = time.time()
                    result = benchmark(server.url + endpoint, spec.workload, model=self.served_model,
                                       tokenizer=tokenizer, seed=spec.seed, progress=spec.progress, **bench)
                    server.check_alive()
                    after = server.metrics()
        except (ServerError, LayoutError) as exc:
            raise ConfigError(f"backend=vllm: {exc}") from exc
        summary = dict(result.summary)
        for suffix, name in ENGINE_COUNTERS:
            delta = zip(engine_counter(after, name, self.dp), engine_counter(before, name, self.dp))
            summary[f"vllm_engine_{suffix}"] = [round(a - b) for a, b in delta]
        if not self.backend.plugin:
            return RunOutput(summary=summary, requests=result.requests, timeline=None)
        events = list(read_decision_log(decisions)) if decisions.is_file() else []
        routes = [ev for ev in events if ev["event"] == ROUTE]
        if not routes and summary.get("num_sent", len(result.requests)):
            raise ConfigError(f"backend.plugin: vLLM routed {len(result.requests)} requests but the balanceroute "
                              f"plugin logged no decision in {decisions}: it is not active in vLLM's "
                              f"environment (see the start of {server.log_path})")
        summary.update(num_workers=self.dp, **engine_totals(events, self.dp), **_balance(routes, self.dp))
        requests = result.requests.assign(
            worker=_engines_of(routes, summary["request_id_prefix"], result.requests["request_id"]))
        return RunOutput(summary=summary, requests=requests, timeline=_timeline(routes, started))


def _engines_of(routes: list[dict], prefix: str, request_ids: pd.Series) -> np.ndarray:
    """The engine each benchmark request went to (-1 where the log has no decision for it): the client sends
    ``X-Request-Id: <prefix>-<i>``, which vLLM keeps in the id it routes (``cmpl-<prefix>-<i>-0``)."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)(?:-|$)")
    engine = {}
    for ev in routes:
        found = pattern.search(ev.get("external_id") or ev["request_id"])
        if found:
            engine[int(found.group(1))] = ev["engine"]
    return np.array([engine.get(i, -1) for i in request_ids.tolist()], dtype=np.int64)


def _balance(routes: list[dict], num_engines: int) -> dict[str, Any]:
    """KV balance over the snapshots the routing decisions saw."""
    acc = BalanceAccumulator(num_engines)
    for ev in routes:
        acc.add_step(np.asarray(ev["kv_load"], dtype=np.float64))
    out = acc.summary()
    out.pop("num_workers")
    out["balance_sampled_at"] = "routing decisions"
    return out


def _timeline(routes: list[dict], t0: float) -> pd.DataFrame:
    """timeline.parquet rows: per decision (``step``) and engine, the load the decision saw, on the run's clock."""
    n = len(routes)
    g = len(routes[0]["kv_load"]) if routes else 0
    frame = pd.DataFrame({
        "time_s": np.repeat(np.array([ev["time"] - t0 for ev in routes], dtype=np.float64), g),
        "step": np.repeat(np.arange(n, dtype=np.int64), g),
        "worker": np.tile(np.arange(g, dtype=np.int64), n),
        "kv_load": np.array([ev["kv_load"] for ev in routes], dtype=np.float64).reshape(-1),
        "running": np.array([ev["running"] for ev in routes], dtype=np.int64).reshape(-1),
        "waiting": np.array([ev["waiting"] for ev in routes], dtype=np.int64).reshape(-1),
    })
    return frame[list(TIMELINE_COLUMNS)]
