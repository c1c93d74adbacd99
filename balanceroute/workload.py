"""Request streams: what arrives, when, and how long it is.

A :class:`Workload` is columnar (numpy arrays, one row per request, sorted by arrival) so that a million
synthetic requests cost a few arrays rather than a million objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    """Requests in arrival order.

    - ``arrival_s``: arrival time in seconds from the start of the run (float64, non-decreasing).
    - ``prompt_len``: prompt tokens (int64, >= 1).
    - ``output_len``: output tokens to generate (int64, >= 1).
    - ``prompt_hash``: integer key of the prompt text, 0 where unknown (int64); exact-match predictors use it.
    - ``prompts``: prompt texts for live backends, or None (the simulator needs only lengths).
    - ``name``: where the workload came from (for result files).
    """

    arrival_s: np.ndarray
    prompt_len: np.ndarray
    output_len: np.ndarray
    prompt_hash: np.ndarray
    prompts: list[str] | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.arrival_s)
