"""Backends: what executes a run (the simulator, an emulated vLLM fleet in real time, real vLLM; the proxy).

A backend is a class built from the whole configuration. Its constructor only checks its own config sections
(raising :class:`ConfigError` that names the offending key) and does no work, so a bad value stops a run before
anything starts; :meth:`Backend.run` does the work. Backends are listed by name with the module that defines
them and imported only when chosen, so a simulator run never imports vLLM.

Adding one: write the class, add ``name: "package.module:Class"`` to :data:`BACKENDS` and a
``conf/backend/<name>.yaml`` whose ``name`` key is that name.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from balanceroute.policies import Policy
from balanceroute.workload import Workload

#: Backend name (``backend.name`` in the config) -> ``"module:Class"``.
BACKENDS: dict[str, str] = {
    "sim": "balanceroute.backends.sim:SimBackend",
    "vllm": "balanceroute.backends.vllm:VllmBackend",
    "emulated": "balanceroute.backends.emulated:EmulatedBackend",
    "proxy": "balanceroute.backends.proxy:ProxyBackend",
}


class ConfigError(ValueError):
    """A configuration value a user can fix; the message starts with the config key, e.g. ``rate: ...``."""


@contextmanager
def config_key(key: str) -> Iterator[None]:
    """Re-raise a ValueError/TypeError from building an object as a :class:`ConfigError` naming ``key``.

    The components (policies, presets, workload loaders) already say what is wrong and what is valid; this adds
    which part of the configuration to change. Hydra's InstantiationException is unwrapped to its cause.
    """
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError, FileNotFoundError, InstantiationException) as exc:
        cause = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        if not isinstance(cause, (ValueError, TypeError, FileNotFoundError)):
            raise
        raise ConfigError(f"{key}: {cause}") from exc


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
    def __init__(self, cfg: DictConfig) -> None: ...

    def run(self, spec: RunSpec) -> RunOutput: ...


def make_backend(cfg: DictConfig) -> Backend:
    """The backend named by ``cfg.backend.name``, constructed (and so validated) from ``cfg``."""
    name = cfg.backend.name
    if name not in BACKENDS:
        raise ConfigError(f"backend.name: unknown backend {name!r}; valid backends: {', '.join(sorted(BACKENDS))}")
    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)(cfg)
