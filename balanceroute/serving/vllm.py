"""``vllm serve`` as a managed server: its command from the Hydra config, its defaults, its per-engine counters.

:func:`serve_command` turns the ``model.vllm`` section (what to serve and how: max-model-len, memory, dtype, ...),
the ``parallel`` group (DP, TP, EP) and the ``backend`` section (host, port, API servers, extra arguments) into
a ``vllm serve`` command line; :class:`VllmServer` is a :class:`~balanceroute.serving.server.ManagedServer` with
what vLLM needs (minutes to load a model, a long shutdown of its engine processes); :func:`engine_counter` reads
vLLM's per-engine Prometheus counters, an independent check of where requests went.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from balanceroute.serving.server import ManagedServer

#: Keys of ``model.vllm`` that are not ``vllm serve --<key>`` options.
NOT_OPTIONS = ("model", "served_model_name", "tokenizer", "args", "env")


def option_args(options: Mapping[str, Any]) -> list[str]:
    """``{"max_model_len": 1024, "enforce_eager": True, "dtype": None}`` -> ``--max-model-len 1024
    --enforce-eager``: None and False leave an option out, True is a bare flag."""
    args: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def serve_command(vllm_bin: str | os.PathLike, model: Mapping[str, Any], *, dp: int, tp: int, ep: bool,
                  host: str, port: int | str, api_server_count: int | None = None,
                  extra_args: Sequence[str] = ()) -> list[str]:
    """The ``vllm serve`` command for a ``model.vllm`` section and the parallel layout.

    ``model["model"]`` is what vLLM loads (a Hugging Face name or a folder); ``served_model_name`` the name
    requests use (default: the same); every key not in :data:`NOT_OPTIONS` becomes ``--key value``; then
    ``model["args"]`` and ``extra_args`` verbatim (later ones win where vLLM takes the last value).
    """
    cmd = [str(vllm_bin), "serve", str(model["model"]), "--host", host, "--port", str(port),
           "--data-parallel-size", str(dp), "--tensor-parallel-size", str(tp)]
    if ep:
        cmd.append("--enable-expert-parallel")
    if model.get("served_model_name"):
        cmd += ["--served-model-name", str(model["served_model_name"])]
    if api_server_count is not None:
        cmd += ["--api-server-count", str(api_server_count)]
    cmd += option_args({k: v for k, v in model.items() if k not in NOT_OPTIONS})
    return cmd + [str(a) for a in model.get("args") or ()] + [str(a) for a in extra_args]


class VllmServer(ManagedServer):
    """A :class:`ManagedServer` for ``vllm serve``: ready on ``/health``, 15 minutes to load by default, 60 s
    for its engines to shut down before SIGKILL. Other arguments as for :class:`ManagedServer`."""

    def __init__(self, command: Sequence[str], log_path: Path, host: str, port: int, *,
                 ready_timeout_s: float = 900.0, stop_grace_s: float = 60.0, **kwargs: Any) -> None:
        super().__init__("vllm serve", command, log_path, host, port, health_path="/health",
                         ready_timeout_s=ready_timeout_s, stop_grace_s=stop_grace_s,
                         timeout_hint="raise backend.ready_timeout_s if it is just slow", **kwargs)


#: vLLM's per-engine Prometheus counters the results report, as (result key suffix, metric name).
ENGINE_COUNTERS = (("requests", "vllm:request_success_total"), ("prompt_tokens", "vllm:prompt_tokens_total"),
                   ("generation_tokens", "vllm:generation_tokens_total"))
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def engine_counter(metrics_text: str, name: str, num_engines: int, where: Mapping[str, str] | None = None
                   ) -> list[float]:
    """The per-engine values of counter ``name`` from Prometheus text exposition, summed over its other labels
    (such as ``finished_reason``) or only over samples whose labels match ``where``; missing engines count 0."""
    totals = [0.0] * num_engines
    prefix = name + "{"
    for line in metrics_text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, _, value = line[len(prefix):].rpartition("} ")
        found = dict(_LABEL.findall(labels))
        engine = found.get("engine")
        if where and any(found.get(k) != v for k, v in where.items()):
            continue
        if engine is not None and engine.isdigit() and int(engine) < num_engines:
            totals[int(engine)] += float(value.split()[0])
    return totals
