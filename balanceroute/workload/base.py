"""The :class:`Workload` every source returns, its error type, and the argument checks all sources share.

Sources validate ``num_requests``/caps and draw their random streams the same way, so those checks live here
with the type they produce rather than being repeated per loader.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from balanceroute.policies.checks import int_problem

# independent random streams derived from one seed (see random_stream)
ARRIVALS_STREAM, LENGTHS_STREAM, SAMPLE_STREAM = 0, 1, 2


class WorkloadError(ValueError):
    """A workload source or parameter is invalid; the message names the file, the row and what is valid."""


@dataclass(frozen=True)
class Workload:
    """Requests in arrival order.

    - ``arrival_s``: arrival time in seconds from the start of the run (float64, non-decreasing).
    - ``prompt_len``: prompt tokens (int64, >= 1).
    - ``output_len``: output tokens to generate (int64, >= 1).
    - ``prompt_hash``: integer key of the prompt text, 0 where unknown (int64); exact-match predictors use it.
    - ``prompts``: prompt texts for live backends, or None (the simulator needs only lengths).
    - ``name``: where the workload came from (for result files).

    Construction converts the arrays to these dtypes and checks the invariants above, so every backend can
    rely on them. Indexing (``wl[:100]``, ``wl[mask]``, ``wl[idx]``) returns a sub-workload; arrival times are
    kept as they are (not shifted to start at zero).
    """

    arrival_s: np.ndarray
    prompt_len: np.ndarray
    output_len: np.ndarray
    prompt_hash: np.ndarray
    prompts: list[str] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        cols = {"arrival_s": np.float64, "prompt_len": np.int64, "output_len": np.int64, "prompt_hash": np.int64}
        for field, dtype in cols.items():
            arr = np.asarray(getattr(self, field))
            if arr.ndim != 1:
                raise WorkloadError(f"Workload.{field} must be 1-D, got shape {arr.shape}")
            object.__setattr__(self, field, arr.astype(dtype, copy=False))
        n = len(self.arrival_s)
        lengths = {f: len(getattr(self, f)) for f in cols}
        if self.prompts is not None:
            lengths["prompts"] = len(self.prompts)
        if set(lengths.values()) != {n}:
            raise WorkloadError(f"Workload columns must have equal lengths, got {lengths}")
        for field in ("prompt_len", "output_len"):
            bad = np.flatnonzero(getattr(self, field) < 1)
            if bad.size:
                raise WorkloadError(f"Workload.{field} must be >= 1; request {int(bad[0])} has "
                                    f"{int(getattr(self, field)[bad[0]])}")
        if n and not np.all(np.isfinite(self.arrival_s)):
            raise WorkloadError("Workload.arrival_s must be finite")
        if n > 1 and np.any(np.diff(self.arrival_s) < 0):
            i = int(np.flatnonzero(np.diff(self.arrival_s) < 0)[0]) + 1
            raise WorkloadError(f"Workload.arrival_s must be non-decreasing; request {i} arrives at "
                                f"{self.arrival_s[i]} after {self.arrival_s[i - 1]}")

    def __len__(self) -> int:
        return len(self.arrival_s)

    def __getitem__(self, index: slice | np.ndarray | Sequence[int]) -> Workload:
        """Sub-workload of the selected requests (a slice, boolean mask or increasing index array)."""
        if isinstance(index, (int, np.integer)):
            raise TypeError("Workload[i] with a single integer is not supported; use wl[i:i+1]")
        sel = np.arange(len(self))[index]
        prompts = None if self.prompts is None else [self.prompts[i] for i in sel]
        return Workload(self.arrival_s[sel], self.prompt_len[sel], self.output_len[sel], self.prompt_hash[sel],
                        prompts, self.name)

    def head(self, n: int) -> Workload:
        """The first ``n`` requests."""
        return self[:n]

    def with_arrivals(self, arrival_s: np.ndarray) -> Workload:
        """The same requests with new arrival times (one per request, non-decreasing)."""
        return replace(self, arrival_s=arrival_s)


def random_stream(seed: int, stream: int) -> np.random.Generator:
    """The random stream ``stream`` of ``seed``: separate streams keep lengths fixed when only the rate changes."""
    problem = int_problem(seed, 0)
    if problem:
        raise WorkloadError(f"seed {problem}")
    return np.random.default_rng([stream, int(seed)])


def check_count(name: str, value: int | None, *, minimum: int) -> int | None:
    """``value`` as an int (None passes through), or a :class:`WorkloadError` naming ``name``."""
    if value is None:
        return None
    problem = int_problem(value, minimum, also=" or None")
    if problem:
        raise WorkloadError(f"{name} {problem}")
    return int(value)


def take_first(n_avail: int, num_requests: int | None, source: str) -> int:
    """How many of ``n_avail`` requests to keep: all for None; asking for more than there are is an error."""
    if num_requests is None:
        return n_avail
    if num_requests > n_avail:
        raise WorkloadError(f"{source}: num_requests={num_requests} but only {n_avail} requests are available "
                            f"(after length caps); valid: 1..{n_avail} or None for all")
    return num_requests
