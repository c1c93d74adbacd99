"""One run: a composed configuration in, a run folder with the result files out.

run.py calls :func:`run_experiment` once per Hydra job. The order matters to users:

1. :func:`check_config` and the construction of the policy and the backend validate everything a user can get
   wrong, so a bad value ends with one :class:`ConfigError` line before any work;
2. with ``resume`` on, a folder that already holds a result for the same :func:`config_hash` is skipped, which
   is how an interrupted sweep finishes without redoing work; a result.json that cannot be read is set aside
   (``result.json.corrupt``) with one warning and the job is redone;
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
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from balanceroute import __version__
from balanceroute.backends import RunSpec, make_backend
from balanceroute.config import ConfigError, RunConfig, config_key, typed_config
from balanceroute.config_hash import NOT_RUN_DEFINING, canonical, config_hash, run_defining
from balanceroute.policies import Policy, available_policies
from balanceroute.policies.checks import int_problem
from balanceroute.results import RESULT_FILE, read_result, set_aside
from balanceroute.serving import slurm_job_id
from balanceroute.steady import steady_metrics
from balanceroute.tracking import finishing, make_tracker, record_run
from balanceroute.workload import Workload

log = logging.getLogger(__name__)

#: Exit status for a configuration error (as argparse uses for bad arguments).
CONFIG_ERROR_EXIT = 2
#: Exit status for a live run that ran but failed (its result is written).
RUN_FAILED_EXIT = 1


class RunFailed(Exception):
    """A live run that stalled, completed nothing, or failed more requests than ``backend.bench.
    max_failed_fraction`` allows. Its result files are written (failures are recorded, not lost); the exit
    status says the run is not a measurement."""


def check_live_outcome(run: RunConfig, result: dict[str, Any], run_dir: Path) -> None:
    """Raise :class:`RunFailed` with one line if a live run (a backend with a ``bench`` section) failed. The
    simulator's failures (timeouts of an overloaded cluster) are outcomes it models, not faults of the run."""
    bench = getattr(run.backend, "bench", None)
    if bench is None:
        return
    n, completed, failed = int(result.get("num_requests", 0)), int(result.get("completed", 0)), \
        int(result.get("failed", 0))
    where = f"backend={run.backend.name}: {completed}/{n} completed, {failed} failed"
    errors = result.get("error_counts") or {}
    detail = f" ({', '.join(f'{k}: {v}' for k, v in errors.items())})" if errors else ""
    if result.get("stalled"):
        raise RunFailed(f"{where}{detail}; stalled: nothing finished for backend.bench.stall_timeout_s="
                        f"{bench.stall_timeout_s} s. Result kept in {run_dir}; the servers' logs are there too")
    if n and completed == 0:
        raise RunFailed(f"{where}{detail}: nothing completed. Result kept in {run_dir}; the servers' logs are "
                        "there too")
    if n and failed / n > bench.max_failed_fraction:
        raise RunFailed(f"{where}{detail}: more than backend.bench.max_failed_fraction="
                        f"{bench.max_failed_fraction} of the requests failed. Result kept in {run_dir}")

#: Summary keys echoed in the log line that ends a run (those the backend reports).
HEADLINE = (("output_throughput", "output tok/s", "{:.0f}"), ("p95_ttft_ms", "TTFT p95 ms", "{:.0f}"),
            ("p95_tpot_ms", "TPOT p95 ms", "{:.1f}"), ("mean_imbalance", "imbalance tokens", "{:.0f}"))


# ---- validation -------------------------------------------------------------------------------------------------
def _check_int(key: str, value: Any, minimum: int, what: str = "") -> None:
    problem = int_problem(value, minimum, also=what)
    if problem:
        raise ConfigError(f"{key}: {problem}")


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


def is_trace(run: RunConfig) -> bool:
    """Whether the workload replays a file (it has a ``path``) rather than being generated."""
    return hasattr(run.workload, "path")


