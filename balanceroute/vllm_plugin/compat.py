"""Check that the running vLLM is one whose data-parallel router internals the patch was written against.

The patch replaces a private method and reads private attributes of ``DPLBAsyncMPClient``; vLLM changes them
between releases (0.26 scored ``4*waiting + running``, 0.32 added the KV term and ``engine_inflight``). Routing
with a patch that no longer fits would either crash on the first request or, worse, silently leave vLLM's own
rule in charge while the experiment claims otherwise. So the plugin refuses to start unless:

- the version is one of :data:`TESTED_VERSIONS` (``BALANCEROUTE_VLLM_ANY_VERSION=1`` skips only this check), and
- every class, method, signature, attribute and message field listed here is where the patch expects it.

The checks read code objects (names a method uses, the parameters it takes) and msgspec field lists, so they
run at import time without an engine. :func:`check_vllm` imports the real modules; :func:`internals_problems`
takes them as arguments so that tests can hand it altered copies.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Callable, Iterable

#: ``major.minor`` series whose internals the patch was verified against.
TESTED_VERSIONS = ("0.32",)

#: Instance attributes of DPLBAsyncMPClient the patch reads or keeps consistent, each as vLLM's own routing
#: method uses them (so their presence in its code is the check).
ROUTING_NAMES = ("reqs_in_flight", "engine_inflight", "lb_engines", "core_engines", "client_count",
                 "data_parallel_rank", "pooling_params", "get_late_interaction_engine_index")
#: What vLLM's own output handler uses to retire finished requests; the patch chains to it.
OUTPUT_NAMES = ("finished_requests", "reqs_in_flight", "engine_inflight")
#: msgspec fields the patch reads from the messages between front end and engines.
REQUEST_FIELDS = ("request_id", "prompt_token_ids", "prompt_embeds", "data_parallel_rank", "pooling_params",
                  "external_req_id")
OUTPUT_FIELDS = ("request_id", "new_token_ids", "finish_reason")
OUTPUTS_FIELDS = ("outputs", "finished_requests")
#: What the step log (:mod:`balanceroute.vllm_plugin.step_log`) wraps and reads in the engine core.
ENGINE_STEP_NAMES = ("scheduler", "schedule", "total_num_scheduled_tokens")
SCHEDULER_OUTPUT_FIELDS = ("scheduled_new_reqs", "scheduled_cached_reqs", "num_scheduled_tokens",
                           "total_num_scheduled_tokens")


class VllmCompatError(RuntimeError):
    """The installed vLLM differs from what the DP-router patch relies on."""


def code_names(func: Callable) -> set[str]:
    """Global, attribute and string-constant names used by ``func``, including its nested functions."""
    func = inspect.unwrap(getattr(func, "__func__", func))
    names: set[str] = set()
    stack = [func.__code__]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                stack.append(const)
            elif isinstance(const, str):
                names.add(const)
    return names


def version_problems(version: str, *, any_version: bool = False) -> list[str]:
    """Why ``version`` is not a tested vLLM version (empty when it is, or when ``any_version``)."""
    series = ".".join(version.split("+")[0].split(".")[:2])
    if any_version or series in TESTED_VERSIONS:
        return []
    tested = ", ".join(v + ".x" for v in TESTED_VERSIONS)
    return [(f"vLLM {version} is not a tested version (tested: {tested}); set BALANCEROUTE_VLLM_ANY_VERSION=1 to "
             "try it (the internals below are still checked)")]


def _missing(what: str, needed: Iterable[str], have: set[str]) -> list[str]:
    lost = [n for n in needed if n not in have]
    return [f"{what} no longer uses {', '.join(lost)}"] if lost else []


def _params(func: Callable) -> list[str]:
    return list(inspect.signature(func).parameters)


def internals_problems(core_client: types.ModuleType, engine: types.ModuleType) -> list[str]:
    """Every difference between ``core_client`` (``vllm.v1.engine.core_client``) / ``engine``
    (``vllm.v1.engine``) and what the patch relies on; empty when everything is in place."""
    problems: list[str] = []
    cls = getattr(core_client, "DPLBAsyncMPClient", None)
    if not isinstance(cls, type):
        return ["vllm.v1.engine.core_client.DPLBAsyncMPClient is missing (the internal DP load balancer moved)"]
    where = "DPLBAsyncMPClient"

    route = getattr(cls, "get_core_engine_for_request", None)
    if not callable(route):
        problems.append(f"{where}.get_core_engine_for_request is missing")
    else:
        if _params(route) != ["self", "request"]:
            problems.append(f"{where}.get_core_engine_for_request{inspect.signature(route)} no longer takes "
                            "(self, request)")
        problems += _missing(f"{where}.get_core_engine_for_request", ROUTING_NAMES, code_names(route))
    add = getattr(cls, "add_request_async", None)
    if not callable(add) or "get_core_engine_for_request" not in code_names(add):
        problems.append(f"{where}.add_request_async no longer routes through get_core_engine_for_request")
    if not callable(getattr(core_client, "get_late_interaction_engine_index", None)):
        problems.append("vllm.v1.engine.core_client.get_late_interaction_engine_index is missing")

    handler = inspect.getattr_static(cls, "process_engine_outputs", None)
    if not isinstance(handler, staticmethod):
        problems.append(f"{where}.process_engine_outputs is missing or no longer a staticmethod")
    else:
        func = handler.__func__
        if _params(func) != ["self", "outputs"] or not inspect.iscoroutinefunction(func):
            problems.append(f"{where}.process_engine_outputs{inspect.signature(func)} is no longer "
                            "async (self, outputs)")
        problems += _missing(f"{where}.process_engine_outputs", OUTPUT_NAMES, code_names(func))
    queue_task = getattr(cls, "_ensure_output_queue_task", None)
    if not callable(queue_task) or "process_engine_outputs" not in code_names(queue_task):
        problems.append(f"{where}._ensure_output_queue_task no longer looks up process_engine_outputs by name")
    stats_task = getattr(cls, "_ensure_stats_update_task", None)
    if not callable(stats_task) or "lb_engines" not in code_names(stats_task):
        problems.append(f"{where}._ensure_stats_update_task no longer replaces lb_engines with the "
                        "coordinator's counts")

    for name, fields in (("EngineCoreRequest", REQUEST_FIELDS), ("EngineCoreOutput", OUTPUT_FIELDS),
                         ("EngineCoreOutputs", OUTPUTS_FIELDS)):
        struct = getattr(engine, name, None)
        have = set(getattr(struct, "__struct_fields__", ()))
        lost = [f for f in fields if f not in have]
        if lost:
            problems.append(f"vllm.v1.engine.{name} lacks field(s) {', '.join(lost)}")
    reason = getattr(engine, "FinishReason", None)
    if reason is None or not {"ABORT", "ERROR"} <= set(getattr(reason, "__members__", {})):
        problems.append("vllm.v1.engine.FinishReason lacks ABORT/ERROR")
    return problems


def step_log_problems(core: types.ModuleType, sched_output: types.ModuleType) -> list[str]:
    """Every difference between ``core`` (``vllm.v1.engine.core``) / ``sched_output``
    (``vllm.v1.core.sched.output``) and what the step log relies on; empty when everything is in place."""
    engine = getattr(core, "EngineCore", None)
    if not isinstance(engine, type):
        return ["vllm.v1.engine.core.EngineCore is missing"]
    problems = [f"EngineCore.{name} is missing" for name in ("step", "execute_dummy_batch")
                if not callable(getattr(engine, name, None))]
    if not problems:
        problems += _missing("EngineCore.step", ENGINE_STEP_NAMES, code_names(engine.step))
    fields = {"SchedulerOutput": SCHEDULER_OUTPUT_FIELDS, "NewRequestData": ("num_computed_tokens",),
              "CachedRequestData": ("num_computed_tokens",)}
    for name, needed in fields.items():
        cls = getattr(sched_output, name, None)
        have = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
        lost = [f for f in needed if f not in have]
        if lost:
            problems.append(f"vllm.v1.core.sched.output.{name} lacks field(s) {', '.join(lost)}")
    return problems


def _refuse(problems: list[str], headline: str, remedy: str) -> None:
    """Raise :class:`VllmCompatError` listing ``problems`` (if any) under ``headline``, then ``remedy``."""
    if problems:
        raise VllmCompatError(f"{headline}:\n  - " + "\n  - ".join(problems) + f"\n{remedy}")


def check_step_log(*, any_version: bool = False) -> str:
    """Like :func:`check_vllm`, for the step log."""
    import vllm
    from vllm.v1.core.sched import output
    from vllm.v1.engine import core

    version = str(vllm.__version__)
    _refuse(version_problems(version, any_version=any_version) + step_log_problems(core, output),
            f"balanceroute's step log cannot record vLLM {version}'s engine steps",
            "Unset BALANCEROUTE_STEP_LOG to run vLLM without it.")
    return version


def check_vllm(*, any_version: bool = False) -> str:
    """Import vLLM and raise :class:`VllmCompatError` listing every problem; returns the version when fine."""
    import vllm
    from vllm.v1 import engine
    from vllm.v1.engine import core_client

    version = str(vllm.__version__)
    _refuse(version_problems(version, any_version=any_version) + internals_problems(core_client, engine),
            f"balanceroute's DP router cannot patch vLLM {version}; refusing to start rather than route with "
            "vLLM's own rule", "Unset BALANCEROUTE_DP_ROUTER to run vLLM unpatched.")
    return version
