"""The value checks every layer shares: integers in a range, finite numbers in an interval, one of a set.

Each returns what is wrong with a value, worded the same everywhere ("must be an integer >= 1, got 0"), or None
when it is fine (``also`` words what else is valid or what the value means: " or null", " (tokens)"); callers raise it prefixed with what they checked (a policy parameter, a config key, a CLI flag)
as the error type of their layer. They live in the policies package because it is the bottom layer, importing
nothing above it, so the policies can use them too.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def is_int(value: Any) -> bool:
    """An integer, not a bool (YAML's ``true`` is an int to Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number that is not a bool or NaN (infinities are real)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def int_problem(value: Any, minimum: int, maximum: int | None = None, *, also: str = "") -> str | None:
    """Why ``value`` is not an integer in [minimum, maximum] (no upper bound when None), or None."""
    if is_int(value) and value >= minimum and (maximum is None or value <= maximum):
        return None
    bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    return f"must be an integer {bound}{also}, got {value!r}"


def number_problem(value: Any, low: float, high: float = math.inf, *, low_open: bool = False,
                   high_open: bool = False, allow_inf: bool = False, also: str = "") -> str | None:
    """Why ``value`` is not a number in the interval from ``low`` to ``high`` (each end open where told), finite
    unless ``allow_inf``, or None."""
    ok = is_real(value) and (allow_inf or math.isfinite(value))
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if ok:
        return None
    if high == math.inf:
        bound = f"{'>' if low_open else '>='} {low}"
    else:
        bound = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return f"must be a number {bound}{' (or inf)' if allow_inf else ''}{also}, got {value!r}"


def bool_problem(value: Any) -> str | None:
    """Why ``value`` is not true or false (0 and 1 are not), or None."""
    return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


def choice_problem(value: Any, choices: Sequence[str]) -> str | None:
    """Why ``value`` is not one of ``choices``, or None."""
    return None if value in choices else f"must be one of {', '.join(choices)}; got {value!r}"
