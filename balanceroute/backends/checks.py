"""Checks of the backend settings the live backends share, each raising a :class:`ConfigError` that names the key.

Types are the schemas' business (:mod:`balanceroute.config.backends`); these check ranges and combinations.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from balanceroute.config import ConfigError
from balanceroute.config.backends import BenchConfig, StartedServerConfig
from balanceroute.policies.checks import int_problem, number_problem
from balanceroute.policies.dispatch import DISPATCH_MODES


def check_positive(key: str, value: Any, *, integer: bool = False, allow_none: bool = False) -> None:
    """ConfigError naming ``key`` unless ``value`` is a finite number > 0 (an integer >= 1 with ``integer``; None
    allowed with ``allow_none``)."""
    if value is None and allow_none:
        return
    also = " or null" if allow_none else ""
    problem = int_problem(value, 1, also=also) if integer else number_problem(value, 0, low_open=True, also=also)
    if problem:
        raise ConfigError(f"{key}: {problem}")


def check_dispatch(mode: str, backend: str, supported: Sequence[str], why: str = "") -> str:
    """``mode`` (``backend.dispatch``) if it is a dispatch mode ``backend`` can honour; else a ConfigError naming
    the value (a study arm that needs the pool must not silently run another way on a backend without one)."""
    if mode not in DISPATCH_MODES:
        raise ConfigError(f"backend.dispatch: {mode!r} is not a dispatch mode; valid: {', '.join(DISPATCH_MODES)}")
    if mode not in supported:
        raise ConfigError(f"backend.dispatch: {mode!r} is not available with backend={backend}{why}; it supports "
                          f"{', '.join(supported)} (pool dispatch runs on backend=sim and backend=proxy)")
    return mode


#: ``backend.bench`` keys that are not :func:`balanceroute.bench.benchmark` arguments.
_NOT_BENCH_ARGUMENTS = ("endpoint", "max_failed_fraction", "tokenizer")


def check_bench(bench: BenchConfig) -> None:
    """``backend.bench`` of a live backend: a stall timeout > 0 (or null) and a failure fraction in [0, 1]."""
    check_positive("backend.bench.stall_timeout_s", bench.stall_timeout_s, allow_none=True)
    problem = number_problem(bench.max_failed_fraction, 0, 1)
    if problem:
        raise ConfigError(f"backend.bench.max_failed_fraction: {problem}")


def bench_options(bench: BenchConfig) -> tuple[str, dict[str, Any]]:
    """The endpoint path and the :func:`balanceroute.bench.benchmark` keyword arguments of ``backend.bench``."""
    options = dataclasses.asdict(bench)
    return bench.endpoint, {k: v for k, v in options.items() if k not in _NOT_BENCH_ARGUMENTS}


def check_started_server(server: StartedServerConfig, key: str) -> None:
    """The settings of a server a run starts and stops: ``port`` (null: a free one), ``ready_timeout_s``,
    ``stop_timeout_s``."""
    check_positive(f"{key}.port", server.port, integer=True, allow_none=True)
    check_positive(f"{key}.ready_timeout_s", server.ready_timeout_s)
    check_positive(f"{key}.stop_timeout_s", server.stop_timeout_s)
