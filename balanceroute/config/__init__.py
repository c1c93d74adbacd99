"""The run configuration: schemas of its sections, registered with Hydra, and the typed view a run works from.

conf/ holds values; :mod:`balanceroute.config.schema` and :mod:`balanceroute.config.backends` hold the shape.
Whatever composes conf/ (run.py, tests, ``balanceroute plan``) calls :func:`register_schemas` first, since the
group files build on the schemas (``- /schema/model@_here_``).
"""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from balanceroute.config.errors import ConfigError, config_key
from balanceroute.config.typed import RunConfig, typed_config

__all__ = ["ConfigError", "RunConfig", "config_key", "register_schemas", "typed_config"]


def register_schemas() -> None:
    """Put the schemas into Hydra's ConfigStore under ``schema/`` (idempotent), where conf/ files name them."""
    from balanceroute.config.backends import BACKENDS
    from balanceroute.config.schema import LOGGERS, WORKLOADS, ModelConfig, ParallelConfig, RunSchema

    store = ConfigStore.instance()
    store.store(group="schema", name="run", node=RunSchema)
    store.store(group="schema", name="model", node=ModelConfig)
    store.store(group="schema", name="parallel", node=ParallelConfig)
    for target, schema in WORKLOADS.items():
        store.store(group="schema/workload", name=target.rsplit(".", 1)[1], node=schema)
    for name, schema in BACKENDS.items():
        store.store(group="schema/backend", name=name, node=schema)
    for name, schema in LOGGERS.items():
        store.store(group="schema/logger", name=name, node=schema)
