"""End to end on real vLLM (the CPU build, tiny models with random weights): two server start-ups.

1. ``python run.py backend=vllm model=tiny_dense parallel.dp=2 router=round_robin``: the managed server, the
   benchmark, the result files; vLLM's per-engine Prometheus counters agree with the decision log.
2. ``balanceroute serve`` on the tiny MoE with DP=2 and expert parallelism, routed by jsq_load: requests with
   known ids, so every response's usage is compared with the KV load the plugin tracked for it, and every
   decision with what jsq_load says on the snapshot it saw.

No timing assertions: these processes share two cores with whatever else runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from balanceroute.policies import ClusterSnapshot, make_policy
from balanceroute.serving import VllmServer, engine_counter, free_port
from balanceroute.vllm_plugin.decision_log import RELEASE, ROUTE, engine_totals, read_decision_log
from tests.vllm import vllm_venv
from tests.vllm.tiny_models import make_tiny_dense, make_tiny_moe

REASON = vllm_venv.skip_reason()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(REASON is not None, reason=REASON or ""),
              pytest.mark.timeout(1200)]
REPO = vllm_venv.REPO


def _env_overrides(env: dict[str, str]) -> list[str]:
    return [f"+backend.env.{k}='{v}'" for k, v in env.items()]


def _no_process_mentions(text: str) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    return text not in out


# ---- 1. run.py backend=vllm ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("dense")
    model = make_tiny_dense(work / "tiny_dense")
    cpu = {**vllm_venv.env(), **vllm_venv.cpu_env(moe=False, dp=2)}
    server_env = {k: cpu[k] for k in ("VLLM_TARGET_DEVICE", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE",
                                      "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "VLLM_CPU_OMP_THREADS_BIND")}
    args = ["backend=vllm", "model=tiny_dense", "parallel.dp=2", "router=round_robin", f"model.vllm.model={model}",
            f"backend.vllm_bin={vllm_venv.python().parent / 'vllm'}", "workload.num_requests=16",
            "workload.prompt_mean=48", "workload.output_mean=12", "workload.max_prompt_len=600",
            "workload.max_output_len=64", "rate=inf", f"hydra.run.dir={work / 'run'}", *_env_overrides(server_env)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=1100, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = work / "run"
    return run_dir, json.loads((run_dir / "result.json").read_text()), list(read_decision_log(
        run_dir / "decisions.jsonl"))


def test_run_py_serves_benchmarks_and_writes_the_result_files(dense_run):
    run_dir, result, _ = dense_run
    assert result["backend"] == "vllm" and result["router"] == "round_robin" and result["dp"] == 2
    assert result["completed"] == 16 and result["failed"] == 0 and result["token_count_source"] == "usage"
    for name in ("requests.parquet", "timeline.parquet", "vllm_server.log", "decisions.jsonl", ".hydra"):
        assert (run_dir / name).exists(), name
    assert "DP router patched: policy round_robin" in (run_dir / "vllm_server.log").read_text()
    timeline = pd.read_parquet(run_dir / "timeline.parquet")
    assert len(timeline) == 2 * 16 and set(timeline["worker"]) == {0, 1}
    port = result["target_url"].split(":")[2].split("/")[0]
    assert _no_process_mentions(f"--port {port}")  # the server's whole process group is gone


def test_round_robin_decisions_are_where_vllms_counters_say_requests_went(dense_run):
    _, result, events = dense_run
    routes = [ev for ev in events if ev["event"] == ROUTE]
    assert [ev["engine"] for ev in routes] == [0, 1] * 8  # what round_robin says, in arrival order
    assert result["worker_requests"] == result["vllm_engine_requests"] == [8, 8]
    assert result["worker_prompt_tokens"] == result["vllm_engine_prompt_tokens"]
    assert result["worker_output_tokens"] == result["vllm_engine_generation_tokens"]


def test_requests_parquet_names_the_engine_each_request_went_to(dense_run):
    run_dir, result, events = dense_run
    requests = pd.read_parquet(run_dir / "requests.parquet").set_index("request_id")
    assert requests["worker"].value_counts().sort_index().tolist() == [8, 8]
    prefix = result["request_id_prefix"]
    for ev in (ev for ev in events if ev["event"] == ROUTE):  # joined on the X-Request-Id the client sent
        i = int(ev["external_id"].split(prefix + "-")[1].split("-")[0])
        assert requests.loc[i, "worker"] == ev["engine"] and requests.loc[i, "prompt_len"] == ev["prompt_len"]


def test_tracked_tokens_match_the_responses_usage(dense_run):
    run_dir, result, events = dense_run
    requests = pd.read_parquet(run_dir / "requests.parquet")
    releases = [ev for ev in events if ev["event"] == RELEASE]
    assert len(releases) == 16 and {ev["reason"] for ev in releases} == {"length"}
    assert sum(ev["prompt_len"] + ev["output_len"] for ev in releases) == int(
        (requests["prompt_len"] + requests["output_len"]).sum())
    assert sorted(ev["prompt_len"] for ev in releases) == sorted(requests["prompt_len"].tolist())
    assert sum(result["worker_output_tokens"]) == result["total_output_tokens"]


# ---- 2. balanceroute serve, tiny MoE, DP=2 + EP -------------------------------------------------------------------
SERVE_MAIN = ("import argparse, logging, sys\n"
              "from balanceroute.vllm_plugin import serve_cli\n"
              "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
              "p = argparse.ArgumentParser(prog='balanceroute')\n"
              "serve_cli.add_parser(p.add_subparsers(dest='command', required=True))\n"
              "a = p.parse_args(sys.argv[1:])\n"
              "sys.exit(a.func(a))\n")


@pytest.fixture(scope="module")
def moe_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("moe")
    model = make_tiny_moe(work / "tiny_moe")
    port = free_port()
    decisions = work / "decisions.jsonl"
    cmd = [sys.executable, "-c", SERVE_MAIN, "serve", "--model", str(model), "--data-parallel-size", "2",
           "--dp-router", "jsq_load", "--decision-log", str(decisions), "--port", str(port),
           "--vllm-bin", str(vllm_venv.python().parent / "vllm"), "--enable-expert-parallel",
           "--load-format", "dummy", "--dtype", "bfloat16", "--max-model-len", "1024", "--enforce-eager",
           "--max-num-seqs", "8", "--served-model-name", "tiny_moe"]
    env = {**vllm_venv.env(), **vllm_venv.cpu_env(moe=True, dp=2)}
    with VllmServer(cmd, work / "serve.log", "127.0.0.1", port, env=env, cwd=work, ready_timeout_s=900,
                    stop_grace_s=30) as server:
        yield server, decisions


def _post(url: str, body: dict, headers: dict[str, str]) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.load(resp)


def _abort_a_stream(url: str, request_id: str, opened: threading.Event) -> None:
    """A streaming request the client walks away from after its first chunk (vLLM aborts it)."""
    body = {"model": "tiny_moe", "prompt": "the route of the request", "max_tokens": 900, "ignore_eos": True,
            "stream": True}
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-Request-Id": request_id})
    with urllib.request.urlopen(req, timeout=600) as resp:
        resp.readline()
        opened.set()


def _wait_for_release(decisions: Path, prefix: str, timeout_s: float) -> None:
    """Until the decision log shows a request whose id starts with ``prefix`` released (not a timing check: it
    only orders the steps)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(ev["event"] == RELEASE and ev["request_id"].startswith(prefix) for ev in read_decision_log(decisions)):
            return
        time.sleep(0.5)
    raise AssertionError(f"no release of {prefix}* in {decisions} after {timeout_s} s")


