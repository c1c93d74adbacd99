"""What one run asks SLURM for, derived from its configuration and the launcher's settings.

A simulator run needs one task with ``hydra.launcher.cpus_per_task`` CPUs and ``mem_gb`` of memory. A run that
serves a model (``backend=vllm``) needs ``parallel.dp * parallel.tp`` GPUs: whole nodes of
``hydra.launcher.gpus_per_node`` GPUs laid out by :class:`balanceroute.serving.multinode.NodeLayout`,
``cpus_per_gpu`` CPUs per GPU and ``server_mem_gb`` of host memory per node, each overridden by the model's entry
of ``hydra.launcher.model_resources`` (host memory, time limit, node constraint such as a GPU type). On several
nodes the job body runs once, on the first node (``srun --nodes=1 --ntasks=1``); the other nodes are reached from
there through ``srun`` (Ray workers or headless vLLM engines).

The result is computed per run, so one sweep can mix allocations (``model=qwen3_0_6b,qwen3_30b_a3b`` or
``parallel.dp=8,16``): the launcher groups runs with equal requests into one job array each.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from balanceroute.serving.multinode import LayoutError, NodeLayout

#: Backends that start a model server on the allocation's GPUs (their runs get GPUs and whole-node layouts).
SERVER_BACKENDS = frozenset({"vllm"})

#: Launcher settings passed to submitit unchanged (hydra-submitit-launcher's names).
PASSTHROUGH = ("partition", "account", "qos", "comment", "exclude", "signal_delay_s", "additional_parameters",
               "array_parallelism", "setup", "stderr_to_stdout", "name")
#: Keys an entry of ``hydra.launcher.model_resources`` may set.
MODEL_RESOURCE_KEYS = ("mem_gb", "timeout_min", "constraint", "gpus_per_node", "cpus_per_gpu")


class ResourceError(ValueError):
    """A launcher setting or run configuration that cannot become a SLURM request; names the key."""


@dataclass(frozen=True)
class JobResources:
    """The allocation of one run. ``layout`` is None for runs without a model server."""

    nodes: int
    tasks_per_node: int
    cpus_per_task: int | None
    gpus_per_node: int | None
    mem_gb: float | None
    timeout_min: int
    constraint: str | None
    layout: NodeLayout | None
    other: tuple[tuple[str, Any], ...]  # the PASSTHROUGH settings, as sorted items (hashable)

    def submitit_parameters(self) -> dict[str, Any]:
        """Keyword arguments for ``submitit.SlurmExecutor.update_parameters`` (its sbatch names; None values left
        out)."""
        other = dict(self.other)
        params: dict[str, Any] = {
            "nodes": self.nodes, "ntasks_per_node": self.tasks_per_node, "cpus_per_task": self.cpus_per_task,
            "gpus_per_node": self.gpus_per_node, "mem": None if self.mem_gb is None else _sbatch_mem(self.mem_gb),
            "time": self.timeout_min, "constraint": self.constraint, "job_name": other.pop("name", None),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in other.items()}}
        if self.nodes > 1:
            # One job body on the first node; the other nodes are started from it (Ray workers, headless vLLM).
            params["srun_args"] = ["--nodes=1", "--ntasks=1"]
        return {k: v for k, v in params.items() if v is not None and v != [] and v != {}}

    def describe(self) -> str:
        """One line for logs and ``balanceroute plan``: nodes, GPUs and layout, CPUs, memory, time."""
        parts = [f"{self.nodes} node{'s' if self.nodes > 1 else ''}"]
        if self.layout is not None:
            lay = self.layout
            devices = lay.gpus_used_per_node
            parts.append(f"{devices} {'GPU' if self.gpus_per_node else 'device (no GPU requested)'}"
                         f"{'s' if devices > 1 else ''} per node "
                         f"(dp={lay.dp} x tp={lay.tp}: {lay.ranks_per_node} rank{'s' if lay.ranks_per_node > 1 else ''}"
                         f" per node)")
        if self.cpus_per_task is not None:
            parts.append(f"{self.cpus_per_task * self.tasks_per_node} CPU{'s' if self.cpus_per_task > 1 else ''}"
                         f"{' per node' if self.nodes > 1 else ''}")
        if self.mem_gb is not None:
            parts.append(f"{self.mem_gb:g} GB{' per node' if self.nodes > 1 else ''}")
        parts.append(f"{self.timeout_min} min")
        if self.constraint:
            parts.append(f"constraint {self.constraint}")
        return ", ".join(parts)

    def key(self) -> tuple:
        """Runs with equal keys can share one job array."""
        return tuple(sorted((k, repr(v)) for k, v in self.submitit_parameters().items()))


def _sbatch_mem(gb: float) -> str:
    """sbatch's --mem value: whole gigabytes as ``64GB``, fractions in megabytes."""
    return f"{int(gb)}GB" if float(gb).is_integer() else f"{int(gb * 1024)}MB"