def check_config(cfg: DictConfig) -> RunConfig:
    """The typed configuration (:func:`balanceroute.config.typed_config`: unknown keys and wrong types refused),
    after checking the values that span config groups or that no component checks for us, naming the key.

    Group-local parameters (a policy's, a model coefficient, a simulator setting) are checked by the objects
    they build, in :func:`run_experiment`.
    """
    if "_target_" not in cfg.router or "name" not in cfg.router:
        raise ConfigError(f"router: the chosen router config defines no router (no _target_ or name); configs "
                          f"starting with _ in conf/router/ are shared bases, not routers. Valid routers: "
                          f"{', '.join(available_policies())}")
    missing = _missing_keys(cfg)
    if missing:
        raise ConfigError(f"{missing[0]}: no value given (??? in the config); set it on the command line or "
                          "choose a complete config (files starting with _ are shared bases, not options)")
    run = typed_config(cfg)
    if run.rate is None:
        if not is_trace(run):
            raise ConfigError(f"rate: null replays a trace's own timestamps, but workload {run.workload.name!r} "
                              "is generated; give a rate > 0 (requests/s) or inf")
    elif not run.rate > 0:
        raise ConfigError(f"rate: must be > 0 (requests/s), inf (all requests at t=0) or null (a trace's own "
                          f"timestamps), got {run.rate!r}")
    _check_int("seed", run.seed, 0)
    _check_int("parallel.dp", run.parallel.dp, 1, " (data-parallel workers)")
    _check_int("parallel.tp", run.parallel.tp, 1, " (tensor-parallel GPUs per worker)")
    n = run.workload.num_requests
    if not (n is None and is_trace(run)):
        _check_int("workload.num_requests", n, 1, " (or null for a whole trace)" if is_trace(run) else "")
    if is_trace(run):
        path = Path(run.workload.path)
        if not path.is_file():
            raise ConfigError(f"workload.path: trace file {str(path)!r} not found; fetch the traces (README: "
                              f"Traces) or point data.data_dir at the folder holding them")
    return run


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def check_single_run_of_a_study(sweep_params: Any, task_overrides: Any) -> None:
    """A study (``+experiment=X``) is a sweep; run without ``-m`` it would silently run one arbitrary
    configuration. Allowed when the command line picks every key the study sweeps (one of its runs), else a
    ConfigError that says to add -m or which keys to pick."""
    swept = [str(k) for k in (sweep_params or {})]
    given = {_override_key(str(o)) for o in task_overrides or ()}
    if not swept or "experiment" not in given:
        return
    unpicked = [k for k in swept if _override_key(k) not in given]
    if unpicked:
        study = next(str(o).split("=", 1)[1] for o in task_overrides if _override_key(str(o)) == "experiment")
        raise ConfigError(f"experiment: {study} is a study that sweeps {', '.join(swept)}; run it with -m "
                          f"(python run.py -m +experiment={study}), or pick one of its runs by also setting "
                          f"{', '.join(unpicked)}")


# ---- building the parts -----------------------------------------------------------------------------------------
#: Seed offset of a warm start's history: far from any seed a sweep uses, so the history never repeats a run.
HISTORY_SEED_OFFSET = 1_000_003


def history_lengths(run: RunConfig, count: int) -> list[int]:
    """Output lengths of ``count`` earlier requests of the run's generated workload (drawn with another seed):
    the history a deployment would warm-start its output-length estimate from (conf/router/_prior.yaml)."""
    if is_trace(run):
        raise ConfigError(f"router.history_requests: {count} asks for history drawn from a generated workload, but "
                          f"workload {run.workload.name!r} replays a trace (its rows would be this run's own); "
                          "set router.prior_lengths to lengths from an earlier run instead, or history_requests=0")
    history = dataclasses.replace(run.workload, num_requests=count, seed=run.seed + HISTORY_SEED_OFFSET)
    with config_key("router.history_requests"):
        return build_workload(history).output_len.tolist()


def router_params(run: RunConfig) -> dict[str, Any]:
    """The router's name and parameters (``make_policy`` arguments), without Hydra's ``_target_``; a warm start
    from history (``history_requests``) becomes ``prior_lengths`` worth one observation each."""
    params = {k: v for k, v in run.router.items() if k != "_target_"}
    count = params.pop("history_requests", 0)
    if not count:
        return params
    _check_int("router.history_requests", count, 0)
    if params.get("prior_lengths") is not None:
        raise ConfigError("router.history_requests: give either a history to draw (history_requests) or "
                          "prior_lengths, not both")
    lengths = history_lengths(run, count)
    return {**params, "prior_lengths": lengths, "prior_weight": float(len(lengths))}


def build_policy(run: RunConfig, params: dict[str, Any] | None = None) -> Policy:
    """The routing policy of ``run.router`` (its ``_target_`` called with :func:`router_params`, or ``params``
    when the caller has them already), seeded with ``run.seed``."""
    with config_key("router"):
        params = router_params(run) if params is None else params
        return instantiate({"_target_": run.router["_target_"], **params}, seed=run.seed, _convert_="all")


def build_workload(workload: Any) -> Workload:
    """The requests of a typed ``workload`` section: its ``_target_`` loader called with every key but ``name``."""
    params = dataclasses.asdict(workload)
    name = params.pop("name")
    with config_key("workload"):
        return dataclasses.replace(instantiate(params), name=name)


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


def run_label(run: RunConfig) -> str:
    """What tables and plots call the run's router: ``label`` where the configuration sets one (a study arm,
    conf/arm/, such as ``br0_pool`` or ``br_h_oracle``: router variants that share a policy name), else the
    router's name."""
    return run.label if run.label is not None else str(run.router["name"])


def run_identity(cfg: DictConfig, run: RunConfig, workload: Workload, digest: str) -> dict[str, Any]:
    """The keys result.json carries beside the metrics, so a result file says what it measured."""
    return {
        "router": run.router["name"],
        "label": run_label(run),
        "rate": _json_number(canonical(run.rate)),
        "dp": run.parallel.dp,
        "tp": run.parallel.tp,
        "model": run.model.name,
        "backend": run.backend.name,
        "workload": workload.name,
        "num_requests": len(workload),
        "seed": run.seed,
        "config_hash": digest,
        "config": _json_number(run_defining(cfg)),
        "balanceroute_version": __version__,
        "slurm_job_id": slurm_job_id(),  # None outside SLURM; <array>_<task> for a job of a sweep (squeue's id)
    }


