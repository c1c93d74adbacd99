"""One vLLM data-parallel deployment over several nodes of an allocation.

:class:`NodeLayout` says how ``dp`` ranks of ``tp`` GPUs each spread over nodes of ``gpus_per_node`` GPUs (a
tensor-parallel group never spans nodes). The vLLM command itself (model, ``--data-parallel-size``,
``--tensor-parallel-size``, expert parallelism, memory settings) is built by :mod:`balanceroute.serving.vllm`;
this module adds what only exists with several nodes, in one of two modes:

- ``ray`` (default): a Ray cluster over the nodes (:class:`~balanceroute.serving.ray_cluster.RayCluster`: head on
  the first node, a worker on each other node through ``srun``), then on the first node ``vllm serve ...
  --data-parallel-backend ray --data-parallel-size-local L --data-parallel-address HEAD_IP`` with
  ``RAY_ADDRESS`` pointing at the cluster; vLLM places the remaining ranks through Ray.
- ``native``: vLLM's own multi-node mode, no Ray: ``vllm serve ... --headless --data-parallel-start-rank i*L``
  on every other node (through ``srun``) and the front end on the first, all meeting at
  ``--data-parallel-address HEAD_IP --data-parallel-rpc-port PORT``.

:func:`serve_across_nodes` starts what the other nodes need and yields the extra arguments and environment for
the command on the first node; leaving it stops everything it started. :func:`across_allocation` is what the vllm
backend wraps its server in: the same, with the nodes read from SLURM's environment, and nothing at all outside
SLURM or on one node.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from balanceroute.policies.checks import int_problem
from balanceroute.serving.process import ManagedProcess, free_port
from balanceroute.serving.ray_cluster import NodeCommand, RayCluster, RayNodeSpec
from balanceroute.serving.slurm import Allocation, node_ip, srun_on

log = logging.getLogger(__name__)

MODES = ("ray", "native")


class LayoutError(ValueError):
    """A parallel configuration that cannot be laid out on the nodes; the message names the key to change."""


@dataclass(frozen=True)
class NodeLayout:
    """``dp`` data-parallel ranks of ``tp`` GPUs each on ``nodes`` nodes, ``ranks_per_node`` ranks per node
    (``gpus_used_per_node`` GPUs of each node in use)."""

    dp: int
    tp: int
    gpus_per_node: int
    nodes: int
    ranks_per_node: int

    @classmethod
    def plan(cls, dp: int, tp: int, gpus_per_node: int) -> NodeLayout:
        """The fewest nodes that hold ``dp * tp`` GPUs; LayoutError if a tensor-parallel group does not fit a
        node or the ranks cannot be spread evenly (vLLM runs the same number of ranks on every node)."""
        for key, value in (("parallel.dp", dp), ("parallel.tp", tp), ("hydra.launcher.gpus_per_node",
                                                                      gpus_per_node)):
            problem = int_problem(value, 1)
            if problem:
                raise LayoutError(f"{key}: {problem}")
        if tp > gpus_per_node or gpus_per_node % tp:
            raise LayoutError(f"parallel.tp: {tp} GPUs per rank do not divide the {gpus_per_node} GPUs of a node "
                              f"(hydra.launcher.gpus_per_node); a tensor-parallel group must fit on one node")
        per_node = gpus_per_node // tp
        if dp <= per_node:
            return cls(dp, tp, gpus_per_node, nodes=1, ranks_per_node=dp)
        if dp % per_node:
            valid = ", ".join(str(per_node * k) for k in range(1, 5))
            raise LayoutError(f"parallel.dp: {dp} ranks do not fill whole nodes of {per_node} ranks "
                              f"({gpus_per_node} GPUs / tp={tp}); use at most {per_node} or a multiple "
                              f"({valid}, ...)")
        return cls(dp, tp, gpus_per_node, nodes=math.ceil(dp / per_node), ranks_per_node=per_node)

    @classmethod
    def on_nodes(cls, dp: int, tp: int, nodes: int) -> NodeLayout:
        """The layout of ``dp`` ranks over the ``nodes`` nodes of an allocation (inside the job, where the node
        count is given): ``dp / nodes`` ranks on each; LayoutError if they do not divide evenly."""
        if dp % nodes:
            raise LayoutError(f"parallel.dp: {dp} ranks cannot be spread evenly over the allocation's {nodes} "
                              "nodes (vLLM runs the same number of ranks on every node)")
        per_node = dp // nodes
        return cls(dp, tp, gpus_per_node=per_node * tp, nodes=nodes, ranks_per_node=per_node)

    @property
    def gpus_used_per_node(self) -> int:
        return self.ranks_per_node * self.tp

    def start_rank(self, node_index: int) -> int:
        """The first data-parallel rank on node ``node_index`` (0 = the head)."""
        return node_index * self.ranks_per_node


def check_mode(mode: str) -> None:
    """LayoutError naming ``backend.multinode`` (where users set it) unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise LayoutError(f"backend.multinode: unknown multi-node mode {mode!r}; valid modes: {', '.join(MODES)}")


