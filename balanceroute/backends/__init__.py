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
import math
from collections.abc import Iterator, Mapping, Sequence
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


def check_positive(key: str, value: Any, *, integer: bool = False, allow_none: bool = False) -> None:
    """ConfigError naming ``key`` unless ``value`` is a finite number > 0 (an int with ``integer``; None allowed
    with ``allow_none``)."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
    if not ok or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key}: must be {kind} > 0{' or null' if allow_none else ''}, got {value!r}")


def check_keys(section: Mapping[str, Any], valid: Sequence[str], key: str) -> None:
    """ConfigError naming ``key`` if ``section`` has keys outside ``valid`` (a typo would otherwise be ignored)."""
    unknown = sorted(set(section) - set(valid))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


#: ``backend.bench`` keys of the live backends: the benchmark client's settings (:func:`balanceroute.bench.
#: benchmark` arguments, ``endpoint`` the path sent to).
BENCH_KEYS = ("endpoint", "stream", "ignore_eos", "max_concurrency", "warmup", "timeout_s")


def check_started_server(section: Mapping[str, Any], key: str) -> None:
    """The settings of a server a run starts and stops: ``port`` (null: a free one), ``ready_timeout_s``,
    ``stop_timeout_s``."""
    check_positive(f"{key}.port", section["port"], integer=True, allow_none=True)
    check_positive(f"{key}.ready_timeout_s", section["ready_timeout_s"])
    check_positive(f"{key}.stop_timeout_s", section["stop_timeout_s"])


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
    per-request records and, where the backend can see it, the per-worker load timeline (else None)."""

    summary: dict[str, Any]
    requests: pd.DataFrame
    timeline: pd.DataFrame | None


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
