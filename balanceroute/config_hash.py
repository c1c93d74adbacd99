"""A stable fingerprint of what a run computes, so a resumed sweep can tell a finished run from a changed one.

The hash covers the resolved configuration minus the keys that say *where* or *how* a run is executed or
recorded (Hydra's own settings, output and data folders, the experiment tracker, the resume flag, the study
name): moving the output folder or switching W&B on must not invalidate finished runs, while changing any
router parameter, model coefficient, workload setting, rate or seed must.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Top-level keys that do not change a run's results (``lookup`` holds a study's tables; what a run takes from
#: them, such as its rate, is in the keys that use them).
NOT_RUN_DEFINING = ("hydra", "resume", "logger", "paths", "data", "name", "lookup")

#: Hex digits kept: 16 (64 bits) makes a collision among a study's runs vanishingly unlikely and stays readable.
HASH_CHARS = 16


def run_defining(cfg: DictConfig) -> dict[str, Any]:
    """The resolved configuration a run's results depend on, as plain containers.

    Excluded keys are dropped *before* resolving, so their interpolations (``${hydra:runtime.output_dir}``)
    need not be resolvable here. Integral floats become ints: ``rate=3`` and ``rate=3.0`` are the same run.
    """
    out = {}
    for key in cfg:
        if key in NOT_RUN_DEFINING:
            continue
        value = cfg[key]  # containers stay attached to cfg, so their interpolations resolve against it
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
        out[key] = canonical(value)
    return out


def canonical(value: Any) -> Any:
    """``value`` with integral floats as ints at any depth: ``rate=3`` and ``rate=3.0`` are one value."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def config_hash(cfg: DictConfig) -> str:
    """Hex digest of :func:`run_defining`; independent of key order and of how values were spelled
    (an override, an interpolation or a file giving the same resolved value hash the same)."""
    text = json.dumps(run_defining(cfg), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]
