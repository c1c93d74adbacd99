"""A sweep's report: ``report.md`` with its comparison table and figures, written next to each other.

    python -m analysis.report outputs/multirun/rate_sweep
    python -m analysis.report SWEEP_DIR --baseline jsq --include parallel.dp --focus parallel.dp=8 --out DIR

The pinned studies (conf/experiment/) write their report automatically when the sweep ends, through
:class:`ReportCallback`; this command redoes it (e.g. after adding runs). Output (default ``SWEEP_DIR/report/``):
``report.md``, ``table.csv`` and ``table.tex`` (best of each setup marked), ``metrics.png`` and ``delta.png``
(metrics, and their change against the baseline, against the study's varying setup axis), and, from the per-run
files at one focus setup: ``imbalance.png``, ``worker_load.png``, ``gantt.png`` (the baseline and the most
balanced router) and ``cdf.png``.
"""
from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from analysis.collect import CONFIG_PREFIX, collect_runs
from analysis.compare import (
    choose_baseline,
    compare,
    comparison_axes,
    is_router_axis,
    natural_key,
    table_notes,
    with_labels,
)
from analysis.tables import render
from balanceroute.results import REQUESTS_FILE, TIMELINE_FILE

log = logging.getLogger(__name__)

#: Columns of the report's table; the first PLOTTED of the table's columns are plotted against the setup axis.
TABLE_METRICS = ("output_throughput", "p95_ttft_ms", "p95_tpot_ms", "mean_imbalance", "barrier_idle_fraction")
PLOTTED = 4
#: Constant config keys the report's setup paragraph names, when present.
SETUP_KEYS = ("model.name", "parallel.dp", "rate", "workload.name", "workload.num_requests", "backend.name",
              "backend.dispatch", "backend.prefill", "model.b")


def _norm(value: Any) -> str:
    """A value as text for matching across int/float spellings (3 == 3.0 == "3")."""
    if isinstance(value, bool) or value is None:
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:g}" if math.isfinite(number) or str(value) in ("inf", "-inf") else str(value)


def plot_axis(runs: pd.DataFrame, setup_axes: Sequence[str], include: Sequence[str]) -> str | None:
    """The numeric setup axis with the most distinct values (included keys first, then rate), or None."""
    order = [f"{CONFIG_PREFIX}{k}" for k in include] + [a for a in setup_axes if a not in include]
    best, count = None, 1
    for axis in dict.fromkeys(a for a in order if a in setup_axes):
        values = pd.to_numeric(runs[axis], errors="coerce")
        n = values.nunique()
        if values.notna().all() and n > count:
            best, count = axis, n
    return best


