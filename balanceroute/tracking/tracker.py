"""What a run is mirrored to besides its folder: the :class:`Tracker` interface and the tracker that does nothing.

Its own module so that the package (which picks a tracker, :func:`balanceroute.tracking.make_tracker`) and the
sinks (which fall back to :class:`NullTracker` when they cannot start, :mod:`.wandb_sink`) both import it and
neither imports the other.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd


class Tracker(Protocol):
    """Where a run is mirrored besides its folder. Every method is safe to call whatever happened before."""

    def log_load(self, time_s: float, kv_load: np.ndarray, running: np.ndarray | None = None,
                 waiting: np.ndarray | None = None) -> None:
        """Per-worker load at one moment (KV tokens; optionally running and waiting requests)."""

    def log_timeline(self, timeline: pd.DataFrame) -> None:
        """A whole load timeline (``timeline.parquet`` columns), thinned to the tracker's resolution."""

    def log_run(self, result: Mapping[str, Any], requests: pd.DataFrame | None, run_dir: Path) -> None:
        """The finished run: its summary (result.json), a sample of its requests and its result files."""

    def finish(self, *, failed: bool = False) -> None:
        """Close the tracked run (marked failed if the run raised)."""


class NullTracker:
    """``logger=none``: the run folder is the only record."""

    def log_load(self, time_s: float, kv_load: np.ndarray, running: np.ndarray | None = None,
                 waiting: np.ndarray | None = None) -> None:
        pass

    def log_timeline(self, timeline: pd.DataFrame) -> None:
        pass

    def log_run(self, result: Mapping[str, Any], requests: pd.DataFrame | None, run_dir: Path) -> None:
        pass

    def finish(self, *, failed: bool = False) -> None:
        pass
