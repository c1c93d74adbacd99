"""Whole-trace runs and policy-level consequences that show up only in a full simulation."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sim_helpers import random_workload, run

from balanceroute.policies import make_policy
from balanceroute.sim import SimConfig, simulate
from balanceroute.workload import load_azure_trace

TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "azure_llm_2023_conv.csv"


def test_on_arrival_br0_routes_exactly_like_jsq_load():
    """ALGORITHMS.md: for one request routed on arrival, BR-0's argmax with lowest-load ties is argmin L."""
    wl = random_workload(150, seed=9, rate=25.0)
    br0, _ = run(wl, "br0", num_workers=4)
    jsq_load, _ = run(wl, "jsq_load", num_workers=4)
    pd.testing.assert_frame_equal(br0.requests, jsq_load.requests)


@pytest.mark.slow
@pytest.mark.skipif(not TRACE.is_file(), reason=f"Azure conversation trace not found at {TRACE}")
@pytest.mark.parametrize("prefill", ["colocated", "disaggregated"])
def test_full_azure_conversation_trace_completes(prefill):
    wl = load_azure_trace(TRACE)
    result = simulate(wl, make_policy("jsq_load"), SimConfig(num_workers=8, prefill=prefill))
    s = result.summary
    assert s["completed"] == len(wl) == 19366 and s["failed"] == 0
    assert s["total_output_tokens"] == int(wl.output_len.sum())
    assert 0 < s["mean_imbalance"] and 0 <= s["barrier_idle_fraction"] < 1
