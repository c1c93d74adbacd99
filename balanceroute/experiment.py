"""One run: a composed configuration in, a run folder with the result files out.

run.py calls :func:`run_experiment` once per Hydra job. The order matters to users:

1. :func:`check_config` and the construction of the policy and the backend validate everything a user can get
   wrong, so a bad value ends with one :class:`ConfigError` line before any work;
2. with ``resume`` on, a folder that already holds a result for the same :func:`config_hash` is skipped, which
   is how an interrupted sweep finishes without redoing work;
3. the backend runs, and ``result.json`` (metrics plus the run's identity), ``requests.parquet`` and
   ``timeline.parquet`` are written atomically, result.json last, so its presence means the run is complete;
4. the ``logger`` (W&B, or none) is opened before the backend runs and gets a copy of the files after they are
   written (:mod:`balanceroute.tracking`), so it can never cost a result.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import numbers
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from balanceroute import __version__
from balanceroute.backends import ConfigError, RunSpec, config_key, make_backend
from balanceroute.config_hash import NOT_RUN_DEFINING, config_hash, run_defining
from balanceroute.policies import Policy
from balanceroute.results import read_result
from balanceroute.serving import slurm_job_id
from balanceroute.steady import SteadyWindow, steady_metrics
from balanceroute.tracking import finishing, make_tracker, record_run
from balanceroute.workload import Workload

log = logging.getLogger(__name__)

#: Summary keys echoed in the log line that ends a run (those the backend reports).
HEADLINE = (("output_throughput", "output tok/s", "{:.0f}"), ("p95_ttft_ms", "TTFT p95 ms", "{:.0f}"),
            ("p95_tpot_ms", "TPOT p95 ms", "{:.1f}"), ("mean_imbalance", "imbalance tokens", "{:.0f}"))


# ---- validation -------------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(key: str, value: Any, minimum: int, what: str = "") -> None:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}{what}, got {value!r}")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")


def _missing_keys(cfg: DictConfig) -> list[str]:
    """Run-defining keys still ``???`` (the other top-level keys may interpolate Hydra's runtime, unset here)."""
    missing = []
    for key in cfg:
        if key in NOT_RUN_DEFINING:
            continue
        if OmegaConf.is_missing(cfg, key):
            missing.append(key)
        elif OmegaConf.is_config(cfg[key]):
            missing += OmegaConf.missing_keys(cfg[key])  # full dotted keys
    return sorted(missing)


def is_trace(cfg: DictConfig) -> bool:
    """Whether the workload replays a file (it has a ``path``) rather than being generated."""
    return "path" in cfg.workload


def check_config(cfg: DictConfig) -> None:
    """Check the values that span config groups or that no component checks for us, naming the key.

    Group-local parameters (a policy's, a model coefficient, a simulator setting) are checked by the objects
    they build, in :func:`run_experiment`.
    """
    missing = _missing_keys(cfg)
    if missing:
        raise ConfigError(f"{missing[0]}: no value given (??? in the config); set it on the command line or "
                          "choose a complete config (files starting with _ are shared bases, not options)")
    rate = cfg.rate
    if rate is None:
        if not is_trace(cfg):
            raise ConfigError(f"rate: null replays a trace's own timestamps, but workload {cfg.workload.name!r} "
                              "is generated; give a rate > 0 (requests/s) or inf")
    elif isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not rate > 0:
        raise ConfigError(f"rate: must be > 0 (requests/s), inf (all requests at t=0) or null (a trace's own "
                          f"timestamps), got {rate!r}")
    _check_int("seed", cfg.seed, 0)
    _check_bool("resume", cfg.resume)
    _check_int("parallel.dp", cfg.parallel.dp, 1, " (data-parallel workers)")
    _check_int("parallel.tp", cfg.parallel.tp, 1, " (tensor-parallel GPUs per worker)")
    _check_bool("parallel.ep", cfg.parallel.ep)
    n = cfg.workload.num_requests
    if not (n is None and is_trace(cfg)):
        _check_int("workload.num_requests", n, 1, " (or null for a whole trace)" if is_trace(cfg) else "")
    if is_trace(cfg):
        path = Path(cfg.workload.path)
        if not path.is_file():
            raise ConfigError(f"workload.path: trace file {str(path)!r} not found; fetch the traces (README: "
                              f"Traces) or point data.data_dir at the folder holding them")


# ---- building the parts -----------------------------------------------------------------------------------------
#: Seed offset of a warm start's history: far from any seed a sweep uses, so the history never repeats a run.
HISTORY_SEED_OFFSET = 1_000_003


def history_lengths(cfg: DictConfig, count: int) -> list[int]:
    """Output lengths of ``count`` earlier requests of the run's generated workload (drawn with another seed):
    the history a deployment would warm-start its output-length estimate from (conf/router/_prior.yaml)."""
    if is_trace(cfg):
        raise ConfigError(f"router.history_requests: {count} asks for history drawn from a generated workload, but "
                          f"workload {cfg.workload.name!r} replays a trace (its rows would be this run's own); "
                          "set router.prior_lengths to lengths from an earlier run instead, or history_requests=0")
    history = cfg.workload.copy()
    history.num_requests = count
    history.seed = cfg.seed + HISTORY_SEED_OFFSET
    params = OmegaConf.to_container(history, resolve=True)
    params.pop("name")
    with config_key("router.history_requests"):
        return instantiate(params).output_len.tolist()


def router_params(cfg: DictConfig) -> dict[str, Any]:
    """The router's name and parameters (``make_policy`` arguments), without Hydra's ``_target_``; a warm start
    from history (``history_requests``) becomes ``prior_lengths`` worth one observation each."""
    params = OmegaConf.to_container(cfg.router, resolve=True)
    params.pop("_target_", None)
    count = params.pop("history_requests", 0)
    if not count:
        return params
    _check_int("router.history_requests", count, 0)
    if params.get("prior_lengths") is not None:
        raise ConfigError("router.history_requests: give either a history to draw (history_requests) or "
                          "prior_lengths, not both")
    lengths = history_lengths(cfg, count)
    return {**params, "prior_lengths": lengths, "prior_weight": float(len(lengths))}


def build_policy(cfg: DictConfig, params: dict[str, Any] | None = None) -> Policy:
    """The routing policy of ``cfg.router`` (its ``_target_`` called with :func:`router_params`, or ``params``
    when the caller has them already), seeded with ``cfg.seed``."""
    with config_key("router"):
        params = router_params(cfg) if params is None else params
        return instantiate({"_target_": cfg.router._target_, **params}, seed=cfg.seed, _convert_="all")


def build_workload(cfg: DictConfig) -> Workload:
    """The requests of ``cfg.workload``: its ``_target_`` loader called with every key but ``name``."""
    params = OmegaConf.to_container(cfg.workload, resolve=True)
    name = params.pop("name")
    with config_key("workload"):
        workload = instantiate(params)
    if not isinstance(workload, Workload):
        raise ConfigError(f"workload._target_: {params['_target_']} returned {type(workload).__name__}, "
                          "not a balanceroute.workload.Workload")
    return dataclasses.replace(workload, name=name)


def build_steady_window(cfg: DictConfig) -> SteadyWindow:
    """How the steady window of ``cfg.steady`` is chosen (:mod:`balanceroute.steady`)."""
    with config_key("steady"):
        return SteadyWindow(**OmegaConf.to_container(cfg.steady, resolve=True))


# ---- the run ----------------------------------------------------------------------------------------------------
def _json_number(value: Any) -> Any:
    """Non-finite floats as strings ("inf"), since JSON has no infinity and null means something else here."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_number(v) for v in value]
    return value


def run_label(cfg: DictConfig) -> str:
    """What tables and plots call the run's router: ``label`` where the configuration sets one (a study arm,
    conf/arm/, such as ``br0_pool`` or ``br_h_oracle``: router variants that share a policy name), else the
    router's name."""
    label = cfg.get("label")
    return str(label) if label is not None else str(cfg.router.name)


