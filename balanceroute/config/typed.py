"""The composed configuration as typed sections, checked against the schemas before a run starts.

Hydra checks a file's keys and an override's type against the schemas while composing, but lets a key added with
``+`` (``+model.aa=1``) through; :func:`typed_config` rejects it, resolves every interpolation and returns the
sections as dataclass instances, so the code after it reads ``run.backend.bench.timeout_s`` rather than digging
strings out of a DictConfig. Errors are :class:`~balanceroute.config.errors.ConfigError` lines that start with
the dotted key.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from balanceroute.config.backends import (
    BACKENDS,
    EmulatedBackendConfig,
    ProxyBackendConfig,
    SimBackendConfig,
    VllmBackendConfig,
)
from balanceroute.config.errors import ConfigError
from balanceroute.config.schema import (
    LOGGERS,
    WORKLOADS,
    AzureTraceWorkloadConfig,
    ModelConfig,
    NoLoggerConfig,
    ParallelConfig,
    RunSchema,
    ShareGPTWorkloadConfig,
    SyntheticWorkloadConfig,
    WandbLoggerConfig,
)
from balanceroute.steady import SteadyWindow


@dataclass(frozen=True)
class RunConfig:
    """One run's configuration, typed. ``router`` is the router's name and parameters as written (a policy
    checks its own parameters when it is built)."""

    name: str
    rate: float | None
    seed: int
    resume: bool
    label: str | None
    steady: SteadyWindow
    parallel: ParallelConfig
    model: ModelConfig
    workload: SyntheticWorkloadConfig | AzureTraceWorkloadConfig | ShareGPTWorkloadConfig
    backend: SimBackendConfig | EmulatedBackendConfig | ProxyBackendConfig | VllmBackendConfig
    logger: NoLoggerConfig | WandbLoggerConfig
    router: dict[str, Any]


def typed_config(cfg: DictConfig) -> RunConfig:
    """``cfg`` checked against the schemas and resolved into a :class:`RunConfig`."""
    backend, logger, workload = cfg.backend.get("name"), cfg.logger.get("name"), cfg.workload.get("_target_")
    if backend not in BACKENDS:
        raise ConfigError(f"backend.name: unknown backend {backend!r}; valid backends: {', '.join(sorted(BACKENDS))}")
    if workload not in WORKLOADS:
        raise ConfigError(f"workload._target_: {workload!r} is not a workload loader with a schema; valid: "
                          f"{', '.join(WORKLOADS)} (a new loader adds its schema to balanceroute/config/schema.py)")
    if logger not in LOGGERS:
        raise ConfigError(f"logger.name: unknown logger {logger!r}; valid loggers: {', '.join(sorted(LOGGERS))}")
    top = [f.name for f in dataclasses.fields(RunSchema)]
    unknown = [key for key in cfg if key not in top and key != "hydra"]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; the configuration has {', '.join(top)}")
    scalars = {key: _value(cfg, key) for key in ("name", "rate", "seed", "resume", "label")}
    return RunConfig(
        **scalars,
        steady=section(cfg.steady, SteadyWindow, "steady"),
        parallel=section(cfg.parallel, ParallelConfig, "parallel"),
        model=section(cfg.model, ModelConfig, "model"),
        workload=section(cfg.workload, WORKLOADS[workload], "workload"),
        backend=section(cfg.backend, BACKENDS[backend], "backend"),
        logger=section(cfg.logger, LOGGERS[logger], "logger"),
        router=_plain(cfg.router, "router"),
    )


def section(node: DictConfig, schema: type, key: str) -> Any:
    """``node`` (a config section, interpolations resolved against its config) as an instance of ``schema``."""
    values = _plain(node, key)
    reject_unknown_keys(values, schema, key)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{_join(key, exc.full_key)}: {_first_line(exc.msg)}") from None
    except (ValueError, TypeError) as exc:  # a schema's own check (e.g. SteadyWindow's)
        raise ConfigError(f"{key}: {exc}") from None


def reject_unknown_keys(values: Any, schema: type, key: str) -> None:
    """ConfigError naming the first key of ``values`` (nested sections included) that ``schema`` does not have."""
    if not isinstance(values, dict) or not dataclasses.is_dataclass(schema):
        return
    hints = typing.get_type_hints(schema)
    fields = [f.name for f in dataclasses.fields(schema)]
    for name, value in values.items():
        if name not in hints:
            raise ConfigError(f"{key}.{name}: unknown key; {key} has {', '.join(fields)}")
        nested = [t for t in (hints[name], *typing.get_args(hints[name])) if dataclasses.is_dataclass(t)]
        if nested:
            reject_unknown_keys(value, nested[0], f"{key}.{name}")


def _plain(node: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{_join(key, exc.full_key)}: {_first_line(exc.msg)}") from None


def _value(cfg: DictConfig, key: str) -> Any:
    try:
        return cfg[key]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{key}: {_first_line(exc.msg)}") from None


def _join(key: str, sub: str | None) -> str:
    return f"{key}.{sub}" if sub and not sub.startswith(f"{key}.") and sub != key else (sub or key)


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0]
