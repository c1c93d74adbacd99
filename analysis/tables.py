"""Render a comparison table (:func:`analysis.compare.compare`) as Markdown, CSV or LaTeX.

A cell reads ``mean ± half-width of the 95% CI (Δ% against the baseline)``. With ``mark_best`` the best mean of
each metric among the routers of one setup (the rows sharing every non-router axis: rate, G, ...) is marked, bold
in Markdown and LaTeX, a ``<metric>_best`` column in CSV, but only when its 95% interval is clear of every other
row's: a best that the seeds cannot tell apart from the runner-up is not a finding. A row of one run has no
interval and is never marked. Which way is better depends on the metric (:func:`higher_is_better`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

CI_LEVEL = 0.95
FORMATS = ("md", "csv", "latex")
#: Metrics where more is better (by substring of the result.json key); everything else (latencies, imbalance,
#: idle fraction, preemptions, failures) is better when lower.
HIGHER_IS_BETTER = ("throughput", "goodput", "completed")


def higher_is_better(metric: str) -> bool:
    return any(word in metric for word in HIGHER_IS_BETTER)


def value_columns(table: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """The table's axis columns (everything that is not a metric, its CI, Δ%, best flag, or ``n``)."""
    derived = tuple(f"{m}{suffix}" for m in metrics for suffix in ("", "_ci95", "_delta_pct", "_best"))
    return [c for c in table.columns if c not in derived and c != "n"]


def setup_columns(table: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """The axes that define a setup: all but the router (its name or label, and its parameters)."""
    return [c for c in value_columns(table, metrics) if c != "router" and not c.startswith("router.")]


def best_flags(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per metric, whether a row holds the best mean among the rows of its setup with its 95% interval clear of
    every other row's interval there (so the difference is outside the intervals). Rows without an interval (one
    run) and a setup's only row are never marked."""
    setup = setup_columns(table, metrics)
    key = table[setup].map(str).agg("\x1f".join, axis=1) if setup else pd.Series("", index=table.index)
    flags = {}
    for m in metrics:
        mean = pd.to_numeric(table[m], errors="coerce")
        half = pd.to_numeric(table[f"{m}_ci95"], errors="coerce")
        best = pd.Series(False, index=table.index)
        for _, rows in mean.groupby(key):
            rows = rows.dropna()
            if len(rows) < 2:
                continue
            top = rows.idxmax() if higher_is_better(m) else rows.idxmin()
            others = rows.index.drop(top)
            clear = (mean[others] - mean[top]).abs() > half[top] + half[others]
            best[top] = bool(math.isfinite(half[top]) and clear.all())
        flags[f"{m}_best"] = best
    return pd.DataFrame(flags, index=table.index)


def _decimals(x: float) -> int:
    """Digits after the point that keep about four significant digits without noise on large numbers."""
    a = abs(x)
    return 0 if a >= 1000 else 1 if a >= 100 else 2 if a >= 1 else 3


def _cell(mean: float, half: float, delta: float, *, is_baseline: bool) -> str:
    if not math.isfinite(mean):
        return "n/a"
    d = _decimals(mean)
    text = f"{mean:.{d}f}" + (f" ± {half:.{d}f}" if math.isfinite(half) else "")
    if not is_baseline and math.isfinite(delta):
        text += f" ({round(delta, 1) + 0.0:+.1f}%)"  # + 0.0 turns -0.0 into 0.0
    return text


def _axis_text(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:g}"  # 3.0 -> 3, as it was written on the command line
    return "—" if value is None else str(value)


def _display_rows(table: pd.DataFrame, metrics: Sequence[str], baseline: str, bold: str | None
                  ) -> tuple[list[str], list[list[str]]]:
    """Header and text rows; with ``bold`` (a format string such as ``**{}**``) the best cells are wrapped."""
    axes = value_columns(table, metrics)
    best = best_flags(table, metrics) if bold else None
    header = axes + ["n"] + list(metrics)
    full = int(table["n"].max()) if len(table) else 0
    rows = []
    for i, r in table.iterrows():
        is_base = str(r["router"]) == baseline
        n = int(r["n"])
        cells = [_axis_text(r[a]) for a in axes] + [f"{n} (of {full})" if n < full else str(n)]
        for m in metrics:
            text = _cell(r[m], r[f"{m}_ci95"], r[f"{m}_delta_pct"], is_baseline=is_base)
            cells.append(bold.format(text) if best is not None and best.at[i, f"{m}_best"] else text)
        rows.append(cells)
    return header, rows


def caption(baseline: str, *, mark_best: bool = False) -> str:
    text = (f"mean ± {CI_LEVEL:.0%} CI over the n runs (seeds) of a row (\"2 (of 3)\": a row with fewer runs than "
            f"the others); (Δ%) against {baseline} at the same rate and setup")
    return text + ("; bold: the best of its setup, its interval clear of every other row's (n=1: no interval, "
                   "never bold)" if mark_best else "")


def to_markdown(table: pd.DataFrame, metrics: Sequence[str], baseline: str, *, mark_best: bool = False) -> str:
    header, rows = _display_rows(table, metrics, baseline, "**{}**" if mark_best else None)
    esc = [[c.replace("|", "\\|") for c in row] for row in [header] + rows]
    lines = ["| " + " | ".join(esc[0]) + " |",
             "|" + "|".join("---" if i < len(header) - len(metrics) - 1 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines) + f"\n\n{caption(baseline, mark_best=mark_best)}\n"


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("—", "--")):
        text = text.replace(a, b)
    return text.replace("±", r"$\pm$")


def to_latex(table: pd.DataFrame, metrics: Sequence[str], baseline: str, *, mark_best: bool = False) -> str:
    header, rows = _display_rows(table, metrics, baseline, "\x00{}\x01" if mark_best else None)
    n_axes = len(header) - len(metrics) - 1

    def cell(text: str) -> str:  # escape first, then turn the markers into \textbf{...}
        return _latex_escape(text).replace("\x00", r"\textbf{").replace("\x01", "}")

    lines = [f"% {caption(baseline, mark_best=mark_best)}",
             r"\begin{tabular}{" + "l" * n_axes + "r" * (1 + len(metrics)) + "}",
             r"\toprule", " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame, metrics: Sequence[str], *, mark_best: bool = False) -> str:
    """Numeric columns, for further processing; with ``mark_best`` a boolean ``<metric>_best`` per metric."""
    if mark_best:
        table = pd.concat([table, best_flags(table, metrics)], axis=1)
    return table.to_csv(index=False)


def render(table: pd.DataFrame, fmt: str, metrics: Sequence[str], baseline: str, *, mark_best: bool = False) -> str:
    """The table as Markdown, CSV (numeric columns, for further processing) or a LaTeX tabular (booktabs)."""
    if fmt == "csv":
        return to_csv(table, metrics, mark_best=mark_best)
    if fmt == "latex":
        return to_latex(table, metrics, baseline, mark_best=mark_best)
    if fmt == "md":
        return to_markdown(table, metrics, baseline, mark_best=mark_best)
    raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