def head_args(layout: NodeLayout, mode: str, head_ip: str, rpc_port: int | str | None = None) -> list[str]:
    """Arguments added to ``vllm serve`` on the first node (none for a single node)."""
    check_mode(mode)
    if layout.nodes == 1:
        return []
    args = ["--data-parallel-size-local", str(layout.ranks_per_node), "--data-parallel-address", head_ip]
    if mode == "ray":
        return [*args, "--data-parallel-backend", "ray"]
    if rpc_port is None:
        raise LayoutError("native multi-node mode needs an RPC port on the head node")
    return [*args, "--data-parallel-rpc-port", str(rpc_port)]


def headless_command(base_command: Sequence[str]) -> list[str]:
    """The deployment's command without what a headless node must not get: ``--api-server-count`` (vLLM refuses
    it with ``--headless``; such a node runs engines only)."""
    out, skip = [], False
    for arg in base_command:
        if skip:
            skip = False
        elif arg == "--api-server-count":
            skip = True
        elif not arg.startswith("--api-server-count="):
            out.append(arg)
    return out


def headless_args(layout: NodeLayout, node_index: int, head_ip: str, rpc_port: int | str) -> list[str]:
    """Arguments added to ``vllm serve`` on node ``node_index`` >= 1 in native mode: engines only, no API."""
    if not 1 <= node_index < layout.nodes:
        raise LayoutError(f"node index {node_index} is not a worker node of a {layout.nodes}-node layout")
    return ["--headless", "--data-parallel-size-local", str(layout.ranks_per_node),
            "--data-parallel-start-rank", str(layout.start_rank(node_index)),
            "--data-parallel-address", head_ip, "--data-parallel-rpc-port", str(rpc_port)]


@dataclass
class HeadLaunch:
    """What the first node's ``vllm serve`` needs: ``args`` to append, ``env`` to add. ``helpers`` are the
    processes on the other nodes; a health wait should call :meth:`check_alive` so that a dead node ends the
    wait with its log instead of a time-out."""

    args: list[str]
    env: dict[str, str]
    helpers: list[ManagedProcess] = field(default_factory=list)

    def check_alive(self) -> None:
        for proc in self.helpers:
            proc.check_alive()


def allocation_ray_cluster(allocation: Allocation, log_dir: Path, *, python: str | os.PathLike,
                           nodes: int | None = None, env: Mapping[str, str] | None = None,
                           node_command: NodeCommand = srun_on, head_ip: str | None = None,
                           worker_args: Sequence[str] = (),
                           ready_timeout_s: float = 600.0) -> RayCluster:
    """A Ray cluster (to be started with ``with``) over the first ``nodes`` nodes of ``allocation`` (default: all):
    the head on the first node at ``head_ip`` (default: that node's resolved address), a worker on each other
    node through ``node_command``; ``worker_args`` are added to each worker's ``ray start``."""
    nodes = len(allocation.nodes) if nodes is None else nodes
    head = RayNodeSpec(allocation.head, head_ip or node_ip(allocation.head))
    workers = [RayNodeSpec(node, None, extra_args=tuple(worker_args)) for node in allocation.nodes[1:nodes]]
    return RayCluster(head, workers, log_dir, python=python, node_command=node_command, env=env,
                      ready_timeout_s=ready_timeout_s)


