"""The plugin's parts that need no vLLM: the environment contract, the version check, the client router (same
decisions as the simulator's Router; vLLM's coordinator counts and refreshes), the decision log, and
``balanceroute serve``'s command line."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os

import numpy as np
import pytest

from balanceroute.policies import ClusterSnapshot, make_policy
from balanceroute.vllm_plugin import serve_cli
from balanceroute.vllm_plugin.client_router import ClientRouter
from balanceroute.vllm_plugin.compat import TESTED_VERSIONS, version_problems
from balanceroute.vllm_plugin.config import DECISION_LOG_ENV, PARAMS_ENV, ROUTER_ENV, UNPATCHED_ENV, RouterConfig
from balanceroute.vllm_plugin.decision_log import DecisionLog, engine_totals, read_decision_log
from tests.vllm.scenario import TRACKED_POLICIES, make_events, simulator_decisions


# ---- the environment contract ------------------------------------------------------------------------------------
def test_no_router_variable_means_no_router():
    assert RouterConfig.from_env({}) is None
    assert RouterConfig.from_env({ROUTER_ENV: "  ", PARAMS_ENV: "{not json"}) is None


def test_config_round_trips_through_the_environment(tmp_path):
    config = RouterConfig("fast_phi", {"K": 3, "seed": 1}, tmp_path / "d.jsonl")
    env = config.to_env()
    assert env == {ROUTER_ENV: "fast_phi", PARAMS_ENV: '{"K": 3, "seed": 1}',
                   DECISION_LOG_ENV: str(tmp_path / "d.jsonl")}
    assert RouterConfig.from_env(env) == config
    assert config.build_policy().K == 3
    unlogged = RouterConfig("jsq").to_env()
    assert unlogged[DECISION_LOG_ENV] == "" and RouterConfig.from_env(unlogged).decision_log is None
    assert RouterConfig.from_env({**env, **UNPATCHED_ENV}) is None


@pytest.mark.parametrize("raw, message", [
    ("{K: 3}", f"{PARAMS_ENV}='{{K: 3}}' is not valid JSON"),
    ("[3]", f"{PARAMS_ENV}='[3]' must be a JSON object of policy parameters"),
])
def test_bad_parameters_name_the_variable(raw, message):
    with pytest.raises(ValueError) as err:
        RouterConfig.from_env({ROUTER_ENV: "jsq", PARAMS_ENV: raw})
    assert str(err.value).startswith(message)


# ---- the version check -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["0.32.0", "0.32.0+cpu", "0.32.4"])
def test_tested_versions_pass(version):
    assert "0.32" in TESTED_VERSIONS and version_problems(version) == []


@pytest.mark.parametrize("version", ["0.26.1", "0.33.0", "1.0.0+cu129", "0.3.2"])
def test_other_versions_are_refused_unless_allowed(version):
    problems = version_problems(version)
    assert len(problems) == 1 and f"vLLM {version} is not a tested version" in problems[0]
    assert "BALANCEROUTE_VLLM_ANY_VERSION=1" in problems[0]
    assert version_problems(version, any_version=True) == []


# ---- the client router -------------------------------------------------------------------------------------------
def _client_decisions(policy: str, events: list[dict], engines: int, log=None) -> tuple[list[int], ClientRouter]:
    """The scenario through :class:`ClientRouter` as the patch drives it (vLLM-free counterpart of the probe)."""
    router = ClientRouter(RouterConfig(policy, {"seed": 0}, log), engines)
    counts, inflight, decisions = [[0, 0, 0.0] for _ in range(engines)], np.zeros(engines, dtype=np.int64), []
    for ev in events:
        if ev["op"] == "add":
            router.observe_counts(counts, inflight.tolist())
            engine = router.route(ev["id"], len(ev["tokens"]), token_ids=ev["tokens"], engine=ev["rank"],
                                  how="policy" if ev["rank"] is None else "explicit")
            inflight[engine] += 1
            decisions.append(engine)
        elif ev["op"] == "coord":
            counts = ev["counts"]
        elif ev["op"] == "step":
            router.tokens(list(ev["tokens"]), list(ev["tokens"].values()))
            for r in [*ev["finish"], *ev["abort"]]:
                if r in router.tracker:
                    inflight[router.tracker.worker_of(r)] -= 1
            for r, reason in ev["finish"].items():
                router.release(r, reason)
            for r in ev["abort"]:
                router.release(r, "abort")
    return decisions, router


@pytest.mark.parametrize("policy", TRACKED_POLICIES)
def test_client_router_decides_as_the_simulator_router(policy):
    events = make_events(seed=3, num_requests=120, num_engines=4)
    want, _, tracker = simulator_decisions(policy, events, 4)
    got, router = _client_decisions(policy, events, 4)
    assert got == want
    np.testing.assert_array_equal(router.tracker.kv_load, tracker.kv_load)


def test_snapshot_takes_queue_counts_from_the_coordinator_and_load_from_routing():
    router = ClientRouter(RouterConfig("jsq_load"), 2)
    router.observe_counts([[3, 1, 0.25], [0, 2, 0.5]], [8, 4])
    router.route("a", 100)
    snap = router.tracker.last_snapshot
    assert snap.kv_load.tolist() == [0, 0] and snap.epoch == 1
    assert snap.waiting.tolist() == [3, 0] and snap.running.tolist() == [1, 2]
    assert snap.kv_usage.tolist() == [0.25, 0.5] and snap.inflight.tolist() == [8, 4]
    router.route("b", 10)
    assert router.tracker.last_snapshot.kv_load.tolist() == [100, 0]
    assert snap.kv_load.tolist() == [0, 0]  # a logged snapshot is not changed by later routing
    router.tokens(["a", "b", "unknown"], [5, 2, 9])
    assert router.tracker.kv_load.tolist() == [105, 12]
    router.release("a", "length")
    router.release("a", "abort")  # reported twice (output and finished set): released once
    assert router.tracker.kv_load.tolist() == [0, 12] and len(router.tracker) == 1


def test_coordinator_refresh_is_a_new_list_and_ends_vllm_default_bumps():
    """vLLM replaces lb_engines on each coordinator update and bumps it in place in between: only a new list is a
    new epoch, so vllm_default's optimistic bumps accumulate until the next update, as in vLLM."""
    router = ClientRouter(RouterConfig("vllm_default"), 2)
    counts = [[0, 0, 0.0], [0, 0, 0.0]]
    picks = []
    for i in range(4):
        router.observe_counts(counts, [0, 0])
        picks.append(router.route(f"r{i}", 10))
        counts[picks[-1]][0] += 1  # vLLM's own in-place bump (kept by the patch), not a refresh
    assert router.tracker.refreshes == 1 and picks == [0, 1, 0, 1]
    router.observe_counts([[0, 0, 0.0], [5, 0, 0.0]], [0, 0])  # an update: engine 1 has a queue
    assert router.tracker.refreshes == 2
    assert [router.route(f"s{i}", 10) for i in range(3)] == [0, 0, 0]  # 4*waiting: 0,4,8 < 20


