"""``balanceroute sim`` end to end: the table, --json, --output, and one-line errors with exit status 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from balanceroute.cli import main
from balanceroute.metrics import REQUEST_COLUMNS
from balanceroute.results import read_result

#: 30 synthetic requests (Azure conversation lengths) on 2 workers of the default model: well under a second.
SMALL = ["sim", "--num-workers", "2", "--num-requests", "30", "--rate", "5"]


def write_trace(path, n=25):
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [f"2023-11-16 18:15:{i:02d}.000000,{20 + i},{3 + i % 4}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_table_names_the_router_and_the_key_metrics(capsys):
    assert main(SMALL + ["--router", "jsq"]) == 0
    out = capsys.readouterr().out
    for text in ("Router:", "jsq", "Successful requests:", "30", "P95 TPOT (ms):", "Mean imbalance"):
        assert text in out


def test_json_is_one_object_on_stdout_and_output_writes_the_run_files(capsys, tmp_path):
    assert main(SMALL + ["--json", "--output", str(tmp_path / "run"), "--router", "br0",
                         "--dispatch", "pool", "--prefill", "disaggregated"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    summary = json.loads(out)
    assert summary["completed"] == 30 and summary["router"] == "br0" and summary["dispatch"] == "pool"
    assert summary["prefill"] == "disaggregated" and summary["model_preset"]["name"] == "qwen3_30b_a3b"
    assert read_result(tmp_path / "run")["completed"] == 30
    requests = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    assert list(requests.columns) == list(REQUEST_COLUMNS) and len(requests) == 30
    timeline = pd.read_parquet(tmp_path / "run" / "timeline.parquet")
    assert {"time_s", "step", "worker", "kv_load", "running", "waiting"} <= set(timeline.columns)


def test_trace_without_num_requests_runs_the_whole_trace(capsys, tmp_path):
    trace = write_trace(tmp_path / "t.csv")
    assert main(["sim", "--model", "tiny", "--trace", str(trace), "--json", "--no-barrier"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_requests"] == 25 and summary["barrier"] is False


def test_router_params_reach_the_policy(capsys):
    assert main(SMALL + ["--router", "br_h", "--router-param", "predictor=oracle", "--router-param", "H=8",
                         "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["router_params"] == {"predictor": "oracle", "H": 8}


@pytest.mark.parametrize("args, message", [
    (["--router", "nope"], "unknown routing policy 'nope'; valid policies: "),
    (["--model", "gpt"], "unknown model preset 'gpt'; valid presets: tiny"),
    (["--rate", "fast"], "--rate must be requests per second > 0 or inf, got 'fast'"),
    (["--num-workers", "0"], "--num-workers must be an integer >= 1, got '0'"),
    (["--dispatch", "batch"], "dispatch must be one of on_arrival, pool; got 'batch'"),
    (["--prefill", "x"], "prefill must be one of colocated, disaggregated; got 'x'"),
    (["--router-param", "H"], "--router-param must look like KEY=VALUE, got 'H'"),
    (["--router", "br_h", "--router-param", "depth=3"], "br_h: unknown parameter(s) depth"),
])
def test_bad_input_is_one_error_line_and_exit_status_2(capsys, args, message):
    assert main(SMALL + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("balanceroute sim: error:")


def test_missing_trace_file_is_a_clean_error_from_the_real_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "balanceroute.cli", "sim", "--trace", str(tmp_path / "no.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no.csv" in proc.stderr and "Traceback" not in proc.stderr
    assert "valid policies" not in proc.stderr and proc.stdout == ""
