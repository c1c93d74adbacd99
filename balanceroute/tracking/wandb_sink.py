"""``logger=wandb``: mirror a run to Weights & Biases (online, offline, or disabled).

What a W&B run holds (conf/logger/wandb.yaml sets the options):

- config: the run-defining configuration, exactly result.json's ``config``;
- summary: every other key of result.json, with the same values (per-worker lists included);
- history: per-worker load over time (``load/kv_load/worker_<g>``, ``load/running/...``, ``load/waiting/...``,
  ``load/imbalance``, ``load/spread`` against ``load/time_s``) and one chart of all workers' KV load;
- a table ``requests``: a seeded sample of the per-request records with TTFT, TPOT and E2EL;
- an artifact ``run-<config_hash>`` (type ``run-results``) with the run's result files.

W&B writes its own files under ``<run folder>/wandb/`` (``dir`` is the run folder), so a run folder is
self-contained and an offline run can be uploaded later with ``wandb sync <run folder>/wandb/offline-run-*``.
Whatever goes wrong with W&B (no network, no API key, a server error mid-run) is logged as one warning and the
tracker turns into a no-op; the run and its local files are unaffected. The API key is read by wandb itself from
``WANDB_API_KEY`` or its login file; balanceroute never reads, logs or writes it.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from balanceroute.policies.checks import int_problem, number_problem
from balanceroute.results import REQUESTS_FILE, RESULT_FILE, TIMELINE_FILE
from balanceroute.tracking.records import request_latencies
from balanceroute.tracking.secrets import redact
from balanceroute.tracking.tracker import NullTracker

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
#: Files of a run folder stored in the results artifact, where present.
ARTIFACT_FILES = (RESULT_FILE, REQUESTS_FILE, TIMELINE_FILE, ".hydra/config.yaml", ".hydra/overrides.yaml")
#: Prefix of the history keys of the load series (a step metric of its own: ``load/time_s``).
LOAD_PREFIX = "load/"


@dataclass  # not frozen: it is also the schema of the logger section, which Hydra fills in
class WandbOptions:
    """The ``logger`` config group for ``name: wandb`` (see conf/logger/wandb.yaml for what each key means)."""

    mode: str = "online"
    project: str = "balanceroute"
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    job_type: str | None = None
    table_rows: int = 1000
    timeline_points: int = 500
    init_timeout_s: float = 60.0
    system_metrics: bool = False

    @classmethod
    def from_config(cls, logger: Mapping[str, Any]) -> WandbOptions:
        """Options from the ``logger`` mapping (its ``name`` key aside). Raises ValueError naming a bad key."""
        params = {k: v for k, v in logger.items() if k != "name"}
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")
        if "tags" in params:
            tags = params["tags"]
            if isinstance(tags, str) or not all(isinstance(t, str) for t in (tags or ())):
                raise ValueError(f"tags: must be a list of strings, got {tags!r}")
            params["tags"] = tuple(tags or ())
        options = cls(**params)
        options._check()
        return options

    def _check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not a W&B mode; valid modes: {', '.join(MODES)}")
        if not isinstance(self.project, str) or not self.project:
            raise ValueError(f"project: must be a non-empty string, got {self.project!r}")
        problems = {"table_rows": int_problem(self.table_rows, 0),
                    "timeline_points": int_problem(self.timeline_points, 0),
                    "init_timeout_s": number_problem(self.init_timeout_s, 0, low_open=True)}
        for key, problem in problems.items():
            if problem:
                raise ValueError(f"{key}: {problem}")


def start_wandb(options: WandbOptions, *, run_dir: Path, config: Mapping[str, Any], name: str):
    """A started :class:`WandbTracker`, or a :class:`~balanceroute.tracking.tracker.NullTracker` (with a warning)
    when W&B cannot start. Raises ValueError if the wandb package is missing: the user asked for it explicitly."""
    try:
        import wandb
    except ImportError:
        raise ValueError("the wandb package is not installed; pip install 'balanceroute[wandb]', "
                         "or run with logger=none") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    timeout = float(options.init_timeout_s)  # login_timeout: never wait on an interactive login prompt for longer
    settings = wandb.Settings(init_timeout=timeout, login_timeout=timeout, console="off", save_code=False,
                              disable_git=True, x_disable_stats=not options.system_metrics)
    try:
        run = wandb.init(mode=options.mode, project=options.project, entity=options.entity, group=options.group,
                         tags=list(options.tags), job_type=options.job_type, name=name, config=dict(config),
                         dir=str(run_dir), settings=settings, reinit="create_new")
    except Exception as exc:  # noqa: BLE001 -- any failure to reach W&B must leave the run itself alone
        log.warning("W&B: could not start a run (%s: %s); continuing without W&B, results go to %s as always",
                    type(exc).__name__, _first_line(exc), run_dir)
        return NullTracker()
    return WandbTracker(run, options)


class WandbTracker:
    """A live W&B run. Each method catches W&B's errors: the first one is logged, later calls do nothing."""

    def __init__(self, run: Any, options: WandbOptions) -> None:
        self.run = run
        self.options = options
        self._load_metric_defined = False

    # ---- guarding ------------------------------------------------------------------------------------------------
    def _safely(self, what: str, action: Callable[[], None]) -> None:
        if self.run is None:
            return
        try:
            action()
        except Exception as exc:  # noqa: BLE001 -- see the module docstring: W&B never costs a result
            log.warning("W&B: %s failed (%s: %s); no more W&B logging for this run, its local files are complete",
                        what, type(exc).__name__, _first_line(exc))
            run, self.run = self.run, None
            try:
                run.finish(exit_code=1)
            except Exception as again:  # noqa: BLE001
                log.debug("W&B: closing the run after the failure failed too: %s", _first_line(again))

    # ---- load over time ------------------------------------------------------------------------------------------
    def log_load(self, time_s: float, kv_load: np.ndarray, running: np.ndarray | None = None,
                 waiting: np.ndarray | None = None) -> None:
        row = load_row(float(time_s), np.asarray(kv_load, dtype=np.float64), running, waiting)
        self._safely("logging load", lambda: self._log_load_rows([row]))

    def log_timeline(self, timeline: pd.DataFrame) -> None:
        if self.options.timeline_points == 0 or timeline.empty:
            return
        time_s, kv, running, waiting = timeline_arrays(thin_timeline(timeline, self.options.timeline_points))
        rows = [load_row(time_s[i], kv[i], running[i], waiting[i]) for i in range(len(time_s))]

        def log() -> None:
            import wandb

            self._log_load_rows(rows)
            chart = wandb.plot.line_series(xs=time_s.tolist(), ys=kv.T.tolist(),
                                           keys=[f"worker {g}" for g in range(kv.shape[1])],
                                           title="KV load per worker (tokens)", xname="time (s)")
            self.run.log({"charts/kv_load_per_worker": chart})

        self._safely("logging the load timeline", log)

    def _log_load_rows(self, rows: list[dict[str, float]]) -> None:
        if not self._load_metric_defined:
            self.run.define_metric(f"{LOAD_PREFIX}time_s")
            self.run.define_metric(f"{LOAD_PREFIX}*", step_metric=f"{LOAD_PREFIX}time_s")
            self._load_metric_defined = True
        for row in rows:
            self.run.log(row)

    # ---- the finished run ----------------------------------------------------------------------------------------
    def log_run(self, result: Mapping[str, Any], requests: pd.DataFrame | None, run_dir: Path) -> None:
        def log() -> None:
            import wandb

            self.run.summary.update(summary_of(result))
            if requests is not None and self.options.table_rows > 0:
                sample = request_sample(requests, self.options.table_rows)
                self.run.log({"requests": wandb.Table(dataframe=sample)})
            artifact = wandb.Artifact(artifact_name(result), type="run-results",
                                      metadata={k: result.get(k) for k in ("label", "router", "config_hash")})
            for rel in ARTIFACT_FILES:
                path = Path(run_dir) / rel
                if path.is_file():
                    # immutable + skip_cache: result files never change once written, so W&B need not copy them
                    artifact.add_file(str(path), name=rel, policy="immutable", skip_cache=True)
            self.run.log_artifact(artifact)

        self._safely("logging the results", log)

    def finish(self, *, failed: bool = False) -> None:
        self._safely("finishing the run", lambda: self.run.finish(exit_code=1 if failed else 0))
        self.run = None