@contextlib.contextmanager
def serve_across_nodes(layout: NodeLayout, mode: str, allocation: Allocation, base_command: Sequence[str],
                       run_dir: Path, *, python: str | os.PathLike | None, env: Mapping[str, str] | None = None,
                       node_command: NodeCommand = srun_on, head_ip: str | None = None,
                       ready_timeout_s: float = 600.0) -> Iterator[HeadLaunch]:
    """Start the other nodes' part of the deployment and yield the head's :class:`HeadLaunch`.

    ``base_command`` is the whole deployment's ``vllm serve`` command (:func:`balanceroute.serving.vllm.
    serve_command`); ``python`` the interpreter of the environment that runs vLLM and therefore Ray (needed in
    ``ray`` mode); ``env`` the environment of the processes on the other nodes (default: this process's). Logs
    go to ``run_dir``.
    """
    check_mode(mode)
    if len(allocation.nodes) < layout.nodes:
        raise LayoutError(f"the allocation has {len(allocation.nodes)} node(s) ({', '.join(allocation.nodes)}) "
                          f"but parallel.dp={layout.dp} x tp={layout.tp} needs {layout.nodes}")
    if layout.nodes == 1:
        yield HeadLaunch(args=[], env={})
        return
    env = dict(os.environ if env is None else env)
    head_ip = head_ip or node_ip(allocation.head)
    workers = allocation.workers[:layout.nodes - 1]
    if mode == "ray":
        if python is None:
            raise LayoutError("backend.python: cannot tell which Python runs vLLM, so Ray cannot be started from "
                              "vLLM's environment; set backend.python (or use backend.multinode=native)")
        with allocation_ray_cluster(allocation, run_dir, python=python, nodes=layout.nodes, env=env,
                                    node_command=node_command, head_ip=head_ip,
                                    ready_timeout_s=ready_timeout_s) as cluster:
            yield HeadLaunch(args=head_args(layout, mode, head_ip), env={"RAY_ADDRESS": cluster.address},
                             helpers=list(cluster.processes))
        return
    rpc_port = free_port(head_ip)
    helpers: list[ManagedProcess] = []
    try:
        for i, node in enumerate(workers, start=1):
            argv = [*headless_command(base_command), *headless_args(layout, i, head_ip, rpc_port)]
            helpers.append(ManagedProcess(f"vllm headless node {i} ({node})", node_command(node, argv),
                                          run_dir / f"vllm_headless_{i}.log", env=env))
        yield HeadLaunch(args=head_args(layout, mode, head_ip, rpc_port), env={}, helpers=helpers)
    finally:
        for proc in reversed(helpers):
            proc.stop()


@contextlib.contextmanager
def across_allocation(base_command: Sequence[str], run_dir: Path, *, dp: int, tp: int, mode: str,
                      python: str | os.PathLike | None, env: Mapping[str, str] | None = None) -> Iterator[HeadLaunch]:
    """What a backend wraps its server in: inside a SLURM allocation of several nodes, :func:`serve_across_nodes`
    with the layout of ``dp`` ranks over those nodes; anywhere else (a laptop, one node) nothing to do."""
    allocation = Allocation.from_env()
    if allocation is None or len(allocation.nodes) == 1:
        check_mode(mode)
        yield HeadLaunch(args=[], env={})
        return
    layout = NodeLayout.on_nodes(dp, tp, len(allocation.nodes))
    log.info("SLURM job %s: %d ranks over %d nodes (%s), %s mode", allocation.job_id, dp, layout.nodes,
             ", ".join(allocation.nodes), mode)
    with serve_across_nodes(layout, mode, allocation, base_command, run_dir, python=python, env=env) as head:
        yield head
