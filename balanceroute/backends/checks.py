"""Checks of the config sections the backends share, each raising a :class:`ConfigError` that names the key."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from balanceroute.backends import ConfigError


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


#: How requests reach the workers (``backend.dispatch``): routed when they arrive, or held in a central pool
#: until a worker has a free slot (ALGORITHMS.md section 3).
DISPATCH_MODES = ("on_arrival", "pool")


def check_dispatch(section: Mapping[str, Any], backend: str, supported: Sequence[str], why: str = "") -> str:
    """``section["dispatch"]`` if it is a dispatch mode ``backend`` can honour; else a ConfigError naming the
    value (a study arm that needs the pool must not silently run another way on a backend without one)."""
    mode = section.get("dispatch")
    if mode not in DISPATCH_MODES:
        raise ConfigError(f"backend.dispatch: {mode!r} is not a dispatch mode; valid: {', '.join(DISPATCH_MODES)}")
    if mode not in supported:
        raise ConfigError(f"backend.dispatch: {mode!r} is not available with backend={backend}{why}; it supports "
                          f"{', '.join(supported)} (pool dispatch runs on backend=sim and backend=proxy)")
    return mode


#: ``backend.bench`` keys of the live backends: the benchmark client's settings (:func:`balanceroute.bench.
#: benchmark` arguments, ``endpoint`` the path sent to) and ``max_failed_fraction``, the share of failed requests
#: above which the run ends non-zero (:func:`balanceroute.experiment.check_live_outcome`).
BENCH_KEYS = ("endpoint", "stream", "ignore_eos", "max_concurrency", "warmup", "timeout_s", "stall_timeout_s",
              "max_failed_fraction")
#: ``backend.bench`` keys that are not benchmark arguments.
_NOT_BENCH_ARGUMENTS = ("endpoint", "max_failed_fraction", "tokenizer")


def check_bench(section: Mapping[str, Any], valid: Sequence[str] = BENCH_KEYS) -> None:
    """The ``backend.bench`` section of a live backend: known keys, a stall timeout > 0 (or null) and a failure
    fraction in [0, 1]."""
    check_keys(section, valid, "backend.bench")
    check_positive("backend.bench.stall_timeout_s", section["stall_timeout_s"], allow_none=True)
    fraction = section["max_failed_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConfigError(f"backend.bench.max_failed_fraction: must be a fraction in [0, 1], got {fraction!r}")


def bench_options(section: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The endpoint path and the :func:`balanceroute.bench.benchmark` keyword arguments of ``backend.bench``."""
    return section["endpoint"], {k: v for k, v in section.items() if k not in _NOT_BENCH_ARGUMENTS}


def check_started_server(section: Mapping[str, Any], key: str) -> None:
    """The settings of a server a run starts and stops: ``port`` (null: a free one), ``ready_timeout_s``,
    ``stop_timeout_s``."""
    check_positive(f"{key}.port", section["port"], integer=True, allow_none=True)
    check_positive(f"{key}.ready_timeout_s", section["ready_timeout_s"])
    check_positive(f"{key}.stop_timeout_s", section["stop_timeout_s"])