def parse_focus(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (config keys as in the table, e.g. ``parallel.dp=8``) as a mapping."""
    focus = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"focus {item!r}: expected KEY=VALUE, e.g. parallel.dp=8")
        focus[key] = value
    return focus


def focus_setup(runs: pd.DataFrame, setup_axes: Sequence[str], focus: Mapping[str, str]) -> dict[str, str]:
    """The setup (a value per setup axis) the per-run figures show: among the setups present that match
    ``focus``, the last in numeric order (the heaviest: highest rate, most workers)."""
    short = {a: a.removeprefix(CONFIG_PREFIX) for a in setup_axes}
    unknown = [k for k in focus if k not in short.values()]
    if unknown:
        raise ValueError(f"focus key(s) {', '.join(unknown)} are not setup axes of this sweep; "
                         f"setup axes: {', '.join(short.values()) or 'none'}")
    setups = runs[list(setup_axes)].drop_duplicates()
    for axis in setup_axes:
        if short[axis] in focus:
            values = setups[axis].map(_norm)
            want = _norm(focus[short[axis]])
            if want not in set(values):
                raise ValueError(f"focus {short[axis]}={focus[short[axis]]}: no runs; values present: "
                                 f"{', '.join(sorted(set(values)))}")
            setups = setups[values == want]
    if setups.empty:
        return {}
    numeric = setups.apply(lambda col: pd.to_numeric(col, errors="coerce")).fillna(-math.inf)
    last = numeric.sort_values(list(setup_axes)).index[-1]
    return {a: _norm(setups.at[last, a]) for a in setup_axes}


def independent_of(runs: pd.DataFrame, x: str | None, axes: Sequence[str]) -> list[str]:
    """The ``axes`` that vary at a fixed value of ``x`` (g_scaling's rate follows its G, so it is not one)."""
    if x is None:
        return list(axes)
    return [a for a in axes if a != x and runs.groupby(runs[x].map(_norm))[a].nunique().max() > 1]


def _at(frame: pd.DataFrame, setup: Mapping[str, str], rename: bool = False) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for axis, value in setup.items():
        col = axis.removeprefix(CONFIG_PREFIX) if rename else axis
        mask &= frame[col].map(_norm) == value
    return frame[mask]


def _setup_text(runs: pd.DataFrame) -> str:
    parts = []
    for key in SETUP_KEYS:
        col = f"{CONFIG_PREFIX}{key}"
        if col in runs and runs[col].map(_norm).nunique() == 1 and runs[col].notna().all():
            parts.append(f"{key}={_norm(runs[col].iloc[0])}")
    seeds = sorted(pd.to_numeric(runs["seed"]).astype(int).unique()) if "seed" in runs else []
    return ", ".join(parts) + (f"; seeds {', '.join(map(str, seeds))}" if seeds else "")


def regime_text(runs: pd.DataFrame) -> str | None:
    """What bound the runs and over which window their steady_* figures are taken (None for runs without them):
    a number means little without the regime it was measured in."""
    if "steady_window" not in runs:
        return None
    kind = runs["steady_window"].astype(str)
    saturated = kind == "saturated"
    parts = [f"steady window: all slots busy in {int(saturated.sum())} of {len(runs)} runs"]
    if saturated.any():
        length = pd.to_numeric(runs.loc[saturated, "steady_window_s"])
        parts[0] += f" (window {length.min():.0f}-{length.max():.0f} s)"
    if (~saturated).any():
        parts.append(f"the other {int((~saturated).sum())} never held every slot busy and are measured over the "
                     "arrival span less its warm-up and cool-down cuts (steady_window = cut)")
    if "peak_kv_usage" in runs:
        peak = pd.to_numeric(runs["peak_kv_usage"]).max()
        parts.append(f"peak KV usage {peak:.2f} of capacity ({'KV binds' if peak > 0.95 else 'KV does not bind'})")
    if "max_num_seqs" in runs:
        slots = sorted(pd.to_numeric(runs["max_num_seqs"]).dropna().astype(int).unique())
        parts.append(f"{', '.join(map(str, slots))} slots per worker")
    return "Regime: " + "; ".join(parts) + "."


def sweep_command(sweep_dir: Path) -> str | None:
    """The command that ran the sweep, from Hydra's ``multirun.yaml`` in the sweep folder (None if absent)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    task = OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task", default=None) or []
    return "python run.py -m " + " ".join(task)


def build_report(sweep_dir: str | Path, *, out: str | Path | None = None, baseline: str | None = None,
                 include: Sequence[str] = (), focus: Mapping[str, str] | None = None,
                 metrics: Sequence[str] = TABLE_METRICS, title: str | None = None,
                 published: Sequence[str] = ()) -> Path:
    """Write the report of the runs under ``sweep_dir`` into ``out`` (default ``sweep_dir/report``); returns the
    path of report.md. ``published``: the figures a study reproduces, as sentences with their source, listed
    beside the table. Raises ValueError for a folder without runs, an unknown baseline, metric, include or
    focus key (naming the valid ones)."""
    # matplotlib only when drawing: Hydra imports this module for the callback before a sweep starts
    from analysis import plots

    sweep_dir = Path(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / "report"
    runs = with_labels(collect_runs(sweep_dir))
    labels = sorted(runs["router"].astype(str).unique(), key=natural_key)
    baseline, heading = choose_baseline(labels, baseline)
    table = compare(runs, baseline=baseline, metrics=metrics, include=include)
    labels = [baseline] + [label for label in labels if label != baseline] if baseline in labels else labels
    palette = plots.colors(labels)

    out.mkdir(parents=True, exist_ok=True)
    (out / "table.csv").write_text(render(table, "csv", metrics, baseline, mark_best=True))
    (out / "table.tex").write_text(render(table, "latex", metrics, baseline, mark_best=True))

    setup_axes = [a for a in comparison_axes(runs, include) if not is_router_axis(a)]
    x = plot_axis(runs, setup_axes, include)
    chosen = focus_setup(runs, setup_axes, focus or {})
    others = {a: chosen[a] for a in independent_of(runs, x, setup_axes)}
    plot_x = x.removeprefix(CONFIG_PREFIX) if x else None
    shown = [m for m in metrics if m in table][:PLOTTED]
    caption = (f"{', '.join(shown)} {f'against {plot_x}' if plot_x else 'per router'}, mean and 95% CI over seeds"
               + (f" ({_describe(others)})" if others else ""))
    figures = [(plots.plot_metrics(_at(table, others, rename=True), shown, plot_x, out / "metrics.png", palette),
                caption),
               (plots.plot_metrics(_at(table, others, rename=True), shown, plot_x, out / "delta.png", palette,
                                   relative=True),
                f"the same as change against {baseline} (Δ%, means)")]

    at_focus = _at(runs, chosen)
    first_seed = at_focus.sort_values("seed").drop_duplicates("router")
    found = {label: Path(d) for label, d in zip(first_seed["router"].astype(str), first_seed["run_dir"])}
    # per-run figures need the run folders' files (runs collected from W&B or copied as result.json have none)
    one_run = {label: found[label] for label in labels if label in found and (found[label] / REQUESTS_FILE).is_file()}
    where = _describe(chosen) or "the only setup"
    balanced = min((label for label in one_run if label != baseline), default=None,
                   key=lambda label: float(at_focus.loc[at_focus["router"] == label, "mean_imbalance"].mean()))
    pair = {label: one_run[label] for label in dict.fromkeys([baseline, balanced]) if label in one_run}
    if one_run and all((d / TIMELINE_FILE).is_file() for d in one_run.values()):
        figures += [
            (plots.plot_imbalance(one_run, out / "imbalance.png", palette),
             f"imbalance over time, one run per router ({where}, seed {int(first_seed['seed'].min())})"),
            (plots.plot_worker_load(pair, out / "worker_load.png"),
             (f"KV load per worker over time: {' vs '.join(pair)}, the baseline and the most balanced router "
              f"({where})")),
        ]
    if pair:
        figures.append((plots.plot_gantt(pair, out / "gantt.png"),
                        f"requests per worker over time (Gantt): {' vs '.join(pair)} ({where})"))
        all_seeds = {label: [Path(d) for d in at_focus.loc[at_focus["router"] == label, "run_dir"]]
                     for label in one_run}
        figures.append((plots.plot_cdfs(all_seeds, out / "cdf.png", palette),
                        f"CDFs of TTFT and TPOT per router, all seeds pooled ({where})"))

    report = out / "report.md"
    options = [f"--baseline {baseline}"] + [f"--include {k}" for k in include] \
        + [f"--focus {k}={v}" for k, v in (focus or {}).items()] \
        + ([f"--metrics {' '.join(metrics)}"] if tuple(metrics) != TABLE_METRICS else []) \
        + ([f"--published {' '.join(shlex.quote(p) for p in published)}"] if published else [])
    commands = [c for c in (sweep_command(sweep_dir), " ".join(["python -m analysis.report", str(sweep_dir), *options]))
                if c]
    notes = table_notes(sweep_dir, runs, metrics)
    report.write_text(_markdown(title or sweep_dir.name, runs, table, metrics, heading, baseline, figures, commands,
                                out, published, notes))
    return report


def _describe(setup: Mapping[str, str]) -> str:
    return ", ".join(f"{a.removeprefix(CONFIG_PREFIX)}={v}" for a, v in setup.items())


def _markdown(title: str, runs: pd.DataFrame, table: pd.DataFrame, metrics: Sequence[str], heading: str,
              baseline: str, figures: list[tuple[Path, str]], commands: list[str], out: Path,
              published: Sequence[str], notes: Sequence[str]) -> str:
    routers = sorted(runs["router"].unique(), key=natural_key)
    lines = [f"# {title}", "", f"{len(runs)} runs of {len(routers)} routers ({', '.join(routers)}).",
             f"Setup: {_setup_text(runs)}.", *filter(None, [regime_text(runs)]), ""]
    lines += ["Reproduce (the sweep, whose end writes this report; then the report alone):", "", "```bash",
              *commands, "```", ""]
    lines += ["## Results", "", heading, "", render(table, "md", metrics, baseline, mark_best=True).rstrip(), "",
              *([*notes, ""] if notes else []),
              "The same table: [table.csv](table.csv) (numbers, with `_best` flags), [table.tex](table.tex).", ""]
    if published:
        lines += ["## Published figures, to compare with the table", "", *(f"- {p}" for p in published), ""]
    lines += ["## Figures", ""]
    for i, (path, caption) in enumerate(figures, 1):
        lines += [f"![figure {i}]({path.relative_to(out).as_posix()})", "", f"*Figure {i}: {caption}.*", ""]
    return "\n".join(lines)


class ReportCallback(Callback):
    """Hydra callback: write the sweep's report when a multirun ends (conf/experiment/ studies enable it with
    ``hydra.callbacks.report``). A failure is logged with the command to redo it; the runs are already saved."""

    def __init__(self, baseline: str | None = None, include: Sequence[str] = (), focus: Sequence[str] = (),
                 metrics: Sequence[str] = TABLE_METRICS, title: str | None = None,
                 published: Sequence[str] = ()) -> None:
        self.baseline = baseline
        self.published = tuple(published)
        self.include = tuple(include)
        self.focus = tuple(focus)
        self.metrics = tuple(metrics)
        self.title = title

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            report = build_report(sweep_dir, baseline=self.baseline, include=self.include,
                                  focus=parse_focus(self.focus), metrics=self.metrics, published=self.published,
                                  title=self.title or str(OmegaConf.select(config, "name", default=sweep_dir.name)))
            log.info("report: %s", report.resolve())
        except Exception as exc:  # noqa: BLE001 -- the sweep's results are safe; say how to retry
            log.error("the sweep's report failed (%s: %s); its runs are complete. Retry with: "
                      "python -m analysis.report %s", type(exc).__name__, exc, sweep_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a sweep folder written by run.py -m (searched recursively)")
    parser.add_argument("--out", help="output folder (default: SWEEP_DIR/report)")
    parser.add_argument("--baseline", help="router (label) for Δ%%; default, and when it has no runs: "
                                           "vllm_default, else jsq, else the first router")
    parser.add_argument("--include", nargs="*", default=[], help="config keys always shown as table axes")
    parser.add_argument("--focus", nargs="*", default=[],
                        help="KEY=VALUE: the setup of the per-run figures (default: the heaviest)")
    parser.add_argument("--metrics", nargs="+", default=list(TABLE_METRICS), help="table columns")
    parser.add_argument("--title", help="report title (default: the folder's name)")
    parser.add_argument("--published", nargs="*", default=[],
                        help="published figures the study reproduces, one sentence each, listed beside the table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = build_report(args.sweep_dir, out=args.out, baseline=args.baseline, include=args.include,
                              focus=parse_focus(args.focus), metrics=args.metrics, title=args.title,
                              published=args.published)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
