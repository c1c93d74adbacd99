"""The per-request record frame every backend reduces a run to: its schema and its one constructor.

The simulator and the live client both build their ``requests.parquet`` through :func:`records_frame`, so the
two have the same columns, dtypes and status values and :func:`~balanceroute.metrics.summary.summarize` reads
either.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: Request outcome: finished normally, ended with an error, or still in flight when the run stopped.
STATUSES = ("completed", "failed", "unfinished")
STATUS_DTYPE = pd.CategoricalDtype(list(STATUSES))

#: Per-request record schema, in column order, with dtypes:
#:
#: - ``request_id`` int64: the request's index in the workload;
#: - ``worker`` int64: worker it was routed to, -1 if never routed;
#: - ``arrival_s`` float64: arrival time (s, run clock);
#: - ``first_token_s`` float64: time of the first output token, NaN if none;
#: - ``finish_s`` float64: time of the last token (completed) or of the failure, NaN if neither happened;
#: - ``prompt_len`` int64: prompt tokens;
#: - ``output_len`` int64: output tokens actually generated;
#: - ``target_output_len`` int64: output tokens asked for (the workload's length);
#: - ``status`` category of :data:`STATUSES`;
#: - ``error`` str: '' when none, else an error class such as 'timeout', 'http_503', 'connection_refused',
#:   'kv_capacity';
#: - ``preemptions`` int64: times the request was preempted (recompute).
REQUEST_COLUMNS: tuple[str, ...] = ("request_id", "worker", "arrival_s", "first_token_s", "finish_s",
                                    "prompt_len", "output_len", "target_output_len", "status", "error",
                                    "preemptions")
REQUEST_DTYPES: dict[str, Any] = {
    "request_id": np.int64, "worker": np.int64, "arrival_s": np.float64, "first_token_s": np.float64,
    "finish_s": np.float64, "prompt_len": np.int64, "output_len": np.int64, "target_output_len": np.int64,
    "status": STATUS_DTYPE, "error": str, "preemptions": np.int64,
}
#: Columns :func:`records_frame` fills when they are not given.
REQUEST_DEFAULTS: dict[str, Any] = {"worker": -1, "first_token_s": np.nan, "finish_s": np.nan, "error": "",
                                    "preemptions": 0}



def records_frame(**columns: Any) -> pd.DataFrame:
    """A per-request frame with exactly :data:`REQUEST_COLUMNS`, in order, with their dtypes.

    Each keyword is a column (array-like, or a scalar broadcast to all rows); columns in
    :data:`REQUEST_DEFAULTS` may be left out. Raises ``ValueError`` for unknown or missing columns, columns
    of different lengths and statuses outside :data:`STATUSES`.
    """
    unknown = sorted(set(columns) - set(REQUEST_COLUMNS))
    if unknown:
        raise ValueError(f"unknown request column(s) {unknown}; valid: {list(REQUEST_COLUMNS)}")
    missing = [c for c in REQUEST_COLUMNS if c not in columns and c not in REQUEST_DEFAULTS]
    if missing:
        raise ValueError(f"missing request column(s) {missing}; required: "
                         f"{[c for c in REQUEST_COLUMNS if c not in REQUEST_DEFAULTS]}")
    lengths = {k: len(v) for k, v in columns.items() if np.ndim(v) > 0}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"request columns have different lengths: {lengths}")
    n = next(iter(lengths.values()), 1)
    data = {}
    for name in REQUEST_COLUMNS:
        value = columns.get(name, REQUEST_DEFAULTS.get(name))
        if np.ndim(value) == 0:
            value = [value] * n
        if name == "status":
            status = pd.Series(np.asarray(value, dtype=object))
            bad = np.flatnonzero(~status.isin(STATUSES).to_numpy())
            if bad.size:
                raise ValueError(f"request status {status.iloc[bad[0]]!r} (row {int(bad[0])}) is not valid; "
                                 f"valid: {list(STATUSES)}")
            data[name] = pd.Categorical(status, dtype=STATUS_DTYPE)
        elif name == "error":
            data[name] = pd.array(np.asarray(value, dtype=object), dtype="str")
        else:
            data[name] = np.asarray(value, dtype=REQUEST_DTYPES[name])
    return pd.DataFrame(data)
