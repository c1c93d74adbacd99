"""Backends: what executes a run (the simulator, an emulated vLLM fleet in real time, real vLLM; the proxy).

A backend is a class built from the typed sections it reads (its ``backend`` section, ``model``, ``parallel``;
:mod:`balanceroute.config`). Its constructor only checks values a schema's types cannot (raising
:class:`~balanceroute.config.ConfigError` that names the key) and does no work, so a bad value stops a run before
anything starts; :meth:`Backend.run` does the work. Backends are listed by name with the module that defines
them and imported only when chosen, so a simulator run never imports vLLM.

Adding one: write the class, add ``name: "package.module:Class"`` to :data:`BACKENDS`, its section's schema to
:data:`balanceroute.config.backends.BACKENDS` and a ``conf/backend/<name>.yaml`` that names the schema.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from balanceroute.config import RunConfig
from balanceroute.config.schema import ModelConfig, ParallelConfig
from balanceroute.policies import Policy
from balanceroute.workload import Workload

#: Backend name (``backend.name`` in the config) -> ``"module:Class"``.
BACKENDS: dict[str, str] = {
    "sim": "balanceroute.backends.sim:SimBackend",
    "vllm": "balanceroute.backends.vllm:VllmBackend",
    "emulated": "balanceroute.backends.emulated:EmulatedBackend",
    "proxy": "balanceroute.backends.proxy:ProxyBackend",
}


@dataclass(frozen=True)
class RunSpec:
    """One validated run, handed to :meth:`Backend.run`.

    ``router`` is the router's name and parameters, for backends that build the policy in another process
    (the vLLM plugin); ``policy`` is the same policy built here.
    """

    workload: Workload
    policy: Policy
    router: dict[str, Any]
    seed: int
    run_dir: Path
    progress: bool = False


@dataclass(frozen=True)
class RunOutput:
    """What a backend measured: the metrics summary (:func:`balanceroute.metrics.summarize` keys), the
    per-request records and, where the backend can see them, the per-worker load timeline and the per-step trace
    of the steady window (:mod:`balanceroute.steady`; else None)."""

    summary: dict[str, Any]
    requests: pd.DataFrame
    timeline: pd.DataFrame | None
    steps: pd.DataFrame | None = None


class Backend(Protocol):
    def __init__(self, backend: Any, *, model: ModelConfig, parallel: ParallelConfig) -> None: ...

    def run(self, spec: RunSpec) -> RunOutput: ...


def make_backend(run: RunConfig) -> Backend:
    """The backend named by ``run.backend.name``, constructed (and so validated) from the sections it reads."""
    module, _, attr = BACKENDS[run.backend.name].partition(":")
    return getattr(importlib.import_module(module), attr)(run.backend, model=run.model, parallel=run.parallel)
