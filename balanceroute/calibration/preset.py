"""The calibrated model config: the live runs' own ``model`` section with the fitted step model and vLLM's limits.

The file is a normal ``conf/model/<name>.yaml``: ``model=<name>`` runs the simulator with the fitted coefficients
and front-end latency and, because the ``vllm:`` section is the live runs' own, the vllm backend with the same
deployment. Scheduler limits and KV capacity are the ones the engines reported at start-up in their step logs (the
simulator then admits, batches and preempts as those engines did), not the config's requests, which vLLM may have
adjusted; runs without step logs can only give the configured ones.
"""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from balanceroute.calibration.fit import STEP_MODEL_KEYS, StepCosts
from balanceroute.calibration.frontend import FrontendFit
from balanceroute.calibration.steps import StepLogError
from balanceroute.results import atomic_write
from balanceroute.sim.presets import ModelPreset, get_preset

#: Fields of the step log's engine header that are model config keys of the same name.
ENGINE_LIMITS = ("max_num_seqs", "max_num_batched_tokens", "block_size")


def engine_limits(engines: Sequence[dict]) -> dict[str, int]:
    """The scheduler limits and KV capacity every engine reported (StepLogError when they differ)."""
    values: dict[str, set] = {key: {e[key] for e in engines} for key in ENGINE_LIMITS}
    values["kv_capacity_tokens"] = {e["num_gpu_blocks"] * e["block_size"] for e in engines}
    differing = {key: sorted(v) for key, v in values.items() if len(v) != 1}
    if differing:
        raise StepLogError(f"the engines of these runs were sized differently ({differing}); calibrate runs of "
                           "one deployment at a time")
    return {key: int(next(iter(v))) for key, v in values.items()}


def fitted_preset(model: dict[str, Any], costs: StepCosts, limits: dict[str, int]) -> ModelPreset:
    """The simulator's preset of ``model`` (a run's ``config.model``) with the fitted costs and the engines'
    limits (no front-end latency: that is fitted with it, :mod:`balanceroute.calibration.frontend`)."""
    return get_preset(model["name"]).with_overrides(**costs.coefficients(), **limits)


def calibrated_model(model: dict[str, Any], preset: ModelPreset, frontend: FrontendFit) -> dict[str, Any]:
    """``model`` with the fitted preset's coefficients and limits and the front-end latency."""
    fitted = {k: getattr(preset, k) for k in (*STEP_MODEL_KEYS, "kv_capacity_tokens", *ENGINE_LIMITS)}
    return {**model, **fitted, "frontend_latency_s": frontend.latency_s}


def header(quality: str, limits_measured: bool, frontend: FrontendFit, run_dirs: Sequence[str | Path]) -> str:
    """The file's comment: where the numbers come from and how well they fit (``quality``: the fit's sentence)."""
    today = datetime.date.today().isoformat()
    limits = ("Limits and KV capacity as vLLM sized the engines." if limits_measured else
              "Limits as configured for the runs (no step logs: not measured); KV capacity as vLLM logged it, else "
              "the preset's.")
    lines = [f"Calibrated by `balanceroute calibrate` on {today} from {len(run_dirs)} live run(s):",
             *[f"  {d}" for d in run_dirs],
             ("Step model T = c0 + max_g(cw + a*L_g + p*P_g) + b*mean_g L_g (ALGORITHMS.md section 3); c0 + cw is "
              "fitted as one constant (in cw)."),
             f"Fit to {quality}.",
             limits,
             (f"Front-end latency {frontend.latency_s * 1e3:.2f} ms: live mean TTFT minus the step model's, over the "
              "runs' own requests replayed in the simulator.")]
    return "".join(f"# {line}\n" for line in lines)


def write_model_config(path: Path, model: dict[str, Any], comment: str) -> None:
    """Write ``model`` as a model config file (``defaults`` naming the model schema first), atomically."""
    body = OmegaConf.to_yaml({"defaults": ["/schema/model@_here_", "_self_"], **model})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(comment + body, encoding="utf-8"))