# ---- what is logged (pure functions: tested without W&B) -----------------------------------------------------------
def summary_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """The W&B summary of a run: result.json without ``config`` (that is the W&B run config)."""
    return {k: v for k, v in result.items() if k != "config"}


def artifact_name(result: Mapping[str, Any]) -> str:
    """``run-<config_hash>``: reruns of one configuration become versions of one artifact."""
    digest = re.sub(r"[^A-Za-z0-9_.-]", "_", str(result.get("config_hash") or "unknown"))
    return f"run-{digest}"


def load_row(time_s: float, kv_load: np.ndarray, running: np.ndarray | None = None,
             waiting: np.ndarray | None = None) -> dict[str, float]:
    """One history row of the load series: per-worker values, imbalance G*max - sum and max - min of KV load."""
    g = kv_load.size
    row = {f"{LOAD_PREFIX}time_s": time_s,
           f"{LOAD_PREFIX}imbalance": float(g * kv_load.max() - kv_load.sum()) if g else 0.0,
           f"{LOAD_PREFIX}spread": float(kv_load.max() - kv_load.min()) if g else 0.0}
    for series, values in (("kv_load", kv_load), ("running", running), ("waiting", waiting)):
        if values is not None:
            row.update({f"{LOAD_PREFIX}{series}/worker_{w}": float(v) for w, v in enumerate(np.asarray(values))})
    return row


def thin_timeline(timeline: pd.DataFrame, points: int) -> pd.DataFrame:
    """The rows of at most ``points`` steps of ``timeline``, evenly spaced over its steps (all workers of each)."""
    steps = np.unique(timeline["step"].to_numpy())
    if steps.size > points:
        steps = steps[np.unique(np.linspace(0, steps.size - 1, points).round().astype(np.int64))]
    return timeline[timeline["step"].isin(steps)]


def timeline_arrays(timeline: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``time_s`` per step and (steps x workers) arrays of kv_load, running and waiting from a long timeline."""
    wide = timeline.pivot_table(index="step", columns="worker", values=["time_s", "kv_load", "running", "waiting"],
                                aggfunc="first").sort_index()
    return (wide["time_s"].min(axis=1).to_numpy(), wide["kv_load"].to_numpy(dtype=np.float64),
            wide["running"].to_numpy(dtype=np.float64), wide["waiting"].to_numpy(dtype=np.float64))


def request_sample(requests: pd.DataFrame, rows: int, *, seed: int = 0) -> pd.DataFrame:
    """At most ``rows`` requests (a seeded uniform sample, in request order) with their latencies in ms."""
    if len(requests) > rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(requests), size=rows, replace=False))
        requests = requests.iloc[keep]
    sample = pd.concat([requests, request_latencies(requests)], axis=1).reset_index(drop=True)
    for col in ("status", "error"):
        if col in sample:
            sample[col] = sample[col].astype(str)
    return sample


def _first_line(exc: BaseException) -> str:
    """The first line of an error message, secrets redacted (a W&B error may quote a credential)."""
    text = str(exc).strip()
    return redact(text.splitlines()[0]) if text else ""
