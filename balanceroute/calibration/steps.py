"""Engine steps of live runs as the step model sees them: one row per lock-step, its period and per-rank load.

Reads the step logs the vLLM plugin writes (``<run>/steps/steps_dp<rank>.jsonl``,
:mod:`balanceroute.vllm_plugin.step_log`). A rank's step *period* is the time from its start to the start of the
rank's next step, which is what a running request waits between two tokens (the simulator's T), input handling
and DP synchronisation included. A period counts only when the next step followed at once:

- with DP, the next line of the same wave with the next step counter (vLLM's ranks step together until all
  of them are idle, then a new wave starts);
- without DP (one engine, no step counter), the step left work (running or waiting requests).

The ranks' lines join on (wave, step counter); a step is kept when every rank has it with a valid period, and its
period is the mean of the ranks' (they differ by jitter only: the EP collectives hold them together).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from balanceroute.vllm_plugin.step_log import ENGINE, STEP_LOG_DIR


class StepLogError(ValueError):
    """A run folder without usable step logs."""


@dataclass(frozen=True)
class StepTable:
    """Lock-steps of one or more runs: ``period`` (s, per step), ``kv`` and ``prefill`` (tokens, steps x ranks),
    and the engines' limits as vLLM sized them (``engines``: one header per rank and run)."""

    period: np.ndarray
    kv: np.ndarray
    prefill: np.ndarray
    engines: list[dict]

    @property
    def num_steps(self) -> int:
        return len(self.period)

    @property
    def num_ranks(self) -> int:
        return self.kv.shape[1]

    @staticmethod
    def concat(tables: list[StepTable]) -> StepTable:
        common_num_ranks(tables)
        return StepTable(np.concatenate([t.period for t in tables]), np.concatenate([t.kv for t in tables]),
                         np.concatenate([t.prefill for t in tables]), [e for t in tables for e in t.engines])


def common_num_ranks(tables: list) -> int:
    """The DP size all of ``tables`` (of runs) share (StepLogError when they differ: other deployments)."""
    ranks = {t.num_ranks for t in tables}
    if len(ranks) != 1:
        raise StepLogError(f"the runs have different numbers of DP ranks ({sorted(ranks)}); calibrate runs of one "
                           "deployment at a time")
    return ranks.pop()


def _read(path: Path) -> tuple[list[dict], pd.DataFrame]:
    """The engine headers and the step lines of one log (a last line cut off by a killed engine is skipped)."""
    headers, steps = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            record = json.loads(line)
            (headers if record["event"] == ENGINE else steps).append(record)
    if not steps:
        return headers, pd.DataFrame(columns=["wave", "k", "t", "kv", "prefill", "running", "waiting"])
    frame = pd.DataFrame(steps)
    return headers, frame.drop_duplicates(["wave", "k"], keep="first").sort_values("t", kind="stable")


def _periods(frame: pd.DataFrame, lock_step: bool) -> pd.Series:
    """Each step's period, NaN where the next step did not follow at once (see the module docstring)."""
    nxt = frame.shift(-1)
    gap = nxt["t"] - frame["t"]
    if lock_step:
        follows = (nxt["wave"] == frame["wave"]) & (nxt["k"] == frame["k"] + 1)
    else:
        follows = (frame["running"] + frame["waiting"]) > 0
    return gap.where(follows)


def read_steps(run_dir: str | Path) -> StepTable:
    """The lock-steps of one live run (StepLogError naming the folder when it has no step logs)."""
    folder = Path(run_dir) / STEP_LOG_DIR
    paths = sorted(folder.glob("steps_dp*.jsonl"), key=lambda p: int(p.stem.removeprefix("steps_dp")))
    if not paths:
        raise StepLogError(f"{run_dir}: no step logs ({folder}/steps_dp<rank>.jsonl); they are written by vLLM "
                           "runs with backend.step_log=true and the balanceroute plugin installed in vLLM's "
                           "environment")
    engines, per_rank = [], []
    for path in paths:
        headers, frame = _read(path)
        engines += headers
        lock_step = len(paths) > 1
        frame = frame.assign(period=_periods(frame, lock_step)).dropna(subset=["period"])
        per_rank.append(frame.set_index(["wave", "k"])[["period", "kv", "prefill"]])
    joined = pd.concat(per_rank, axis=1, keys=range(len(per_rank)), join="inner")
    if joined.empty:
        raise StepLogError(f"{run_dir}: the step logs of the {len(paths)} ranks have no complete step in common")
    return StepTable(period=joined.xs("period", axis=1, level=1).mean(axis=1).to_numpy(np.float64),
                     kv=joined.xs("kv", axis=1, level=1).to_numpy(np.float64),
                     prefill=joined.xs("prefill", axis=1, level=1).to_numpy(np.float64), engines=engines)