def run_experiment(cfg: DictConfig, *, progress: bool = False) -> dict[str, Any]:
    """Run (or, resuming, skip) the run described by ``cfg``; returns the contents of its result.json.

    The run folder is ``cfg.paths.output_dir``. Raises :class:`ConfigError` for a value the user can fix.
    """
    run = check_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    digest = config_hash(cfg)
    try:
        previous = read_result(run_dir)
    except ValueError as exc:  # truncated or corrupt (a job killed mid-write by hand, a full disk): redo the job
        moved = set_aside(run_dir / RESULT_FILE)
        log.warning("%s; moved it to %s and running the job again", exc, moved.name)
        previous = None
    if previous is not None and run.resume:
        if previous.get("config_hash") == digest:
            log.info("skipped: %s already holds the result of this configuration (config_hash %s; resume=false "
                     "reruns it)", run_dir, digest)
            return previous
        log.info("rerunning: the configuration changed since %s/result.json was written (config_hash %s -> %s)",
                 run_dir, previous.get("config_hash"), digest)

    router = router_params(run)
    policy = build_policy(run, router)
    backend = make_backend(run)
    workload = build_workload(run.workload)
    spec = RunSpec(workload=workload, policy=policy, router=router, seed=run.seed,
                   run_dir=run_dir, progress=progress)
    rate = "the trace's timestamps" if run.rate is None else f"{run.rate} requests/s"
    log.info("running %s: %d requests (%s) at %s over dp=%d, router %s, model %s", run.backend.name,
             len(workload), workload.name, rate, run.parallel.dp, router["name"], run.model.name)

    identity = run_identity(cfg, run, workload, digest)
    with config_key("logger"):  # a bad logger option stops the run here, before any work
        tracker = make_tracker(dataclasses.asdict(run.logger), run_dir=run_dir, config=identity["config"],
                               name=run_dir.name)
    with finishing(tracker):
        started = time.perf_counter()
        output = backend.run(spec)
        window = steady_metrics(output.requests, output.steps, num_workers=run.parallel.dp,
                                slots_per_worker=output.summary.get("max_num_seqs"), window=run.steady)
        result = {**output.summary, **window, **identity,
                  "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "wall_time_s": round(time.perf_counter() - started, 3)}
        record_run(run_dir, result, output.requests, output.timeline, tracker)
    check_live_outcome(run, result, run_dir)

    headline = ", ".join(f"{label} {fmt.format(result[key])}" for key, label, fmt in HEADLINE
                         if isinstance(result.get(key), numbers.Real))
    log.info("done in %.1f s: %d/%d completed; %s", result["wall_time_s"], result.get("completed", 0),
             len(workload), headline)
    log.info("results: %s", run_dir.resolve())
    return read_result(run_dir) or result


#: What Hydra puts into a job's folder before the job's own code runs.
HYDRA_JOB_FILES = frozenset({".hydra", "run.log"})


def discard_unused_run_dir(cfg: DictConfig) -> None:
    """Remove the run folder of a run refused before any work, if it holds only what Hydra put there (a folder
    with anything else, such as an earlier result, is left alone), so a rejected run leaves nothing behind."""
    run_dir = Path(cfg.paths.output_dir)
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= HYDRA_JOB_FILES:
        shutil.rmtree(run_dir, ignore_errors=True)


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): at the end of a multirun, say where its runs are and how to
    tabulate them."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        log.info("sweep folder: %s (table: python -m analysis.compare %s)", sweep_dir, sweep_dir)


class SweepCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): before the first job of a multirun, build every value of every
    swept key (each in a job with the first value of the other keys) the way a job would, so that a bad value
    anywhere in the sweep (``rate=1,-1``) stops it with one line before any job runs, instead of after the good
    jobs. Values that are only wrong in combination are still caught by their own job."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        for job in _value_probes(config):
            try:
                run = check_config(compose(config_name="config", overrides=job))
                build_policy(run)
                make_backend(run)
            except ConfigCompositionException as exc:  # a value of the wrong type for its schema
                cause = f": {str(exc.__cause__).strip().splitlines()[0]}" if exc.__cause__ else ""
                print(f"error: {exc}{cause} (no job was run)", file=sys.stderr)
                sys.exit(CONFIG_ERROR_EXIT)
            except ConfigError as exc:
                print(f"error: {exc} (in the sweep's job {' '.join(job)}; no job was run)", file=sys.stderr)
                sys.exit(CONFIG_ERROR_EXIT)


def _value_probes(config: DictConfig) -> list[list[str]]:
    """Override lists that together take every value of every swept key once (BasicSweeper's parsing: the
    study's ``hydra.sweeper.params`` first, the command line after them)."""
    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    choices: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    first = {key: values[0] for key, values in choices.items()}
    probes = [list(first.values())]
    for key, values in choices.items():
        probes += [list({**first, key: value}.values()) for value in values[1:]]
    return probes
