"""A Ray cluster formed from the nodes of an allocation, for ``vllm serve --data-parallel-backend ray``.

The head runs in the calling process's node (the first node, where the job body and vLLM's front end run), one
worker on each other node, started through ``srun`` inside a SLURM job (:func:`balanceroute.serving.slurm.
srun_on`) or as plain local processes for a test on one machine. Every node is a ``ray start --block`` process in
its own process group (:class:`~balanceroute.serving.process.ManagedProcess`) with its log in the run folder, so
stopping the cluster stops exactly what was started (never ``ray stop``, which would end every Ray process of the
machine, other users' included). The cluster is ready when Ray itself reports all nodes alive
(``ray.nodes()``, asked from a driver process of the same Python).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from balanceroute.serving.process import ManagedProcess, ServerError, free_port, log_tail

log = logging.getLogger(__name__)

#: Turns (node, argv) into the command that runs argv on that node: ``srun_on`` in SLURM, ``local_node`` in tests.
NodeCommand = Callable[[str, Sequence[str]], list[str]]

#: Asks the cluster at ADDRESS for its alive nodes until N are up or TIMEOUT passes; prints them as JSON.
_WAIT_FOR_NODES = """
import json, sys, time
import ray
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + timeout
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps([{"ip": n["NodeManagerAddress"], "resources": n["Resources"]} for n in alive]))
"""


def local_node(node: str, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` on this machine whatever ``node`` says (a one-machine cluster, for tests)."""
    return list(argv)


@dataclass(frozen=True)
class RayNodeSpec:
    """One node to start: ``host`` (what ``node_command`` gets), ``ip`` (the address Ray announces for it; None:
    Ray's choice, fine for workers), its resources (None: what Ray detects)."""

    host: str
    ip: str | None
    num_cpus: int | None = None
    num_gpus: int | None = None
    extra_args: tuple[str, ...] = field(default=())


class RayCluster:
    """``with RayCluster(...) as cluster:`` starts the head and the workers and waits until Ray reports them all
    alive; ``cluster.address`` (``ip:port``) is what ``RAY_ADDRESS`` must hold for vLLM to join it; leaving the
    block stops every node it started, workers first.

    ``python`` is the interpreter of the environment that has Ray (the same Ray version must run the nodes and
    vLLM, so for a vLLM virtualenv this is that virtualenv's python). ``log_dir`` receives ``ray_head.log`` and
    ``ray_worker_<i>.log``. Ray's own session folders go to a short, fresh path under the system temp folder
    (``/tmp/br-ray-<id>/n<i>`` on each node: Ray's sockets there must stay under the 107-byte AF_UNIX limit,
    which a run folder's path easily exceeds); the head's is removed when the cluster stops.
    """

    def __init__(self, head: RayNodeSpec, workers: Sequence[RayNodeSpec], log_dir: Path, *,
                 python: str, node_command: NodeCommand = local_node, port: int | None = None,
                 env: Mapping[str, str] | None = None, ready_timeout_s: float = 300.0,
                 object_store_bytes: int | None = None) -> None:
        if head.ip is None:
            raise ValueError("RayCluster: the head needs an IP address (where the workers and vLLM connect)")
        self.head = head
        self.workers = tuple(workers)
        self.log_dir = Path(log_dir)
        self.python = python
        self.node_command = node_command
        self.port = port or free_port(head.ip)
        self.env = {**(os.environ if env is None else env), "RAY_USAGE_STATS_ENABLED": "0"}
        self.ready_timeout_s = ready_timeout_s
        self.object_store_bytes = object_store_bytes
        self.nodes: list[dict] = []
        self._processes: list[ManagedProcess] = []
        self.temp_root = Path(tempfile.gettempdir()) / f"br-ray-{uuid.uuid4().hex[:8]}"

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{self.port}"

    @property
    def processes(self) -> tuple[ManagedProcess, ...]:
        """The node processes started so far (head first)."""
        return tuple(self._processes)

    def _start_args(self, spec: RayNodeSpec, index: int) -> list[str]:
        args = [self.python, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats",
                f"--temp-dir={self.temp_root / f'n{index}'}"]
        if spec.ip is not None:
            args.append(f"--node-ip-address={spec.ip}")
        if spec.num_cpus is not None:
            args.append(f"--num-cpus={spec.num_cpus}")
        if spec.num_gpus is not None:
            args.append(f"--num-gpus={spec.num_gpus}")
        if self.object_store_bytes is not None:
            args.append(f"--object-store-memory={self.object_store_bytes}")
        return [*args, *spec.extra_args]

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        head_args = [*self._start_args(self.head, 0), "--head", f"--port={self.port}", "--include-dashboard=false"]
        # The head runs here: the caller (the job body) is on the first node.
        self._processes.append(ManagedProcess("ray head", head_args, self.log_dir / "ray_head.log", env=self.env))
        self._wait_for_port()
        for i, spec in enumerate(self.workers, start=1):
            args = [*self._start_args(spec, i), f"--address={self.address}"]
            self._processes.append(ManagedProcess(f"ray worker {i} ({spec.host})", self.node_command(spec.host, args),
                                                  self.log_dir / f"ray_worker_{i}.log", env=self.env))
        self.nodes = self._wait_for_nodes(1 + len(self.workers))
        log.info("Ray cluster at %s: %d nodes alive (%s)", self.address, len(self.nodes),
                 ", ".join(n["ip"] for n in self.nodes))

    def _check_processes(self) -> None:
        for proc in self._processes:
            proc.check_alive()

    def _wait_for_port(self) -> None:
        """Until the head's GCS accepts connections (cheap to poll; a driver can connect only after that)."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            self._check_processes()
            with socket.socket() as sock:
                sock.settimeout(1.0)
                if sock.connect_ex((self.head.ip, self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise ServerError(f"Ray head at {self.address} not listening after {self.ready_timeout_s:.0f} s; "
                                   f"log {self._processes[0].log_path}:\n{log_tail(self._processes[0].log_path)}")
            time.sleep(0.5)

    def _wait_for_nodes(self, want: int) -> list[dict]:
        """Ray's own view of the cluster once ``want`` nodes are alive; :class:`ServerError` (with the node logs'
        tails) if they are not within ``ready_timeout_s`` or a node process died."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            self._check_processes()
            remaining = max(deadline - time.monotonic(), 1.0)
            proc = subprocess.run([self.python, "-c", _WAIT_FOR_NODES, self.address, str(want), str(remaining)],
                                  capture_output=True, text=True, env=self.env, timeout=remaining + 120, check=False)
            if proc.returncode == 0:
                nodes = json.loads(proc.stdout.strip().splitlines()[-1])
                if len(nodes) >= want:
                    return nodes
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.log_path}:\n{log_tail(p.log_path, 10)}" for p in self._processes)
                found = len(json.loads(proc.stdout.strip().splitlines()[-1])) if proc.returncode == 0 else "?"
                raise ServerError(f"Ray cluster at {self.address}: {found} of {want} nodes alive after "
                                   f"{self.ready_timeout_s:.0f} s\n{proc.stderr[-2000:]}\n{tails}")
            time.sleep(1.0)

    def stop(self) -> None:
        """Stop the workers, then the head (each node's whole process group)."""
        for proc in reversed(self._processes):
            proc.stop()
        self._processes.clear()
        shutil.rmtree(self.temp_root, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