@pytest.fixture(scope="module")
def moe_traffic(moe_server):
    """16 concurrent completions of 4 prompt sizes (every fifth pinned to engine 1 by the
    X-data-parallel-rank header), one aborted stream, then one last request that sees the settled load."""
    server, decisions = moe_server
    url = server.url + "/v1/completions"
    opened = threading.Event()
    aborter = threading.Thread(target=_abort_a_stream, args=(url, "abort-0", opened))
    aborter.start()
    opened.wait(600)

    def one(i: int) -> tuple[str, dict]:
        headers = {"X-Request-Id": f"e2e-{i}"}
        if i % 5 == 4:
            headers["X-data-parallel-rank"] = "1"
        body = {"model": "tiny_moe", "prompt": "the route " * (5 + 40 * (i % 4)), "max_tokens": 6 + i,
                "ignore_eos": True, "temperature": 0}
        return f"e2e-{i}", _post(url, body, headers)["usage"]

    with ThreadPoolExecutor(6) as pool:
        usage = dict(pool.map(one, range(16)))
    aborter.join(600)
    _wait_for_release(decisions, "cmpl-abort-0-", 600)
    metrics = server.metrics()
    last = _post(url, {"model": "tiny_moe", "prompt": "the end", "max_tokens": 2}, {"X-Request-Id": "last"})
    events = list(read_decision_log(decisions))
    return usage, metrics, events, last


