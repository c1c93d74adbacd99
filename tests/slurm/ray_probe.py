"""Run inside a SLURM allocation (``salloc ... python ray_probe.py LOG_DIR``): form a Ray cluster from it with
:func:`balanceroute.serving.multinode.allocation_ray_cluster`, print what Ray reports as one JSON line, tear it down.

The test cluster has one node, so the allocation is read as two "nodes" on the same host: the head starts
locally and the worker through ``srun`` as a job step, exactly as on a real cluster, on ports of its own."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from balanceroute.serving import free_port
from balanceroute.serving.multinode import allocation_ray_cluster
from balanceroute.serving.slurm import Allocation


def main(log_dir: Path) -> None:
    allocation = Allocation.from_env()
    assert allocation is not None, "not inside a SLURM allocation"
    doubled = Allocation(allocation.job_id, (allocation.head, allocation.head))
    cluster = allocation_ray_cluster(doubled, log_dir, python=sys.executable, ready_timeout_s=240,
                                     worker_args=[f"--dashboard-agent-listen-port={free_port()}"])
    with cluster:
        report = {"job_id": allocation.job_id, "address": cluster.address, "nodes": cluster.nodes,
                  "argv": [p.argv for p in cluster.processes], "pids": [p.pid for p in cluster.processes],
                  "temp_root": str(cluster.temp_root)}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
