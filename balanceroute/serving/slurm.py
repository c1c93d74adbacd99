"""What a process learns from SLURM's environment inside an allocation, and how it starts work on other nodes.

A job body needs three things from SLURM: which job it is (for result.json and logs), which nodes it was given
(the first runs the job body and the server's front end, the others host Ray workers or headless vLLM engines)
and a way to run a command on one of those nodes (``srun``). All of it is read from the ``SLURM_*`` variables that
slurmd sets, so the same code works under ``sbatch`` (hydra-submitit-launcher), ``salloc`` and ``srun``.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def slurm_job_id(env: Mapping[str, str] | None = None) -> str | None:
    """The job's id as ``squeue`` shows it and ``scancel`` takes it: ``<array id>_<task>`` for a task of a job
    array (hydra-submitit-launcher submits a sweep as one array), else ``SLURM_JOB_ID``; None outside SLURM."""
    env = os.environ if env is None else env
    array_id, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_id and task:
        return f"{array_id}_{task}"
    return env.get("SLURM_JOB_ID") or None


def expand_nodelist(nodelist: str) -> list[str]:
    """Hostnames of a SLURM node list (``gpu[01-03],login1``), in allocation order, via ``scontrol show
    hostnames`` so every syntax SLURM accepts is understood."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True,
                         text=True).stdout
    return out.split()


@dataclass(frozen=True)
class Allocation:
    """The nodes of the current SLURM job (``nodes[0]`` runs the job body) and its id."""

    job_id: str
    nodes: tuple[str, ...]

    @property
    def head(self) -> str:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[str, ...]:
        return self.nodes[1:]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Allocation | None:
        """The allocation this process runs in, or None outside SLURM (no ``SLURM_JOB_ID``)."""
        env = os.environ if env is None else env
        job_id = slurm_job_id(env)
        if job_id is None:
            return None
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise RuntimeError(f"SLURM job {job_id}: SLURM_JOB_NODELIST is not set; cannot tell which nodes the "
                               "job was given")
        return cls(job_id=job_id, nodes=tuple(expand_nodelist(nodelist)))


def node_ip(hostname: str) -> str:
    """The address other nodes reach ``hostname`` at (what Ray and vLLM bind their head services to).

    A host whose own name resolves to a loopback address (``127.0.1.1 node07`` in /etc/hosts is common) cannot
    be reached there from other nodes, and Ray announces the node under its outward address instead, which vLLM
    then fails to match with ``--data-parallel-address`` ("The DP master node (ip: 127.0.0.1) is missing or
    dead"). For this host such a name gives its outward address, the one Ray picks.
    """
    try:
        address = socket.gethostbyname(hostname)
    except OSError as exc:
        raise RuntimeError(f"cannot resolve node {hostname!r} to an IP address ({exc}); set the head address "
                           "explicitly") from None
    if ipaddress.ip_address(address).is_loopback and hostname.split(".")[0] == socket.gethostname().split(".")[0]:
        return outward_ip() or address
    return address


def outward_ip() -> str | None:
    """This host's address on the interface of its default route (None without one). A UDP ``connect`` sends
    nothing; it only makes the kernel choose the route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: any address off this host will do
            return probe.getsockname()[0]
        except OSError:
            return None


def srun_on(node: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run as a one-task job step on ``node`` of the current allocation.

    ``--overlap`` lets the step share the node with the job body's own step; ``--kill-on-bad-exit`` makes a step
    that fails end as a whole, so the caller sees it exit rather than hang.
    """
    return ["srun", "--nodes=1", "--ntasks=1", f"--nodelist={node}", "--overlap", "--kill-on-bad-exit=1",
            *argv]
