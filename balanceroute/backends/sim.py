"""The simulator backend: ``backend=sim`` runs the DP+EP step simulator (ALGORITHMS.md section 3).

Sections read: ``model`` (``name`` = a preset of :mod:`balanceroute.sim.presets`, plus optional coefficient
overrides, null = the preset's value), ``parallel.dp`` (the number of workers) and ``backend`` (every key but
``name`` is a :class:`~balanceroute.sim.SimConfig` field).
"""
from __future__ import annotations

import dataclasses

from balanceroute.backends import RunOutput, RunSpec
from balanceroute.config import config_key
from balanceroute.config.backends import SimBackendConfig
from balanceroute.config.schema import ModelConfig, ParallelConfig
from balanceroute.sim import SimConfig, simulate
from balanceroute.sim.presets import ModelPreset, get_preset


def model_preset(model: ModelConfig) -> ModelPreset:
    """The preset named by ``model.name`` with the non-null coefficient overrides of ``model`` applied.

    Keys that are not preset fields (``hf_repo``, settings for live backends) are for other backends.
    """
    with config_key("model.name"):
        preset = get_preset(model.name)
    fields = {f.name for f in dataclasses.fields(ModelPreset)} - {"name"}
    overrides = {k: v for k, v in dataclasses.asdict(model).items() if k in fields and v is not None}
    with config_key("model"):
        return preset.with_overrides(**overrides) if overrides else preset


class SimBackend:
    """Builds the :class:`SimConfig` up front (so bad values fail before any work) and simulates on ``run``."""

    def __init__(self, backend: SimBackendConfig, *, model: ModelConfig, parallel: ParallelConfig) -> None:
        params = dataclasses.asdict(backend)
        params.pop("name")
        preset = model_preset(model)
        with config_key("backend"):
            self.config = SimConfig(num_workers=parallel.dp, model=preset, **params)

    def run(self, spec: RunSpec) -> RunOutput:
        config = dataclasses.replace(self.config, seed=spec.seed)
        result = simulate(spec.workload, spec.policy, config, progress=spec.progress)
        return RunOutput(summary=result.summary, requests=result.requests, timeline=result.timeline,
                         steps=result.steps)
