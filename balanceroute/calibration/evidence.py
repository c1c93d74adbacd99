"""What a calibration is fitted to: the engines' step logs or, for runs without them, per-request token timings.

Step logs (:mod:`balanceroute.calibration.steps`) give every lock-step's period and per-rank composition, and the
engines' limits and KV capacity as vLLM sized them: the fit is direct. Runs of a vLLM without the balanceroute
plugin, or with ``backend.step_log=false``, have only requests.parquet; their fit (:mod:`~.timings`) rebuilds the
loads from request lifetimes and is an approximation, and their limits are the run config's (what was asked of
vLLM, not what it chose; the KV capacity vLLM logged at start-up, else the model preset's). ``auto`` takes step
logs when every run has them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from balanceroute.backends.vllm import SERVER_LOG
from balanceroute.calibration.fit import StepFit, fit_steps
from balanceroute.calibration.preset import ENGINE_LIMITS, engine_limits
from balanceroute.calibration.steps import StepLogError, StepTable, read_steps
from balanceroute.calibration.timings import TimingFit, TokenTimings, fit_timings, token_timings
from balanceroute.results import REQUESTS_FILE
from balanceroute.sim.presets import get_preset
from balanceroute.vllm_plugin.step_log import STEP_LOG_DIR

SOURCES = ("auto", "steps", "timings")
#: vLLM's start-up line with an engine's KV capacity ("GPU KV cache size: 2,097,152 tokens", "CPU ..." on CPU)
KV_CACHE_LINE = re.compile(r"KV cache size: ([\d,]+) tokens")


@dataclass(frozen=True)
class Calibration:
    """A fit and what it stands on: ``source`` (steps or timings), the sentence describing its quality, the
    engines' limits (``limits_measured``: reported by vLLM, else configured) and, per run, the fitted quantity
    (a step period or a TPOT) measured and predicted."""

    fit: StepFit | TimingFit
    source: str
    quality: str
    limits: dict[str, int]
    limits_measured: bool
    per_run: list[dict]


def _run_row(run_dir: Path, measured_s: np.ndarray, predicted_s: np.ndarray) -> dict:
    def mean_ms(values: np.ndarray) -> float:
        return float(values.mean() * 1e3) if len(values) else float("nan")
    return {"run_dir": str(run_dir), "samples": len(measured_s), "measured_mean_ms": mean_ms(measured_s),
            "predicted_mean_ms": mean_ms(predicted_s)}


def _has_step_logs(run_dir: Path) -> bool:
    return any((run_dir / STEP_LOG_DIR).glob("steps_dp*.jsonl"))


def _from_steps(run_dirs: list[Path]) -> Calibration:
    tables = [read_steps(d) for d in run_dirs]
    steps = StepTable.concat(tables)
    fit = fit_steps(steps)
    per_run = [_run_row(d, t.period, fit.predict(t)) for d, t in zip(run_dirs, tables)]
    quality = (f"{fit.num_steps} lock-steps of {steps.num_ranks} DP rank(s): R^2 {fit.r2:.3f}, mean |error| "
               f"{fit.mean_abs_error:.1%} of the mean step period ({fit.mean_period_s * 1e3:.2f} ms), "
               f"{fit.rounds} round(s)")
    return Calibration(fit, "steps", quality, engine_limits(steps.engines), True, per_run)


def logged_kv_capacity(run_dir: Path) -> int | None:
    """The smallest KV capacity (tokens) an engine of the run logged at start-up (None: no such line)."""
    log = run_dir / SERVER_LOG
    if not log.exists():
        return None
    found = KV_CACHE_LINE.findall(log.read_text(encoding="utf-8", errors="replace"))
    return min(int(n.replace(",", "")) for n in found) if found else None


def configured_limits(model: dict[str, Any], kv_capacity: int | None) -> dict[str, int]:
    """The scheduler limits a run asked vLLM for (``model.vllm``, else ``model``), else the preset's; the KV
    capacity vLLM logged (``kv_capacity``), else the configured or the preset's (without step logs vLLM's own
    choices are not known)."""
    preset, vllm = get_preset(model["name"]), model.get("vllm") or {}
    limits = {}
    for key in (*ENGINE_LIMITS, "kv_capacity_tokens"):
        configured = vllm.get(key) if key in ("max_num_seqs", "max_num_batched_tokens") else None
        limits[key] = int(configured or model.get(key) or getattr(preset, key))
    if kv_capacity is not None:
        limits["kv_capacity_tokens"] = kv_capacity
    return limits


def _from_timings(run_dirs: list[Path], results: list[dict]) -> Calibration:
    tables = []
    for run_dir, result in zip(run_dirs, results):
        config = result["config"]
        requests = pd.read_parquet(run_dir / REQUESTS_FILE)
        tables.append(token_timings(requests, int(config["parallel"]["dp"]), barrier=bool(config["model"]["moe"])))
    fit = fit_timings(TokenTimings.concat(tables))
    per_run = []
    for run_dir, table in zip(run_dirs, tables):
        kept = fit.fitted(table)
        per_run.append(_run_row(run_dir, table.tpot[kept], fit.predict_tpot(table)[kept]))
    stalls = (f", {fit.num_outliers} left out as client stalls (TPOT more than {fit.outlier_bound_s * 1e3:.2f} ms "
              "from the fit)" if fit.num_outliers else "")
    quality = (f"the token timings of {fit.num_requests} requests (no step logs; loads rebuilt from request "
               f"lifetimes, an approximation{stalls}): R^2 {fit.r2:.3f}, mean |error| {fit.mean_abs_error:.1%} of "
               f"the mean TPOT ({fit.mean_tpot_s * 1e3:.2f} ms)")
    logged = [c for c in map(logged_kv_capacity, run_dirs) if c is not None]
    limits = configured_limits(results[0]["config"]["model"], min(logged) if logged else None)
    return Calibration(fit, "timings", quality, limits, False, per_run)


def calibrate_runs(run_dirs: list[Path], results: list[dict], source: str = "auto") -> Calibration:
    """Fit the step model to ``run_dirs`` (with their result.json) from ``source`` (one of :data:`SOURCES`)."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    if source == "auto":
        source = "steps" if all(_has_step_logs(d) for d in run_dirs) else "timings"
    for run_dir in run_dirs:
        if not (run_dir / REQUESTS_FILE).exists():
            raise StepLogError(f"{run_dir}: no {REQUESTS_FILE} (the per-request records of the run)")
    return _from_steps(run_dirs) if source == "steps" else _from_timings(run_dirs, results)
