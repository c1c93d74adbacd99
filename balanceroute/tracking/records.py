"""Per-request latencies from request records, with the definitions of :mod:`balanceroute.metrics`.

metrics.summarize reduces requests to run statistics; tables of single requests (the W&B request table) and
distributions (the report's CDFs) need the per-request values themselves, computed the same way:
TTFT = first token - arrival, E2EL = finish - arrival, TPOT = (E2EL - TTFT) / (output_len - 1) for completed
requests with more than one output token (NaN otherwise).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def request_latencies(requests: pd.DataFrame) -> pd.DataFrame:
    """``ttft_ms``, ``tpot_ms`` and ``e2el_ms`` for each row of a requests.parquet frame (same index).

    Values are NaN where they are not defined: no first token, not completed (E2EL, TPOT), one output token (TPOT).
    """
    arrival = requests["arrival_s"].to_numpy(dtype=np.float64)
    first = requests["first_token_s"].to_numpy(dtype=np.float64, na_value=np.nan)
    finish = requests["finish_s"].to_numpy(dtype=np.float64, na_value=np.nan)
    output = requests["output_len"].to_numpy(dtype=np.float64)
    done = requests["status"].astype(str).to_numpy() == "completed"
    ttft = first - arrival
    e2el = np.where(done, finish - arrival, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(done & (output > 1), (finish - first) / (output - 1), np.nan)
    return pd.DataFrame({"ttft_ms": ttft * 1000, "tpot_ms": tpot * 1000, "e2el_ms": e2el * 1000},
                        index=requests.index)
