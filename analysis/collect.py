"""Run folders -> one DataFrame, the input of every table and plot.

Analysis reads only the result files (README: "Result files"), never the code that produced them, so results
from the simulator, the proxy and real vLLM, from this machine or a cluster, all land in the same frame. Runs
mirrored to W&B land in the same frame too (:mod:`analysis.wandb_runs`), through :func:`result_row`.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from balanceroute.results import RESULT_FILE, read_result

#: Prefix of the columns holding the run-defining configuration (result.json's ``config``, flattened).
CONFIG_PREFIX = "config."


def _flatten(tree: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            yield f"{prefix}{key}", tuple(value)  # hashable, so it can be grouped on
        else:
            yield f"{prefix}{key}", value


def result_row(result: Mapping[str, Any], location: str) -> dict[str, Any]:
    """One row of the runs frame from a run's result.json contents: its scalar keys, ``config.<dotted.key>`` for
    each run-defining config value, and ``run_dir`` = ``location`` (a folder, or a W&B run's address).
    Per-worker lists are left out."""
    row = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
    row.update(_flatten(result.get("config") or {}, CONFIG_PREFIX))
    row["run_dir"] = location
    return row


def runs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The runs frame of :func:`result_row` rows; a run found twice (same config_hash) counts once, the newest."""
    df = pd.DataFrame(rows)
    if "config_hash" in df:
        df = df.sort_values("date" if "date" in df else "run_dir").drop_duplicates("config_hash", keep="last")
    return df.reset_index(drop=True)


def _overrides(run_dir: Path) -> str:
    """The Hydra overrides a run folder was made with (``.hydra/overrides.yaml``), as ``key=value ...``."""
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(path)) or []
    except Exception:  # noqa: BLE001 -- a folder without readable overrides is named by its path instead
        return run_dir.name
    return " ".join(str(o) for o in overrides) or run_dir.name


def missing_runs(root: str | Path) -> list[tuple[str, str]]:
    """Run folders under ``root`` whose result is missing: (their overrides, why), for every folder Hydra made a
    job in (it holds ``.hydra/``) without a readable result.json: unfinished, killed, or a corrupt file."""
    missing = []
    for hydra_dir in sorted(Path(root).rglob(".hydra")):
        run_dir = hydra_dir.parent
        try:
            if read_result(run_dir) is not None:
                continue
            why = f"no {RESULT_FILE}"
        except ValueError:
            why = f"unreadable {RESULT_FILE}"
        missing.append((_overrides(run_dir), why))
    return missing


def collect_runs(root: str | Path) -> pd.DataFrame:
    """One row per finished run under ``root`` (searched recursively for result.json).

    Columns: every scalar key of result.json (metrics and the run's identity: router, label, rate, dp, seed,
    ...), ``config.<dotted.key>`` for each run-defining config value, and ``run_dir``. Per-worker lists are left
    out. A run found twice (same config_hash, e.g. a folder copied into the sweep) counts once, the newest. A
    result.json that cannot be read is left out here and reported by :func:`missing_runs`. Raises ValueError if
    ``root`` is missing or holds no readable result.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    rows = []
    for path in sorted(root.rglob(RESULT_FILE)):
        try:
            result = read_result(path.parent)
        except ValueError:
            continue  # truncated or corrupt: listed by missing_runs
        if result is not None:
            rows.append(result_row(result, str(path.parent)))
    if not rows:
        raise ValueError(f"no result.json under {root}; expected a run or sweep folder written by run.py, "
                         "e.g. outputs/multirun/<name>")
    return runs_frame(rows)