def test_vllm_kv_on_a_snapshot_matches_vllm_0_32s_score():
    """Spot check of the formula the probe verifies against vLLM itself: max(inflight, w + r) + w*6*max(0, u-0.5)."""
    snap = ClusterSnapshot.from_loads([0, 0, 0], waiting=[1, 0, 2], running=[2, 5, 0], inflight=[3, 5, 1],
                                      kv_usage=[0.9, 0.1, 0.4])
    # engine 0: max(3, 3) + 1*6*0.4 = 5.4; engine 1: max(5, 5) = 5; engine 2: max(1, 2) + 0 = 2
    assert make_policy("vllm_kv").choose(snap, 10) == 2


# ---- the decision log --------------------------------------------------------------------------------------------
def _log_from_process(path: str, client: int, n: int) -> None:
    log = DecisionLog(path, client=client, policy="jsq")
    snap = ClusterSnapshot.from_loads([1.0, 2.0])
    for i in range(n):
        log.route(f"c{client}-{i}", None, i % 2, "policy", 10 + i, snap)
        log.release(f"c{client}-{i}", i % 2, 10 + i, 3, "length")
    log.close()


def test_decision_log_lines_from_several_processes_stay_whole(tmp_path):
    path = str(tmp_path / "sub" / "decisions.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_log_from_process, args=(path, c, 300)) for c in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    events = list(read_decision_log(path))
    assert len(events) == 3 * 300 * 2
    assert {ev["pid"] for ev in events} == {p.pid for p in procs}
    route = next(ev for ev in events if ev["event"] == "route")
    assert route["kv_load"] == [1.0, 2.0] and route["policy"] == "jsq" and route["how"] == "policy"
    totals = engine_totals(events, 2)
    assert totals["worker_requests"] == [450, 450] and totals["worker_output_tokens"] == [1350, 1350]
    assert sum(totals["worker_prompt_tokens"]) == 3 * sum(range(10, 310))


def test_a_line_cut_off_by_a_killed_process_is_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"event": "release", "engine": 0}) + "\n" + '{"event": "rou')
    assert list(read_decision_log(path)) == [{"event": "release", "engine": 0}]


