"""Figures of a sweep, drawn with matplotlib's object API (no pyplot state, Agg canvas: safe headless).

- :func:`plot_metrics` -- metrics (throughput, TTFT p95, TPOT p95, imbalance) against a setup axis (rate, G,
  b/a), one line per router with 95% CI bars, from a comparison table; bars when there is a single setup;
- :func:`plot_imbalance` -- imbalance G*max_g L_g - sum_g L_g over time, one line per router (timeline.parquet);
- :func:`plot_worker_load` -- each worker's KV load over time, one panel per run (timeline.parquet);
- :func:`plot_gantt` -- per worker, each request as a bar from arrival to first token and on to its last token,
  stacked in lanes (requests.parquet);
- :func:`plot_cdfs` -- CDFs of TTFT and TPOT per router (requests.parquet, seeds pooled).

Each function writes one PNG and returns its path. Colours follow the router's position in ``labels`` so a router
has the same colour in every figure of a report.
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from analysis.tables import higher_is_better
from balanceroute.results import REQUESTS_FILE, TIMELINE_FILE
from balanceroute.tracking.records import request_latencies

DPI = 110
#: Gantt bar colours: before the first token (queueing, prefill), then decoding.
WAITING, DECODING = "#f4b183", "#2f6fb0"
#: Human-readable names of the metrics the report plots.
METRIC_NAMES = {
    "output_throughput": "output throughput (tok/s)", "request_throughput": "requests/s",
    "p95_ttft_ms": "TTFT p95 (ms)", "p99_ttft_ms": "TTFT p99 (ms)", "mean_ttft_ms": "TTFT mean (ms)",
    "p95_tpot_ms": "TPOT p95 (ms)", "p99_tpot_ms": "TPOT p99 (ms)", "mean_tpot_ms": "TPOT mean (ms)",
    "mean_imbalance": "mean imbalance (tokens)", "barrier_idle_fraction": "barrier idle fraction",
    "mean_spread": "mean max-min spread (tokens)",
}


def colors(labels: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per label (tab10, then tab20 for more than ten routers)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_metrics(table: pd.DataFrame, metrics: Sequence[str], x: str | None, path: Path,
                 palette: Mapping[str, tuple], *, relative: bool = False) -> Path:
    """``metrics`` of a comparison table (one panel each) against column ``x``, a line per router with its 95% CI;
    with ``x`` None, one bar per router. ``relative`` plots the change against the baseline (Δ%) instead, which
    shows small differences on metrics that grow with ``x`` (throughput against G)."""
    fig = Figure(figsize=(4.2 * len(metrics), 3.6), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    routers = [r for r in palette if r in set(table["router"].astype(str))]
    for ax, metric in zip(axes, metrics):
        column = f"{metric}_delta_pct" if relative else metric
        if x is None:
            rows = table.set_index(table["router"].astype(str)).loc[routers]
            ax.bar(range(len(routers)), rows[column], yerr=None if relative else rows[f"{metric}_ci95"].fillna(0),
                   capsize=3, color=[palette[r] for r in routers])
            ax.set_xticks(range(len(routers)), routers, rotation=45, ha="right")
        else:
            for router in routers:
                rows = table[table["router"].astype(str) == router].sort_values(x)
                ax.errorbar(pd.to_numeric(rows[x]), rows[column],
                            yerr=None if relative else rows[f"{metric}_ci95"].fillna(0),
                            label=router, color=palette[router], marker="o", ms=3, capsize=2, lw=1.2)
            ax.set_xlabel(x)
            if x in ("parallel.dp", "rate") and pd.to_numeric(table[x]).min() > 0:
                ax.set_xscale("log", base=2)
                ticks = sorted(pd.to_numeric(table[x]).unique())
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        name = METRIC_NAMES.get(metric, metric)
        if relative:
            name = "Δ% " + name.split(" (")[0] + " vs baseline"
        ax.set_title(name + (" ↑" if higher_is_better(metric) else " ↓"), fontsize=10)
        ax.grid(alpha=0.3)
    if x is not None:
        axes[-1].legend(fontsize=7, loc="best")
    return _save(fig, path)


def imbalance_series(timeline: pd.DataFrame) -> pd.DataFrame:
    """Per sampled step: ``time_s`` and the imbalance ``G * max_g kv_load - sum_g kv_load`` (tokens)."""
    per_step = timeline.groupby("step").agg(time_s=("time_s", "min"), top=("kv_load", "max"),
                                            total=("kv_load", "sum"), g=("kv_load", "size"))
    return pd.DataFrame({"time_s": per_step["time_s"], "imbalance": per_step["g"] * per_step["top"]
                         - per_step["total"]}).sort_values("time_s").reset_index(drop=True)


def plot_imbalance(run_dirs: Mapping[str, Path], path: Path, palette: Mapping[str, tuple]) -> Path:
    """Imbalance over time, one line per router (its run folder in ``run_dirs``), smoothed over ~1% of the run."""
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    for label, run_dir in run_dirs.items():
        series = imbalance_series(pd.read_parquet(Path(run_dir) / TIMELINE_FILE))
        window = max(1, len(series) // 100)
        ax.plot(series["time_s"], series["imbalance"].rolling(window, min_periods=1).mean(), lw=1,
                label=label, color=palette[label])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("imbalance G·max L − ΣL (tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    return _save(fig, path)


def plot_worker_load(run_dirs: Mapping[str, Path], path: Path) -> Path:
    """Each worker's KV load over time, one panel per run (shared y axis, so panels compare directly)."""
    fig = Figure(figsize=(8, 2.6 * len(run_dirs)), layout="constrained")
    axes = fig.subplots(len(run_dirs), 1, squeeze=False, sharex=True, sharey=True)[:, 0]
    for ax, (label, run_dir) in zip(axes, run_dirs.items()):
        timeline = pd.read_parquet(Path(run_dir) / TIMELINE_FILE)
        wide = timeline.pivot_table(index="time_s", columns="worker", values="kv_load", aggfunc="first")
        ax.plot(wide.index, wide.to_numpy(), lw=0.6)
        ax.set_title(f"{label}: KV load per worker", fontsize=10)
        ax.set_ylabel("tokens")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    return _save(fig, path)


