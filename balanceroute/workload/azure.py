"""Azure-style CSV traces (``TIMESTAMP, ContextTokens, GeneratedTokens``): the Azure LLM inference traces 2023.

Replayed on their own timestamps, stretched by a factor, or re-timed to a rate by
:func:`~balanceroute.workload.arrivals.arrival_times`. Bad input raises one :class:`WorkloadError` that quotes
the first few bad rows of every column with their file lines, so a hand-edited trace is fixed in one pass.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from balanceroute.workload.arrivals import arrival_times, check_rate
from balanceroute.workload.base import Workload, WorkloadError, check_count, take_first

log = logging.getLogger(__name__)

#: Azure trace columns.
TIMESTAMP, CONTEXT_TOKENS, GENERATED_TOKENS = "TIMESTAMP", "ContextTokens", "GeneratedTokens"

_MAX_LISTED = 5  # bad rows quoted in one error message


def _keep_mask(prompt_len: np.ndarray, output_len: np.ndarray, max_prompt_len: int | None,
               max_output_len: int | None) -> np.ndarray:
    """Rows within both length caps: over a cap the row is dropped, never clipped (package docstring)."""
    keep = np.ones(len(prompt_len), dtype=bool)
    if max_prompt_len is not None:
        keep &= prompt_len <= max_prompt_len
    if max_output_len is not None:
        keep &= output_len <= max_output_len
    return keep


def _rows_message(df: pd.DataFrame, column: str, bad: np.ndarray) -> str:
    """"column C: data row 3 (line 4): '-5'; ..." for the first few bad rows of a trace frame.

    The data row counts non-blank rows after the header (1-based); the frame's index is the row's position
    among all lines after the header, so ``index + 2`` is its line in the file.
    """
    rows = np.flatnonzero(bad)
    values = df[column].to_numpy()[rows[:_MAX_LISTED]]
    parts = [f"data row {r + 1} (line {df.index[r] + 2}): "
             f"{'empty' if pd.isna(v) else repr(v.item() if isinstance(v, np.generic) else v)}"
             for r, v in zip(rows, values)]
    more = f" and {len(rows) - _MAX_LISTED} more rows" if len(rows) > _MAX_LISTED else ""
    return f"column {column}: " + "; ".join(parts) + more


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        # blank lines are read as empty rows and then dropped, so the index keeps each row's real line number
        df = pd.read_csv(path, skipinitialspace=True, skip_blank_lines=False)
        return df[df.notna().any(axis=1)]
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise WorkloadError(f"{path}: cannot read trace CSV ({type(exc).__name__}: {exc}); expected a CSV file "
                            f"with header {TIMESTAMP},{CONTEXT_TOKENS},{GENERATED_TOKENS}") from None


def _token_column(df: pd.DataFrame, column: str) -> tuple[np.ndarray, str | None]:
    """Integer token counts of ``column`` and a description of its bad rows (None when all are valid)."""
    raw = df[column]
    num = raw if pd.api.types.is_numeric_dtype(raw) else pd.to_numeric(raw, errors="coerce")
    values = num.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~(np.isfinite(values) & (values >= 1) & (values == np.floor(values)))
    if not bad.any():
        return values.astype(np.int64), None
    return values, _rows_message(df, column, bad)


def _timestamps_s(df: pd.DataFrame) -> tuple[np.ndarray, str | None]:
    """Seconds (float64) from a TIMESTAMP column of datetimes (ISO 8601) or plain numbers of seconds."""
    raw = df[TIMESTAMP]
    if pd.api.types.is_numeric_dtype(raw):
        sec = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce")
        sec = np.where(parsed.isna(), np.nan, (parsed - parsed.min()).dt.total_seconds().to_numpy(na_value=np.nan))
    bad = ~np.isfinite(sec)
    if not bad.any():
        return sec, None
    return sec, _rows_message(df, TIMESTAMP, bad)


def load_azure_trace(path: str | Path, *, num_requests: int | None = None, rate: float | None = None,
                     burstiness: float = 1.0, time_scale: float | None = None, max_prompt_len: int | None = None,
                     max_output_len: int | None = None, seed: int = 0) -> Workload:
    """Requests from an Azure-style trace CSV with columns TIMESTAMP, ContextTokens, GeneratedTokens.

    Rows are ordered by TIMESTAMP (stable), requests over the length caps are dropped, then the first
    ``num_requests`` are kept (all when None). Arrivals:

    - default: the trace's own timestamps relative to the first kept request (TIMESTAMP is ISO 8601 datetimes,
      as in the Azure traces, or plain numbers of seconds);
    - ``time_scale``: the trace's inter-arrival gaps multiplied by this factor (0.5 = twice the rate);
    - ``rate`` (requests/s, inf allowed) and ``burstiness``: re-timed by :func:`arrival_times` with ``seed``;
      TIMESTAMP is then optional. ``rate`` and ``time_scale`` exclude each other.

    Any bad input raises one :class:`WorkloadError` naming the file, the bad rows (1-based data row and file
    line) and what is valid: unreadable file, missing columns, no data rows, lengths that are not whole numbers
    >= 1, unparseable timestamps.
    """
    path = Path(path)
    num_requests = check_count("num_requests", num_requests, minimum=1)
    max_prompt_len = check_count("max_prompt_len", max_prompt_len, minimum=1)
    max_output_len = check_count("max_output_len", max_output_len, minimum=1)
    if rate is not None and time_scale is not None:
        raise WorkloadError(f"give rate (re-time to a Poisson/gamma rate) or time_scale (stretch the trace's own "
                            f"gaps), not both; got rate={rate}, time_scale={time_scale}")
    if time_scale is not None and not (isinstance(time_scale, (int, float)) and 0 < time_scale < math.inf):
        raise WorkloadError(f"time_scale must be a finite number > 0, got {time_scale!r}")
    if rate is not None:
        check_rate(rate, burstiness)

    df = _read_csv(path)
    required = [CONTEXT_TOKENS, GENERATED_TOKENS] + ([TIMESTAMP] if rate is None else [])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise WorkloadError(f"{path}: missing column(s) {missing}; found {list(df.columns)}; a trace needs "
                            f"{TIMESTAMP},{CONTEXT_TOKENS},{GENERATED_TOKENS} ({TIMESTAMP} optional when a rate "
                            f"is given)")
    if len(df) == 0:
        raise WorkloadError(f"{path}: no data rows after the header; a trace needs at least one request")

    prompt, bad_prompt = _token_column(df, CONTEXT_TOKENS)
    output, bad_output = _token_column(df, GENERATED_TOKENS)
    ts, bad_ts = _timestamps_s(df) if rate is None else (np.zeros(len(df)), None)
    problems = [p for p in (bad_ts, bad_prompt, bad_output) if p]
    if problems:
        raise WorkloadError(f"{path}: invalid values ({'; '.join(problems)}); valid: {CONTEXT_TOKENS} and "
                            f"{GENERATED_TOKENS} whole numbers >= 1, {TIMESTAMP} an ISO 8601 datetime or "
                            f"seconds")

    order = np.argsort(ts, kind="stable")
    ts, prompt, output = ts[order], prompt[order], output[order]
    keep = _keep_mask(prompt, output, max_prompt_len, max_output_len)
    ts, prompt, output = ts[keep], prompt[keep], output[keep]
    n = take_first(len(prompt), num_requests, str(path))
    ts, prompt, output = ts[:n], prompt[:n], output[:n]

    if rate is not None:
        arrivals = arrival_times(n, rate, burstiness=burstiness, seed=seed)
    else:
        arrivals = ts - ts[0] if n else ts
        if time_scale is not None:
            arrivals = arrivals * time_scale
    log.info("loaded %d requests from %s (%d dropped by length caps)", n, path, int((~keep).sum()))
    return Workload(arrivals, prompt, output, np.zeros(n, dtype=np.int64), None, path.stem)