def test_client_router_writes_one_route_line_per_decision(tmp_path):
    events = make_events(seed=5, num_requests=30, num_engines=2)
    decisions, _ = _client_decisions("br0", events, 2, log=tmp_path / "d.jsonl")
    logged = list(read_decision_log(tmp_path / "d.jsonl"))
    routes = [ev for ev in logged if ev["event"] == "route"]
    assert [ev["engine"] for ev in routes] == decisions and all(ev["pid"] == os.getpid() for ev in logged)
    assert {ev["how"] for ev in routes} <= {"policy", "explicit"}


# ---- balanceroute serve ------------------------------------------------------------------------------------------
def _serve(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="balanceroute")
    serve_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *argv])


def _fake_vllm(tmp_path):
    exe = tmp_path / "vllm"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


def test_serve_passes_unknown_options_to_vllm_in_order(tmp_path, capsys):
    args = _serve(["--model", "Qwen/Qwen3-30B-A3B", "--enable-expert-parallel", "--data-parallel-size", "4",
                   "--max-model-len", "16384", "--dp-router", "fast_phi", "--dp-router-param", "K=3",
                   "--tensor-parallel-size", "2", "--port", "9000", "--gpu-memory-utilization=0.85",
                   "--vllm-bin", str(_fake_vllm(tmp_path)), "--dry-run"])
    assert args.vllm_args == ["--enable-expert-parallel", "--max-model-len", "16384", "--gpu-memory-utilization=0.85"]
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{ROUTER_ENV}=fast_phi {PARAMS_ENV}='{{\"K\": 3}}' ")
    assert line.endswith(f"{tmp_path}/vllm serve Qwen/Qwen3-30B-A3B --data-parallel-size 4 --tensor-parallel-size 2 "
                         "--host 127.0.0.1 --port 9000 --api-server-count 1 --enable-expert-parallel "
                         "--max-model-len 16384 --gpu-memory-utilization=0.85")


def test_serve_keeps_a_given_api_server_count(tmp_path):
    args = _serve(["--model", "m", "--dp-router", "jsq", "--api-server-count=4", "--data-parallel-size", "4"])
    cmd = serve_cli.serve_command(args, _fake_vllm(tmp_path))
    assert cmd.count("--api-server-count=4") == 1 and "--api-server-count" not in cmd


@pytest.mark.parametrize("argv, message", [
    (["--dp-router", "fast_phi", "--dp-router-param", "K=0"], "error: fast_phi: parameter K must be an integer >= 1"),
    (["--dp-router", "jsq", "--dp-router-param", "Q=1"], "error: jsq: unknown parameter(s) Q; valid parameters: seed"),
    (["--dp-router", "jsq", "--data-parallel-size", "0"], "error: --data-parallel-size and --tensor-parallel-size"),
    (["--dp-router", "jsq", "--vllm-bin", "/nowhere/vllm"],
     "error: the vllm executable given (/nowhere/vllm) is not an executable file"),
])
def test_serve_errors_are_one_line(argv, message, capsys):
    args = _serve(["--model", "m", *argv, "--dry-run"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_serve_rejects_a_parameter_without_a_key(capsys):
    with pytest.raises(SystemExit):
        _serve(["--model", "m", "--dp-router", "jsq", "--dp-router-param", "K"])
    assert "argument --dp-router-param: must look like KEY=VALUE, got 'K'" in capsys.readouterr().err


def test_serve_rejects_an_unknown_policy_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        _serve(["--model", "m", "--dp-router", "nope"])
    assert "invalid choice: 'nope' (choose from 'bf_io', 'br0'" in capsys.readouterr().err
