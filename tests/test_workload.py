"""Workload sources: trace parsing and its error messages, arrivals, synthetic lengths, ShareGPT, caps, seeds."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from balanceroute.protocol.prompt_key import prompt_hash
from balanceroute.workload import (
    AZURE_CONV_OUTPUT_SIGMA,
    AZURE_CONV_PROMPT_SIGMA,
    Workload,
    WorkloadError,
    arrival_times,
    load_azure_trace,
    load_sharegpt,
    synthetic,
)

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZURE_CONV = Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_llm_2023_conv.csv"


def write_trace(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


# ---- Azure-style traces ---------------------------------------------------------------------------------------

def test_trace_replays_timestamps_relative_to_first(tmp_path):
    path = write_trace(tmp_path, ["2023-11-16 18:15:46.6805900,374,44",
                                  "2023-11-16 18:15:50.9951690,396,109",
                                  "2023-11-16 18:16:46.6805900,879,55"])
    wl = load_azure_trace(path)
    np.testing.assert_allclose(wl.arrival_s, [0.0, 4.314579, 60.0], atol=1e-9)
    assert wl.prompt_len.tolist() == [374, 396, 879]
    assert wl.output_len.tolist() == [44, 109, 55]
    assert wl.prompt_hash.tolist() == [0, 0, 0] and wl.prompts is None
    assert wl.name == "trace"


def test_trace_numeric_timestamps_unsorted_rows_and_time_scale(tmp_path):
    path = write_trace(tmp_path, ["10.5,1,2", "10.0,3,4", "12.0,5,6"])
    wl = load_azure_trace(path)
    assert wl.arrival_s.tolist() == [0.0, 0.5, 2.0]
    assert wl.prompt_len.tolist() == [3, 1, 5]  # sorted by TIMESTAMP, lengths move with their row
    assert load_azure_trace(path, time_scale=0.5).arrival_s.tolist() == [0.0, 0.25, 1.0]


@pytest.mark.parametrize("rows, needle", [
    (["0,1,2", "1,2,3", "2,-5,3"], "data row 3 (line 4)"),
    (["0,1,2", "1,abc,3"], "data row 2 (line 3)"),
    (["0,1,2", "1,2,0"], "data row 2 (line 3)"),
    (["0,1,2.5"], "data row 1 (line 2)"),
    (["0,1,2", "1,,3"], "data row 2 (line 3)"),
    (["0,1,2", "yesterday,1,2"], "data row 2 (line 3)"),
])
def test_trace_bad_values_name_file_row_and_valid_range(tmp_path, rows, needle):
    path = write_trace(tmp_path, rows)
    with pytest.raises(WorkloadError) as err:
        load_azure_trace(path)
    msg = str(err.value)
    assert str(path) in msg and needle in msg and "whole numbers >= 1" in msg


def test_trace_error_lists_every_bad_column_and_counts_the_rest(tmp_path):
    rows = [f"{i},-1,{'x' if i == 3 else 4}" for i in range(8)]
    with pytest.raises(WorkloadError) as err:
        load_azure_trace(write_trace(tmp_path, rows))
    msg = str(err.value)
    assert "column ContextTokens" in msg and "and 3 more rows" in msg
    assert "column GeneratedTokens: data row 4 (line 5): 'x'" in msg
    assert "column ContextTokens: data row 1 (line 2): -1" in msg


def test_trace_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = write_trace(tmp_path, ["0,1,2", "", "2,-3,4"])
    with pytest.raises(WorkloadError, match=r"data row 2 \(line 4\): -3"):
        load_azure_trace(path)
    assert load_azure_trace(write_trace(tmp_path, ["0,1,2", "", "1,3,4", ""], name="ok.csv")).prompt_len.tolist() \
        == [1, 3]


def test_trace_missing_column(tmp_path):
    path = write_trace(tmp_path, ["0,1"], header="TIMESTAMP,ContextTokens\n")
    with pytest.raises(WorkloadError) as err:
        load_azure_trace(path)
    assert str(path) in str(err.value) and "GeneratedTokens" in str(err.value)
    # TIMESTAMP is needed only to replay the trace's own timing
    no_ts = write_trace(tmp_path, ["1,2", "3,4"], header="ContextTokens,GeneratedTokens\n", name="no_ts.csv")
    with pytest.raises(WorkloadError, match="TIMESTAMP"):
        load_azure_trace(no_ts)
    assert len(load_azure_trace(no_ts, rate=math.inf)) == 2


@pytest.mark.parametrize("content, needle", [
    (HEADER, "no data rows"),
    ("", "cannot read"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n0,1,2\n1,2,3,4,5\n", "cannot read"),
])
def test_trace_empty_or_malformed_file(tmp_path, content, needle):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(WorkloadError, match=needle) as err:
        load_azure_trace(path)
    assert str(path) in str(err.value)


def test_trace_unreadable_paths(tmp_path):
    for path in (tmp_path / "missing.csv", tmp_path):
        with pytest.raises(WorkloadError, match="cannot read") as err:
            load_azure_trace(path)
        assert str(path) in str(err.value)


def test_trace_caps_drop_rows_and_num_requests_counts_after_caps(tmp_path):
    path = write_trace(tmp_path, ["0,10,5", "1,500,5", "2,20,900", "3,30,6", "4,40,7"])
    wl = load_azure_trace(path, max_prompt_len=100, max_output_len=100)
    assert wl.prompt_len.tolist() == [10, 30, 40] and wl.arrival_s.tolist() == [0.0, 3.0, 4.0]
    assert load_azure_trace(path, max_prompt_len=100, num_requests=2).prompt_len.tolist() == [10, 20]
    with pytest.raises(WorkloadError, match="only 3 requests"):
        load_azure_trace(path, max_prompt_len=100, max_output_len=100, num_requests=4)


def test_trace_rate_retiming(tmp_path):
    rows = [f"{i},{i % 7 + 1},{i % 5 + 1}" for i in range(20_000)]
    path = write_trace(tmp_path, rows)
    wl = load_azure_trace(path, rate=5.0, seed=3)
    gaps = np.diff(wl.arrival_s)
    assert wl.arrival_s[0] == 0.0 and np.all(gaps >= 0)
    assert np.mean(gaps) == pytest.approx(0.2, rel=0.03)
    assert wl.prompt_len.tolist() == [i % 7 + 1 for i in range(20_000)]  # lengths keep trace order
    np.testing.assert_array_equal(wl.arrival_s, load_azure_trace(path, rate=5.0, seed=3).arrival_s)
    assert not np.array_equal(wl.arrival_s, load_azure_trace(path, rate=5.0, seed=4).arrival_s)
    assert np.all(load_azure_trace(path, rate=math.inf).arrival_s == 0)
    with pytest.raises(WorkloadError, match="not both"):
        load_azure_trace(path, rate=5.0, time_scale=2.0)
    with pytest.raises(WorkloadError, match="time_scale"):
        load_azure_trace(path, time_scale=0)


@pytest.mark.skipif(not AZURE_CONV.exists(), reason=f"public trace not present at {AZURE_CONV}")
def test_real_azure_conversation_trace():
    wl = load_azure_trace(AZURE_CONV)
    assert len(wl) == 19_366
    assert wl.arrival_s[-1] == pytest.approx(3502, abs=1)
    assert wl.prompt_len.mean() == pytest.approx(1155, abs=1)
    assert wl.output_len.mean() == pytest.approx(211, abs=1)


# ---- arrivals -------------------------------------------------------------------------------------------------

def test_poisson_arrivals_mean_and_cv():
    t = arrival_times(200_000, 50.0, seed=1)
    gaps = np.diff(t)
    assert t[0] == 0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_sets_cv(burstiness):
    gaps = np.diff(arrival_times(200_000, 10.0, burstiness=burstiness, seed=2))
    assert gaps.mean() == pytest.approx(0.1, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.03)


def test_arrival_edge_cases():
    assert arrival_times(5, math.inf).tolist() == [0.0] * 5
    np.testing.assert_allclose(arrival_times(4, 2.0, burstiness=math.inf), [0, 0.5, 1.0, 1.5])
    assert arrival_times(0, 1.0).size == 0 and arrival_times(1, 1.0).tolist() == [0.0]
    np.testing.assert_array_equal(arrival_times(100, 3.0, seed=7), arrival_times(100, 3.0, seed=7))


@pytest.mark.parametrize("kwargs, needle", [
    ({"rate": 0}, "rate must be > 0"), ({"rate": -2}, "rate must be > 0"), ({"rate": math.nan}, "rate"),
    ({"rate": "fast"}, "must be numbers"), ({"rate": 1, "burstiness": 0}, "burstiness must be > 0"),
    ({"rate": 1, "seed": -1}, "seed"),
])
def test_arrival_validation(kwargs, needle):
    with pytest.raises(WorkloadError, match=needle):
        arrival_times(10, **kwargs)
    with pytest.raises(WorkloadError, match="integer >= 0"):
        arrival_times(-1, 1.0)


# ---- synthetic ------------------------------------------------------------------------------------------------

def test_synthetic_defaults_match_azure_conversation_shape():
    wl = synthetic(200_000, rate=10.0, seed=0)
    assert wl.prompt_len.mean() == pytest.approx(1155, rel=0.02)
    assert wl.output_len.mean() == pytest.approx(211, rel=0.02)
    assert np.median(wl.prompt_len) == pytest.approx(1020, rel=0.02)
    assert np.median(wl.output_len) == pytest.approx(129, rel=0.03)
    assert wl.prompt_len.min() >= 1 and wl.output_len.min() >= 1
    assert AZURE_CONV_PROMPT_SIGMA == pytest.approx(0.4986, abs=1e-3)
    assert AZURE_CONV_OUTPUT_SIGMA == pytest.approx(0.9920, abs=1e-3)


def test_synthetic_seeds_and_independent_streams():
    a, b = synthetic(1000, rate=5.0, seed=11), synthetic(1000, rate=5.0, seed=11)
    for field in ("arrival_s", "prompt_len", "output_len"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.prompt_len, synthetic(1000, rate=5.0, seed=12).prompt_len)
    faster = synthetic(1000, rate=50.0, seed=11)  # a new rate re-times the same requests
    np.testing.assert_array_equal(a.prompt_len, faster.prompt_len)
    np.testing.assert_allclose(faster.arrival_s * 10, a.arrival_s)


def test_synthetic_other_distributions():
    exp = synthetic(200_000, rate=1.0, distribution="exponential", prompt_mean=500, output_mean=100)
    assert exp.prompt_len.mean() == pytest.approx(500, rel=0.02)
    assert exp.output_len.mean() == pytest.approx(100, rel=0.02)
    const = synthetic(10, rate=math.inf, distribution="constant", prompt_mean=64, output_mean=8)
    assert set(const.prompt_len.tolist()) == {64} and set(const.output_len.tolist()) == {8}
    assert np.all(const.arrival_s == 0)
    with pytest.raises(WorkloadError, match="valid: lognormal, exponential, constant"):
        synthetic(10, rate=1.0, distribution="pareto")


def test_synthetic_caps_truncate_the_distribution():
    wl = synthetic(50_000, rate=1.0, max_prompt_len=1000, max_output_len=100, seed=5)
    assert len(wl) == 50_000
    assert wl.prompt_len.max() <= 1000 and wl.output_len.max() <= 100
    # a truncated draw is not a clip: no pile-up at the cap
    assert np.mean(wl.output_len == 100) < 0.02
    with pytest.raises(WorkloadError, match="max_output_len=4"):
        synthetic(10, rate=1.0, distribution="constant", output_mean=8, max_output_len=4)


# ---- ShareGPT -------------------------------------------------------------------------------------------------

class WordTokenizer:
    """A real (if simple) tokenizer: one token per whitespace-separated word."""

    def encode(self, text: str) -> list[str]:
        return text.split()


def conv(*turns: tuple[str, str]) -> dict:
    return {"id": "x", "conversations": [{"from": f, "value": v} for f, v in turns]}


@pytest.fixture
def sharegpt_file(tmp_path):
    data = [
        conv(("human", "hello there friend"), ("gpt", "hi")),
        conv(("system", "be nice"), ("human", "what is two plus two"), ("gpt", "four, I think")),
        conv(("human", "no answer")),                       # no gpt reply: skipped
        conv(("gpt", "reply first"), ("human", "then a question")),  # no reply after the human turn: skipped
        {"id": "y", "conversations": []},                   # empty: skipped
        conv(("human", ""), ("gpt", "empty prompt")),       # empty prompt: skipped
        conv(("human", "a b c d e f g h i j"), ("gpt", "k l m n o p q r s t u v w x y z")),
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    return path


def test_sharegpt_first_exchange_with_tokenizer(sharegpt_file):
    wl = load_sharegpt(sharegpt_file, tokenizer=WordTokenizer(), shuffle=False)
    assert wl.prompts == ["hello there friend", "what is two plus two", "a b c d e f g h i j"]
    assert wl.prompt_len.tolist() == [3, 5, 10] and wl.output_len.tolist() == [1, 3, 16]
    assert wl.prompt_hash.tolist() == [prompt_hash(p) for p in wl.prompts]
    assert np.all(wl.arrival_s == 0) and wl.name == "sharegpt"


def test_sharegpt_fallback_estimate_caps_and_sampling(sharegpt_file):
    wl = load_sharegpt(sharegpt_file, shuffle=False)
    assert wl.prompt_len.tolist() == [5, 5, 5]  # ceil(chars / 4): 18, 20, 19 characters
    assert wl.output_len.tolist() == [1, 4, 8]
    capped = load_sharegpt(sharegpt_file, tokenizer=WordTokenizer(), shuffle=False, max_output_len=3)
    assert capped.prompts == ["hello there friend", "what is two plus two"]
    shuffled = [load_sharegpt(sharegpt_file, num_requests=2, seed=s, rate=4.0).prompts for s in range(8)]
    assert shuffled[0] == load_sharegpt(sharegpt_file, num_requests=2, seed=0, rate=4.0).prompts
    assert len({tuple(p) for p in shuffled}) > 1
    with pytest.raises(WorkloadError, match="only 3 requests"):
        load_sharegpt(sharegpt_file, num_requests=4)


@pytest.mark.parametrize("content, needle", [
    ("{not json", "cannot read ShareGPT JSON"),
    ('{"conversations": []}', "top level is dict"),
    ('[{"conversations": [{"from": "human", "value": "hi"}]}, {"id": 3}]', r"entry \[1\]"),
    ("[]", "no usable conversation"),
])
def test_sharegpt_bad_files(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(WorkloadError, match=needle) as err:
        load_sharegpt(path)
    assert str(path) in str(err.value)


def test_sharegpt_rejects_object_without_encode(sharegpt_file):
    with pytest.raises(WorkloadError, match="encode"):
        load_sharegpt(sharegpt_file, tokenizer=object())


def test_prompt_hash_is_stable_63_bit_and_process_independent():
    h = prompt_hash("What is the capital of France?")
    assert 0 < h < 2 ** 63 and h == prompt_hash("What is the capital of France?")
    assert h != prompt_hash("What is the capital of France?!")
    code = "from balanceroute.protocol.prompt_key import prompt_hash; print(prompt_hash('What is the capital of France?'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == h


# ---- Workload container ---------------------------------------------------------------------------------------

def test_workload_coerces_and_slices():
    wl = Workload([0, 1, 1, 3], [5, 6, 7, 8], [1, 2, 3, 4], [0, 0, 0, 0], ["a", "b", "c", "d"], "w")
    assert wl.arrival_s.dtype == np.float64 and wl.prompt_len.dtype == np.int64
    head = wl.head(2)
    assert len(head) == 2 and head.prompts == ["a", "b"] and head.name == "w"
    sub = wl[wl.prompt_len % 2 == 0]
    assert sub.prompt_len.tolist() == [6, 8] and sub.prompts == ["b", "d"] and sub.arrival_s.tolist() == [1, 3]
    assert wl.with_arrivals(np.zeros(4)).arrival_s.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("kwargs, needle", [
    ({"arrival_s": [0, 1, 2]}, "equal lengths"),
    ({"arrival_s": [0, 2, 1, 3]}, "non-decreasing"),
    ({"output_len": [1, 0, 1, 1]}, "output_len must be >= 1"),
    ({"arrival_s": [0, np.nan, 1, 2]}, "finite"),
])
def test_workload_rejects_broken_columns(kwargs, needle):
    cols = {"arrival_s": [0, 1, 2, 3], "prompt_len": [1, 1, 1, 1], "output_len": [1, 1, 1, 1],
            "prompt_hash": [0, 0, 0, 0]}
    with pytest.raises(WorkloadError, match=needle):
        Workload(**{**cols, **kwargs})
