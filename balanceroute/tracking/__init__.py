"""Result sinks: a run's files are always written locally; a tracker (W&B) gets a copy when ``logger`` enables one.

The local files (:mod:`balanceroute.results`) are the record every analysis reads. A tracker is a convenience on
top, so it must never cost a result: :func:`record_run` writes the files first and only then hands the run to the
tracker, and a tracker that cannot start or loses its connection warns and carries on as a no-op.

A tracker is started *before* a run starts (:func:`make_tracker`), so a live backend can log load over time while it
runs (:meth:`Tracker.log_load`); a backend that records its timeline as a whole hands it over afterwards
(:meth:`Tracker.log_timeline`). Both write the same series, so simulated and live runs chart alike.

    tracker = make_tracker(logger_cfg, run_dir=run_dir, config=config, name="rate=3,router=jsq")
    with finishing(tracker):
        ...                                          # the run; a live backend may call tracker.log_load(...)
        record_run(run_dir, result, requests, timeline, tracker)

Trackers by ``logger.name``: ``none`` (:class:`NullTracker`), ``wandb`` (:mod:`balanceroute.tracking.wandb_sink`).
Everything a tracker receives passes :func:`~balanceroute.tracking.secrets.redact` first.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from balanceroute.results import jsonable, write_run_files
from balanceroute.tracking.secrets import redact
from balanceroute.tracking.tracker import NullTracker, Tracker
from balanceroute.tracking.wandb_sink import WandbOptions, start_wandb

__all__ = ["TRACKERS", "NullTracker", "Tracker", "finishing", "make_tracker", "record_run"]

#: ``logger.name`` values (the wandb package itself is imported only when ``wandb`` is chosen).
TRACKERS = ("none", "wandb")


def make_tracker(logger: Mapping[str, Any], *, run_dir: str | os.PathLike, config: Mapping[str, Any],
                 name: str) -> Tracker:
    """The tracker ``logger`` (the ``logger`` config group, as a mapping) asks for, started.

    ``config`` is the run's configuration as the tracker should record it (result.json's ``config``), ``name``
    the run's display name. Raises ValueError for an unknown ``logger.name`` or a bad option of the chosen
    tracker (before anything starts); a tracker that fails to start (no network, no credentials) logs a warning
    and a :class:`NullTracker` is returned instead.
    """
    kind = logger.get("name")
    if kind == "none":
        return NullTracker()
    if kind == "wandb":
        return start_wandb(WandbOptions.from_config(logger), run_dir=Path(run_dir), config=redact(jsonable(config)),
                           name=name)
    raise ValueError(f"unknown logger {kind!r}; valid loggers: {', '.join(TRACKERS)}")


@contextmanager
def finishing(tracker: Tracker) -> Iterator[Tracker]:
    """Finish ``tracker`` when the block ends, marking the tracked run failed if the block raised."""
    try:
        yield tracker
    except BaseException:
        tracker.finish(failed=True)
        raise
    tracker.finish()


def record_run(run_dir: str | os.PathLike, result: Mapping[str, Any], requests: pd.DataFrame | None = None,
               timeline: pd.DataFrame | None = None, tracker: Tracker | None = None) -> dict[str, Any]:
    """Write the run's files (result.json last; :func:`balanceroute.results.write_run_files`), then mirror them
    to ``tracker``. Secrets in ``result`` (e.g. a token a config read from the environment) are redacted in both.
    Returns the result as written."""
    folder = Path(run_dir)
    clean = redact(jsonable(result))
    write_run_files(folder, clean, requests, timeline)
    if tracker is not None:
        if timeline is not None:
            tracker.log_timeline(timeline)
        tracker.log_run(clean, requests, folder)
    return clean
