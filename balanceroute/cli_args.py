"""Value types for the subcommands' argparse options, so that every command rejects a bad value the same way.

Each is an argparse ``type=``: it returns the parsed value or raises ``ArgumentTypeError``, which argparse turns
into one line naming the option (``argument --ranks: must be an integer >= 1, got '0'``) and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer >= ``minimum`` (and <= ``maximum`` when given)."""
    valid = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {valid}, got {text!r}")
        return value
    return parse


def positive_number(*, finite: bool = True) -> Callable[[str], float]:
    """A number > 0; ``inf`` too unless ``finite``."""
    valid = "a number > 0" if finite else "a number > 0 or inf"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not value > 0 or (finite and math.isinf(value)):
            raise argparse.ArgumentTypeError(f"must be {valid}, got {text!r}")
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