def _by_request(events: list[dict], kind: str) -> dict[str, dict]:
    """Events of one kind keyed by the id the client gave (X-Request-Id X becomes external id cmpl-X-0)."""
    external = {ev["request_id"]: ev["external_id"] for ev in events if ev["event"] == ROUTE}
    return {external[ev["request_id"]].removeprefix("cmpl-").rsplit("-", 1)[0]: ev
            for ev in events if ev["event"] == kind}


def test_the_moe_runs_expert_parallel_with_the_plugin(moe_server, moe_traffic):
    server, _ = moe_server
    text = server.log_path.read_text()
    assert text.count("Local/global number of experts: 4/8") == 2  # 8 experts split over the 2 DP engines
    assert "DP router patched: policy jsq_load" in text


def test_every_decision_is_what_jsq_load_says_on_the_snapshot_it_saw(moe_traffic):
    _, _, events, _ = moe_traffic
    routes = [ev for ev in events if ev["event"] == ROUTE]
    policy = make_policy("jsq_load")
    replayed = 0
    for ev in routes:
        if ev["how"] == "policy":
            assert policy.choose(ClusterSnapshot.from_loads(ev["kv_load"]), ev["prompt_len"]) == ev["engine"]
            replayed += 1
    assert replayed >= 13
    pinned = {k: ev for k, ev in _by_request(events, ROUTE).items() if k.startswith("e2e-")
              and int(k.split("-")[1]) % 5 == 4}
    assert len(pinned) == 3 and all(ev["engine"] == 1 and ev["how"] == "explicit" for ev in pinned.values())


def test_vllms_per_engine_counters_agree_with_the_decision_log(moe_traffic):
    """Requests and tokens per engine as vLLM counted them equal what the decision log says went there. vLLM
    counts an aborted request's prompt tokens but not the request itself (a client abort is not a success), so
    request counts are compared per finish reason. (Whether the abandoned stream is aborted or
    outruns the disconnect is up to the scheduler; the counts agree either way.)"""
    _, metrics, events, _ = moe_traffic
    before_last = [ev for ev in events if not ev["request_id"].startswith("cmpl-last-")]
    totals = engine_totals(before_last, 2)
    assert sum(totals["worker_requests"]) == 17
    assert engine_counter(metrics, "vllm:prompt_tokens_total", 2) == totals["worker_prompt_tokens"]
    released = {"length": [0, 0], "abort": [0, 0]}
    aborted_tokens = [0, 0]
    for ev in before_last:
        if ev["event"] == RELEASE:
            released[ev["reason"]][ev["engine"]] += 1
            if ev["reason"] == "abort":
                aborted_tokens[ev["engine"]] += ev["output_len"]
    # vLLM's front end stops counting an aborted request's tokens when it drops the request, while the engine
    # may still report (and have cached) a last few: the plugin counts what the engine reported
    generated = engine_counter(metrics, "vllm:generation_tokens_total", 2)
    for g in range(2):
        assert 0 <= totals["worker_output_tokens"][g] - generated[g] <= aborted_tokens[g], (g, generated, totals)
    assert sum(released["length"]) + sum(released["abort"]) == 17  # every request left the router's load
    assert engine_counter(metrics, "vllm:request_success_total", 2, {"finished_reason": "length"}) == \
        released["length"]
    assert engine_counter(metrics, "vllm:request_success_total", 2) == [
        routed - aborted for routed, aborted in zip(totals["worker_requests"], released["abort"])]


def test_tracked_kv_load_matches_each_response(moe_traffic):
    usage, _, events, last = moe_traffic
    routes, releases = _by_request(events, ROUTE), _by_request(events, RELEASE)
    per_engine_usage, per_engine_tracked = [0, 0], [0, 0]
    for rid, u in usage.items():
        assert routes[rid]["prompt_len"] == releases[rid]["prompt_len"] == u["prompt_tokens"], rid
        assert releases[rid]["output_len"] == u["completion_tokens"], rid
        per_engine_usage[routes[rid]["engine"]] += u["prompt_tokens"] + u["completion_tokens"]
        per_engine_tracked[releases[rid]["engine"]] += releases[rid]["prompt_len"] + releases[rid]["output_len"]
    assert per_engine_tracked == per_engine_usage and min(per_engine_usage) > 0
    assert "abort-0" in releases  # the abandoned stream was released too
    assert routes["last"]["kv_load"] == [0.0, 0.0]  # everything before it has left the engines
    assert last["usage"]["completion_tokens"] == 2
