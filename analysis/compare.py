"""Comparison table of a sweep: one row per (rate, router), key metrics, Δ% against a baseline router.

    python -m analysis.compare outputs/multirun/default
    python -m analysis.compare SWEEP_DIR --baseline jsq --metrics output_throughput p99_tpot_ms --format latex

Runs that differ only in their seed are one row: mean ± 95% confidence interval (Student t, n-1 degrees of
freedom). Rows are keyed by rate and router plus any other configuration value that varies in the folder
(e.g. ``parallel.dp`` when sweeps over several DP sizes share it), so runs of different setups are never
averaged together; Δ% compares with the baseline router at the same values of all non-router keys.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.collect import CONFIG_PREFIX, collect_runs, missing_runs
from analysis.tables import CI_LEVEL, FORMATS, render

__all__ = ["choose_baseline", "compare", "comparison_axes", "identical_routers", "is_router_axis", "main",
           "natural_key", "render", "table_notes", "with_labels"]

#: Baselines tried in order when none is configured or the configured one has no runs: vLLM's router, then the
#: classic count-based one; failing both, the first router by name.
PREFERRED_BASELINES = ("vllm_default", "jsq")
#: Metrics shown by default: throughput, tail latencies and the balance the routers are after.
DEFAULT_METRICS = ("output_throughput", "p95_ttft_ms", "p95_tpot_ms", "mean_imbalance")
#: Keys every row is identified by; further varying config keys are appended by :func:`comparison_axes`.
BASE_AXES = ("rate", "router")
#: Numeric result.json keys that describe a run rather than measure it.
IDENTITY = ("rate", "seed", "dp", "tp")


def _text(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells as text, missing values included ("nan"), for grouping on columns of mixed types."""
    return frame.map(str)


def _leaf(column: str) -> str:
    return column.rsplit(".", 1)[-1]


def comparison_axes(runs: pd.DataFrame, include: Sequence[str] = ()) -> list[str]:
    """``rate``, ``router``, the config keys in ``include`` (e.g. ``parallel.dp``), then each config column that
    splits the runs further (group names first), except seeds.

    A column is added only if it increases the number of distinct rows, so values that follow from keys already
    chosen (``workload.rate`` = ``rate``, a parameter only one router has) do not clutter the table; ``include``
    shows a key anyway, e.g. the number of workers of a study whose rate is derived from it.
    """
    unknown = [k for k in include if f"{CONFIG_PREFIX}{k}" not in runs.columns]
    if unknown:
        known = sorted(c.removeprefix(CONFIG_PREFIX) for c in runs if c.startswith(CONFIG_PREFIX))
        raise ValueError(f"unknown config key(s) {', '.join(unknown)} to include; the runs' config keys: "
                         f"{', '.join(known)}")
    axes = list(BASE_AXES) + [f"{CONFIG_PREFIX}{k}" for k in include]

    def distinct(cols: list[str]) -> int:
        return len(_text(runs[cols]).drop_duplicates())

    count = distinct(axes)
    candidates = [c for c in runs.columns if c.startswith(CONFIG_PREFIX) and _leaf(c) not in ("seed", "_target_")]
    # a group's name says more than its other keys: workload.name rather than the loader it implies
    for col in sorted(candidates, key=lambda c: _leaf(c) != "name"):
        if distinct(axes + [col]) > count:
            axes.append(col)
            count = distinct(axes)
    return axes


def is_router_axis(axis: str) -> bool:
    """Whether a runs-frame axis says which router ran (its name or label, or one of its parameters)."""
    return axis in ("router", f"{CONFIG_PREFIX}label") or axis.startswith(f"{CONFIG_PREFIX}router.")


def with_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``router`` holding each run's label where it has one (router variants of a study, e.g.
    ``br0_pool``, ``br_h_oracle``); the policy's own name stays in ``config.router.name``."""
    if "label" not in runs.columns:
        return runs
    return runs.assign(router=runs["label"].where(runs["label"].notna(), runs["router"]))


