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
#: benchmark` arguments, ``endpoint`` the path sent to).
BENCH_KEYS = ("endpoint", "stream", "ignore_eos", "max_concurrency", "warmup", "timeout_s")


def check_started_server(section: Mapping[str, Any], key: str) -> None:
    """The settings of a server a run starts and stops: ``port`` (null: a free one), ``ready_timeout_s``,
    ``stop_timeout_s``."""
    check_positive(f"{key}.port", section["port"], integer=True, allow_none=True)
    check_positive(f"{key}.ready_timeout_s", section["ready_timeout_s"])
    check_positive(f"{key}.stop_timeout_s", section["stop_timeout_s"])
