"""``balanceroute bench`` end to end: datasets, files, --json, bad arguments, and Ctrl-C in a real process."""
from __future__ import annotations

import asyncio
import json
import signal
import sys

import pandas as pd
import pytest

from balanceroute.metrics import REQUEST_COLUMNS
from tests.support.bench import BENCH_MAIN, bench_parser
from tests.support.vllm_cpu import HERE

REPO = HERE.parents[1]


async def bench(*argv: str) -> tuple[int, str, str]:
    """Run the bench subcommand in a subprocess (the test server lives in this process's event loop)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", BENCH_MAIN, "bench", *argv, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_synthetic_run_writes_vllm_compatible_files_and_json(server_factory, tmp_path):
    srv = await server_factory(ttft_s=0.01, tpot_s=0.001)
    code, out, err = await bench("--target", srv.url + "/v1/completions", "--model", "m", "--num-requests", "12",
                                 "--request-rate", "200", "--prompt-mean", "20", "--output-mean", "6", "--seed", "3",
                                 "--warmup", "2", "--max-concurrency", "4", "--json", "--save-detailed",
                                 "--goodput", "ttft:5000", "e2el:10000", "--output", str(tmp_path / "run"))
    assert code == 0, err
    summary = json.loads(out)  # exactly one JSON object on stdout
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    for key in ("date", "endpoint_type", "backend", "model_id", "num_prompts", "request_rate", "burstiness",
                "max_concurrency", "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                "request_throughput", "output_throughput", "total_token_throughput", "mean_ttft_ms",
                "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms", "mean_e2el_ms", "std_e2el_ms",
                "input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors"):
        assert key in saved, key
    assert saved["completed"] == summary["completed"] == 12 and saved["num_warmups"] == 2
    assert saved["request_rate"] == 200 and saved["max_concurrency"] == 4 and saved["backend"] == "openai"
    assert saved["request_goodput"] == pytest.approx(saved["request_throughput"])  # every request within SLO
    assert len(saved["itls"]) == 12 and all(len(g) == o - 1 for g, o in zip(saved["itls"], saved["output_lens"]))
    requests = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    assert list(requests.columns[: len(REQUEST_COLUMNS)]) == list(REQUEST_COLUMNS) and len(requests) == 12
    assert "%|" in err  # progress bar on stderr


async def test_azure_trace_replayed_on_a_stretched_clock(server, tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" +
                     "".join(f"2023-11-16 18:15:46.{i * 100:06d},{10 + i},{2 + i}\n" for i in range(5)))
    code, out, err = await bench("--target", server.url + "/v1/chat/completions", "--model", "m", "--dataset",
                                 "azure", "--dataset-path", str(trace), "--time-scale", "2", "--json",
                                 "--no-progress", "--output", str(tmp_path / "run"))
    assert code == 0, err
    requests = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    assert requests["scheduled_s"].tolist() == pytest.approx([0.0, 0.0002, 0.0004, 0.0006, 0.0008])
    assert requests["output_len"].tolist() == [2, 3, 4, 5, 6]
    assert json.loads(out)["request_rate"] == "trace"


async def test_sharegpt_texts_are_sent(server, tmp_path):
    data = [{"conversations": [{"from": "human", "value": f"question number {i}"},
                               {"from": "gpt", "value": "an answer of some words"}]} for i in range(4)]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    code, out, err = await bench("--target", server.url + "/v1/completions", "--model", "m", "--dataset",
                                 "sharegpt", "--dataset-path", str(path), "--num-requests", "4", "--no-progress",
                                 "--output", str(tmp_path / "run"))
    assert code == 0, err
    assert sorted(b["prompt"] for b in server.bodies) == [f"question number {i}" for i in range(4)]
    assert "Serving Benchmark Result" in out and "Successful requests:" in out


async def test_unreachable_server_still_writes_the_result_and_says_why(tmp_path):
    from balanceroute.serving import free_port
    url = f"http://127.0.0.1:{free_port()}/v1/completions"
    code, _, err = await bench("--target", url, "--model", "m", "--num-requests", "3", "--json",
                                 "--no-progress", "--output", str(tmp_path / "run"))
    assert code == 1
    assert "no request completed (3 x connection_refused)" in err
    assert json.loads((tmp_path / "run" / "result.json").read_text())["error_counts"] == {"connection_refused": 3}


@pytest.mark.parametrize("argv, message", [
    (["--target", "http://h/v1/embeddings"], "is not an OpenAI endpoint"),
    (["--dataset", "sharegpt"], "--dataset sharegpt needs --dataset-path FILE"),
    (["--time-scale", "2"], "--time-scale re-times a trace; it needs --dataset azure"),
    (["--dataset", "azure", "--dataset-path", "/nonexistent.csv"], "/nonexistent.csv: cannot read trace CSV"),
])
def test_bad_arguments_end_with_one_message(argv, message, capsys, tmp_path):
    base = {"--target": "http://127.0.0.1:9/v1/completions", "--model": "m", "--output": str(tmp_path)}
    for key, value in zip(argv[::2], argv[1::2]):
        base[key] = value
    args = bench_parser().parse_args(["bench", *[x for kv in base.items() for x in kv], "--num-requests", "2"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("balanceroute bench: error:") and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--num-requests", "0"], ["--request-rate", "-1"], ["--goodput", "ttft"],
                                  ["--dataset", "nope"]])
def test_argument_types_are_checked_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_parser().parse_args(["bench", "--target", "http://h/v1/completions", "--model", "m", *argv])
    assert exc.value.code == 2


async def test_sigint_writes_a_partial_result_marked_interrupted(server_factory, tmp_path):
    srv = await server_factory(tpot_s=0.05)  # 100 tokens: 5 s per request
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BENCH_MAIN, "bench", "--target", srv.url + "/v1/completions", "--model", "m",
        "--num-requests", "50", "--request-rate", "20", "--prompt-mean", "8", "--output-mean", "100",
        "--length-distribution", "constant", "--json", "--no-progress", "--output", str(tmp_path / "run"),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    for _ in range(200):  # until a few requests are streaming
        await asyncio.sleep(0.05)
        if srv.handler.served >= 5:
            break
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130, err.decode()
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["interrupted"] is True and json.loads(out)["interrupted"] is True
    assert 5 <= saved["num_sent"] < 50 and saved["unfinished"] >= 5 and saved["completed"] == 0
    requests = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    assert len(requests) == saved["num_sent"] and set(requests["status"]) == {"unfinished"}
    assert requests["output_len"].max() > 0