def natural_key(text: str) -> tuple:
    """Sort key reading digit runs as numbers: fast_phi_k3 before fast_phi_k10."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text)))


def _sort_keys(values: pd.Series, name: str) -> pd.DataFrame:
    """Sort keys for a column of mixed types: numbers (and "inf") numerically, then anything else by its text."""
    return pd.DataFrame({f"{name}#num": pd.to_numeric(values, errors="coerce").fillna(np.inf),
                         f"{name}#text": values.map(str)})


def choose_baseline(routers: Sequence[str], configured: str | None = None) -> tuple[str, str]:
    """The baseline of a table and the heading that says which it is and why: ``configured`` if it has runs,
    else vllm_default, else jsq, else the first router by name. One rule for compare, report and the sweep."""
    present = sorted({str(r) for r in routers}, key=natural_key)
    if not present:
        raise ValueError("no routers to choose a baseline from")
    candidates = list(dict.fromkeys([*([configured] if configured else []), *PREFERRED_BASELINES]))
    choice = next((b for b in candidates if b in present), present[0])
    skipped = candidates[:candidates.index(choice)] if choice in candidates else candidates
    note = f" ({', '.join(skipped)} not in this sweep)" if skipped else ""
    return choice, f"baseline: {choice}{note}"


def identical_routers(runs: pd.DataFrame, metrics: Sequence[str]) -> list[tuple[str, ...]]:
    """Groups of routers (labels) whose runs gave the same value of every metric in ``metrics`` at every setup and
    seed: one measurement shown as several rows (on arrival BR-0 is JSQ-Load, docs/policies.md), which a table
    should say rather than let the rows pass for independent evidence. Only routers run at the same setups and
    seeds are compared."""
    runs = with_labels(runs)
    axes = [a for a in comparison_axes(runs) if not is_router_axis(a)] + ["seed"]
    values = runs[list(metrics)].apply(pd.to_numeric, errors="coerce")
    signatures: dict[tuple, list[str]] = {}
    for router, group in runs.groupby(runs["router"].astype(str)):
        key = _text(group[axes]).agg("\x1f".join, axis=1)
        rows = values.loc[group.index].set_axis(key).sort_index()
        signature = (tuple(rows.index), tuple(map(tuple, rows.round(12).to_numpy().tolist())))
        signatures.setdefault(signature, []).append(router)
    return sorted((tuple(sorted(g, key=natural_key)) for g in signatures.values() if len(g) > 1),
                  key=lambda g: natural_key(g[0]))


def table_notes(sweep_dir: str | Path, runs: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """The lines under a table that keep it honest: runs without a readable result, and routers whose rows are
    one measurement shown twice."""
    notes = [f"missing: {overrides} — {why}" for overrides, why in missing_runs(sweep_dir)]
    notes += [f"identical: {' = '.join(group)} gave the same results in every run (one measurement, not "
              f"{len(group)})" for group in identical_routers(runs, metrics)]
    return notes


def compare(runs: pd.DataFrame, *, baseline: str = "vllm_default",
            metrics: Sequence[str] = DEFAULT_METRICS, include: Sequence[str] = ()) -> pd.DataFrame:
    """The comparison table: axis columns, ``n`` (runs per row), and per metric ``<m>``, ``<m>_ci95``
    (half-width; NaN with one run) and ``<m>_delta_pct`` (against ``baseline``; NaN where it has no row).
    ``include``: config keys always shown as axes (:func:`comparison_axes`).

    Routers are named by their label (:func:`with_labels`). Raises ValueError naming the valid choices for an
    unknown metric or a baseline router absent from ``runs``.
    """
    runs = with_labels(runs)
    numeric = [c for c in runs.columns if not c.startswith(CONFIG_PREFIX) and c not in IDENTITY
               and pd.to_numeric(runs[c], errors="coerce").notna().any()]
    unknown = [m for m in metrics if m not in runs.columns]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; valid metrics: {', '.join(sorted(numeric))}")
    routers = sorted(runs["router"].astype(str).unique())
    if baseline not in routers:
        raise ValueError(f"baseline router {baseline!r} has no runs here; routers present: {', '.join(routers)} "
                         "(choose one with --baseline)")

    axes = comparison_axes(runs, include)
    key = _text(runs[axes]).agg("\x1f".join, axis=1)
    values = runs[list(metrics)].apply(pd.to_numeric, errors="coerce")
    grouped = values.groupby(key, sort=False)
    table = runs[axes].groupby(key, sort=False).first()
    table["n"] = runs.groupby(key, sort=False).size()
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    t = stats.t.ppf(0.5 + CI_LEVEL / 2, np.maximum(count - 1, 1))
    half = pd.DataFrame(t, index=count.index, columns=count.columns) * std / np.sqrt(count)
    half = half.where(count > 1)

    others = [a for a in axes if not is_router_axis(a)]
    other_key = _text(table[others]).agg("\x1f".join, axis=1)
    base = table["router"].astype(str) == baseline
    base_key = other_key[base]
    if base_key.duplicated().any():
        raise ValueError(f"baseline {baseline!r} has several configurations at the same "
                         f"{', '.join(others)}; compare fewer of its variants at once")
    base_mean = mean[base].set_axis(base_key.to_numpy())
    for m in metrics:
        table[m] = mean[m]
        table[f"{m}_ci95"] = half[m]
        ref = other_key.map(base_mean[m])
        table[f"{m}_delta_pct"] = 100 * (mean[m] - ref) / ref.where(ref != 0)

    table = table.rename(columns={a: a.removeprefix(CONFIG_PREFIX) for a in axes})
    # rows: by rate, then the other setup keys, then the baseline first and the other routers by name
    shown = [a.removeprefix(CONFIG_PREFIX) for a in axes]
    order = pd.concat([_sort_keys(table[a], a) for a in ["rate", *shown[2:]]]
                      + [(table["router"].astype(str) != baseline).rename("not_baseline"),
                         table["router"].astype(str).map(natural_key).rename("router#name")], axis=1)
    return table.loc[order.sort_values(list(order.columns)).index].reset_index(drop=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a sweep (or run) folder written by run.py; searched recursively")
    parser.add_argument("--baseline", default=None,
                        help="router (label) to compute Δ%% against; default, and when it has no runs: "
                             "vllm_default, else jsq, else the first router (the table's heading says which)")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS),
                        help="result.json keys to show (default: %(default)s)")
    parser.add_argument("--format", choices=FORMATS, default="md")
    parser.add_argument("--mark-best", action="store_true",
                        help="mark the best value of each metric among the routers of a setup")
    args = parser.parse_args(argv)
    metrics = [m for arg in args.metrics for m in arg.split(",") if m]
    try:
        runs = with_labels(collect_runs(args.sweep_dir))
        baseline, heading = choose_baseline(runs["router"].astype(str), args.baseline)
        table = compare(runs, baseline=baseline, metrics=metrics)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    notes = table_notes(args.sweep_dir, runs, metrics)
    body = render(table, args.format, metrics, baseline, mark_best=args.mark_best)
    if args.format == "md":
        sys.stdout.write("\n".join([heading, "", body.rstrip("\n"), *([""] + notes if notes else [])]) + "\n")
    elif args.format == "latex":
        sys.stdout.write("\n".join([f"% {heading}", *(f"% {m}" for m in notes), body.rstrip("\n")]) + "\n")
    else:  # CSV stays machine-readable: the heading and the notes go to stderr
        print("\n".join([heading, *notes]), file=sys.stderr)
        sys.stdout.write(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