def run_identity(cfg: DictConfig, workload: Workload, digest: str) -> dict[str, Any]:
    """The keys result.json carries beside the metrics, so a result file says what it measured."""
    return {
        "router": cfg.router.name,
        "label": run_label(cfg),
        "rate": _json_number(cfg.rate),
        "dp": cfg.parallel.dp,
        "tp": cfg.parallel.tp,
        "model": cfg.model.name,
        "backend": cfg.backend.name,
        "workload": workload.name,
        "num_requests": len(workload),
        "seed": cfg.seed,
        "config_hash": digest,
        "config": _json_number(run_defining(cfg)),
        "balanceroute_version": __version__,
        "slurm_job_id": slurm_job_id(),  # None outside SLURM; <array>_<task> for a job of a sweep (squeue's id)
    }


def run_experiment(cfg: DictConfig, *, progress: bool = False) -> dict[str, Any]:
    """Run (or, resuming, skip) the run described by ``cfg``; returns the contents of its result.json.

    The run folder is ``cfg.paths.output_dir``. Raises :class:`ConfigError` for a value the user can fix.
    """
    check_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    digest = config_hash(cfg)
    previous = read_result(run_dir)
    if previous is not None and cfg.resume:
        if previous.get("config_hash") == digest:
            log.info("skipped: %s already holds the result of this configuration (config_hash %s; resume=false "
                     "reruns it)", run_dir, digest)
            return previous
        log.info("rerunning: the configuration changed since %s/result.json was written (config_hash %s -> %s)",
                 run_dir, previous.get("config_hash"), digest)

    steady = build_steady_window(cfg)
    router = router_params(cfg)
    policy = build_policy(cfg, router)
    backend = make_backend(cfg)
    workload = build_workload(cfg)
    spec = RunSpec(workload=workload, policy=policy, router=router, seed=cfg.seed,
                   run_dir=run_dir, progress=progress)
    rate = "the trace's timestamps" if cfg.rate is None else f"{cfg.rate} requests/s"
    log.info("running %s: %d requests (%s) at %s over dp=%d, router %s, model %s", cfg.backend.name,
             len(workload), workload.name, rate, cfg.parallel.dp, cfg.router.name, cfg.model.name)

    identity = run_identity(cfg, workload, digest)
    logger = OmegaConf.to_container(cfg.logger, resolve=True)
    with config_key("logger"):  # a bad logger option stops the run here, before any work
        tracker = make_tracker(logger, run_dir=run_dir, config=identity["config"], name=run_dir.name)
    with finishing(tracker):
        started = time.perf_counter()
        output = backend.run(spec)
        window = steady_metrics(output.requests, output.steps, num_workers=cfg.parallel.dp,
                                slots_per_worker=output.summary.get("max_num_seqs"), window=steady)
        result = {**output.summary, **window, **identity,
                  "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "wall_time_s": round(time.perf_counter() - started, 3)}
        record_run(run_dir, result, output.requests, output.timeline, tracker)

    headline = ", ".join(f"{label} {fmt.format(result[key])}" for key, label, fmt in HEADLINE
                         if isinstance(result.get(key), numbers.Real))
    log.info("done in %.1f s: %d/%d completed; %s", result["wall_time_s"], result.get("completed", 0),
             len(workload), headline)
    log.info("results: %s", run_dir.resolve())
    return read_result(run_dir) or result


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): at the end of a multirun, say where its runs are and how to
    tabulate them."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        log.info("sweep folder: %s (table: python -m analysis.compare %s)", sweep_dir, sweep_dir)