def _lanes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Greedy interval partitioning: each interval (sorted by start) takes the lowest free lane."""
    order = np.argsort(start, kind="stable")
    lane = np.empty(start.size, dtype=np.int64)
    busy: list[tuple[float, int]] = []  # (end, lane) of lanes in use
    free: list[int] = []
    for i in order:
        while busy and busy[0][0] <= start[i]:
            heapq.heappush(free, heapq.heappop(busy)[1])
        lane[i] = heapq.heappop(free) if free else len(busy)
        heapq.heappush(busy, (end[i], lane[i]))
    return lane


def gantt_window(requests: pd.DataFrame, max_requests: int) -> tuple[float, float]:
    """A time window around the middle of the run holding about ``max_requests`` arrivals."""
    arrivals = np.sort(requests["arrival_s"].to_numpy())
    if arrivals.size <= max_requests:
        return float(arrivals[0]), float(np.nanmax(requests["finish_s"]))
    lo = (arrivals.size - max_requests) // 2
    return float(arrivals[lo]), float(arrivals[lo + max_requests - 1])


def plot_gantt(run_dirs: Mapping[str, Path], path: Path, *, max_requests: int = 300) -> Path:
    """Per-worker Gantt charts (one panel per run): the requests arriving in a window of about ``max_requests``
    arrivals, each a bar from arrival to first token (orange: queueing and prefill) and on to its last token
    (blue: decoding); within a worker's band, overlapping requests are stacked in lanes."""
    fig = Figure(figsize=(9, 3.4 * len(run_dirs)), layout="constrained")
    axes = fig.subplots(len(run_dirs), 1, squeeze=False)[:, 0]
    for ax, (label, run_dir) in zip(axes, run_dirs.items()):
        requests = pd.read_parquet(Path(run_dir) / REQUESTS_FILE)
        t0, t1 = gantt_window(requests, max_requests)
        shown = requests[(requests["arrival_s"] >= t0) & (requests["arrival_s"] <= t1) & (requests["worker"] >= 0)]
        arrival = shown["arrival_s"].to_numpy()
        first = shown["first_token_s"].to_numpy(dtype=np.float64, na_value=np.nan)
        finish = shown["finish_s"].to_numpy(dtype=np.float64, na_value=np.nan)
        end = np.where(np.isfinite(finish), finish, np.nanmax(finish) if np.isfinite(finish).any() else t1)
        first = np.where(np.isfinite(first), first, end)
        worker = shown["worker"].to_numpy()
        workers = np.unique(worker)
        base = 0.0
        ticks = []
        for w in workers:
            mine = worker == w
            lanes = _lanes(arrival[mine], end[mine])
            height = max(1, lanes.max() + 1)
            y = base + lanes / height
            bar = 0.9 / height
            ax.barh(y, first[mine] - arrival[mine], left=arrival[mine], height=bar, color=WAITING, align="edge")
            ax.barh(y, end[mine] - first[mine], left=first[mine], height=bar, color=DECODING, align="edge")
            ticks.append(base + 0.5)
            base += 1.0
            ax.axhline(base, color="0.6", lw=0.5)
        ax.set_yticks(ticks, [f"worker {int(w)}" for w in workers], fontsize=7)
        ax.set_ylim(0, max(base, 1))
        ax.invert_yaxis()
        ax.set_title(f"{label}: requests arriving in [{t0:.4g}, {t1:.4g}] s (orange: waiting + prefill, blue: "
                     "decode)", fontsize=9)
        ax.set_xlabel("time (s)")
    return _save(fig, path)


def plot_cdfs(run_dirs: Mapping[str, Sequence[Path]], path: Path, palette: Mapping[str, tuple]) -> Path:
    """Empirical CDFs of TTFT and TPOT per router, over the requests of all its runs in ``run_dirs``."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for label, dirs in run_dirs.items():
        latencies = pd.concat([request_latencies(pd.read_parquet(Path(d) / REQUESTS_FILE)) for d in dirs])
        for ax, col in zip(axes, ("ttft_ms", "tpot_ms")):
            values = np.sort(latencies[col].dropna().to_numpy())
            if values.size:
                ax.plot(values, np.arange(1, values.size + 1) / values.size, lw=1.1, label=label,
                        color=palette[label])
    axes[0].set_xscale("log")  # TTFT spans queueing (seconds) and an idle cluster (milliseconds)
    axes[0].xaxis.set_major_formatter(ScalarFormatter())  # 10, 100, 1000 rather than 10^1
    axes[0].xaxis.set_minor_formatter(NullFormatter())
    for ax, name in zip(axes, ("TTFT (ms, log scale)", "TPOT (ms)")):
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7)
    return _save(fig, path)
