"""Value types for the subcommands' argparse options, so that every command rejects a bad value the same way.

Each is an argparse ``type=``: it returns the parsed value or raises ``ArgumentTypeError``, which argparse turns
into one line naming the option (``argument --ranks: must be an integer >= 1, got '0'``) and exit status 2.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from balanceroute.policies.checks import int_problem, number_problem


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer >= ``minimum`` (and <= ``maximum`` when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = text
        if int_problem(value, minimum, maximum):  # worded with the text as given
            raise argparse.ArgumentTypeError(int_problem(text, minimum, maximum))
        return value
    return parse


def positive_number(*, finite: bool = True) -> Callable[[str], float]:
    """A number > 0; ``inf`` too unless ``finite``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = text
        if number_problem(value, 0, low_open=True, allow_inf=not finite):  # worded with the text as given
            raise argparse.ArgumentTypeError(number_problem(text, 0, low_open=True, allow_inf=not finite))
        return value
    return parse


def key_value(text: str) -> tuple[str, Any]:
    """``K=V`` as ``(K, V)``, V read as JSON where it is JSON (``3``, ``0.5``, ``true``, ``[1, 2]``) and kept as
    a string otherwise (``predictor=oracle``). For repeatable options: ``action="append"``, then ``dict(...)``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must look like KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value