def _positive_int(key: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ResourceError(f"{key}: must be an integer >= 1{' or null' if allow_none else ''}, got {value!r}")
    return int(value)


def _positive_number(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ResourceError(f"{key}: must be a number > 0 or null, got {value!r}")
    return value


def model_resources(launcher: Mapping[str, Any], model: str) -> dict[str, Any]:
    """``hydra.launcher.model_resources[model]`` checked ({} for a model without an entry)."""
    table = launcher.get("model_resources") or {}
    entry = dict(table.get(model) or {})
    unknown = sorted(set(entry) - set(MODEL_RESOURCE_KEYS))
    if unknown:
        raise ResourceError(f"hydra.launcher.model_resources.{model}: unknown key(s) {', '.join(unknown)}; valid "
                            f"keys: {', '.join(MODEL_RESOURCE_KEYS)}")
    return {k: v for k, v in entry.items() if v is not None}


def job_resources(launcher: Mapping[str, Any], cfg: DictConfig) -> JobResources:
    """The allocation for the run ``cfg`` under the launcher settings ``launcher`` (``hydra.launcher``, resolved)."""
    other = tuple(sorted((k, launcher[k]) for k in PASSTHROUGH if launcher.get(k) is not None))
    other = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in other)
    timeout = _positive_int("hydra.launcher.timeout_min", launcher.get("timeout_min", 60))
    tasks = _positive_int("hydra.launcher.tasks_per_node", launcher.get("tasks_per_node", 1))
    fixed_nodes = _positive_int("hydra.launcher.nodes", launcher.get("nodes"), allow_none=True)
    if cfg.backend.name not in SERVER_BACKENDS:
        return JobResources(
            nodes=fixed_nodes or 1, tasks_per_node=tasks,
            cpus_per_task=_positive_int("hydra.launcher.cpus_per_task", launcher.get("cpus_per_task"),
                                        allow_none=True),
            gpus_per_node=None, mem_gb=_positive_number("hydra.launcher.mem_gb", launcher.get("mem_gb")),
            timeout_min=timeout, constraint=launcher.get("constraint"), layout=None, other=other)

    model = model_resources(launcher, cfg.model.name)
    prefix = f"hydra.launcher.model_resources.{cfg.model.name}"

    def setting(key: str, launcher_key: str | None = None) -> tuple[str, Any]:
        """The model's value of ``key``, else the launcher's ``launcher_key`` (default: the same name)."""
        if key in model:
            return f"{prefix}.{key}", model[key]
        launcher_key = launcher_key or key
        return f"hydra.launcher.{launcher_key}", launcher.get(launcher_key)

    gpus_key, gpus = setting("gpus_per_node")
    gpus = _positive_int(gpus_key, gpus)
    try:
        layout = NodeLayout.plan(cfg.parallel.dp, cfg.parallel.tp, gpus)
    except LayoutError as exc:
        raise ResourceError(str(exc).replace("hydra.launcher.gpus_per_node", gpus_key)) from None
    if fixed_nodes is not None and fixed_nodes != layout.nodes:
        raise ResourceError(f"hydra.launcher.nodes: {fixed_nodes} given, but parallel.dp={layout.dp} x "
                            f"tp={layout.tp} on {gpus}-GPU nodes needs {layout.nodes}; leave it null (derived)")
    cpus_key, cpus_per_gpu = setting("cpus_per_gpu")
    cpus_per_gpu = _positive_int(cpus_key, cpus_per_gpu)
    mem_key, mem = setting("mem_gb", "server_mem_gb")
    timeout_key, timeout_value = setting("timeout_min")
    request_gpus = launcher.get("request_gpus", True)
    if not isinstance(request_gpus, bool):
        raise ResourceError(f"hydra.launcher.request_gpus: must be true or false, got {request_gpus!r}")
    return JobResources(
        nodes=layout.nodes, tasks_per_node=1, cpus_per_task=cpus_per_gpu * layout.gpus_used_per_node,
        gpus_per_node=layout.gpus_used_per_node if request_gpus else None, mem_gb=_positive_number(mem_key, mem),
        timeout_min=_positive_int(timeout_key, timeout_value), constraint=setting("constraint")[1],
        layout=layout, other=other)
