"""Run files: atomic, result.json last, JSON that survives numpy scalars and NaN."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from balanceroute.results import read_result, write_run_files


def frames():
    requests = pd.DataFrame({"request_id": np.arange(3), "status": ["completed", "failed", "unfinished"]})
    timeline = pd.DataFrame({"time_s": [0.0, 0.1], "worker": [0, 1], "kv_load": [5.0, 7.0]})
    return requests, timeline


def test_round_trip_with_numpy_scalars_nan_and_nested_values(tmp_path):
    summary = {"completed": np.int64(3), "mean_ttft_ms": np.float64(12.5), "p99_itl_ms": math.nan,
               "ratio": np.float32(0.25), "worker_requests": np.array([1, 2]), "inf": -math.inf,
               "config": {"model": {"a": np.float64(1e-3)}, "flags": (True, None)}}
    requests, timeline = frames()
    write_run_files(tmp_path / "run", summary, requests, timeline)
    raw = (tmp_path / "run" / "result.json").read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    got = read_result(tmp_path / "run")
    assert got == {"completed": 3, "mean_ttft_ms": 12.5, "p99_itl_ms": None, "ratio": 0.25,
                   "worker_requests": [1, 2], "inf": None,
                   "config": {"model": {"a": 1e-3}, "flags": [True, None]}}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / "requests.parquet"), requests)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / "timeline.parquet"), timeline)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "requests.parquet", "result.json", "timeline.parquet"]  # no temporary files left


def test_frames_are_optional(tmp_path):
    write_run_files(tmp_path, {"completed": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_no_result_file_means_the_run_did_not_complete(tmp_path):
    assert read_result(tmp_path) is None
    assert read_result(tmp_path / "missing") is None


def test_a_failing_write_leaves_no_result_and_no_temporary_file(tmp_path):
    requests = pd.DataFrame({"mixed": [1, "two", 3.0]})  # pyarrow cannot store this column
    with pytest.raises(pa.ArrowException):
        write_run_files(tmp_path, {"completed": 1}, requests)
    assert list(tmp_path.iterdir()) == []


def test_rewriting_replaces_the_previous_result(tmp_path):
    write_run_files(tmp_path, {"completed": 1})
    write_run_files(tmp_path, {"completed": 2})
    assert read_result(tmp_path) == {"completed": 2}


def test_unserialisable_summary_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"offending key\(s\): \['when'\]"):
        write_run_files(tmp_path, {"completed": 1, "when": object()})
    assert list(tmp_path.iterdir()) == []


def test_corrupt_result_names_the_file(tmp_path):
    (tmp_path / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match="result.json: not valid JSON"):
        read_result(tmp_path)
    (tmp_path / "result.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_result(tmp_path)
