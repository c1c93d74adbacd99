"""The Ray bootstrap on a real SLURM allocation: head on the first node, a worker started through ``srun``,
both alive in Ray's own view, everything gone afterwards."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                 reason='Ray is not installed (pip install -e ".[ray]")')]

PROBE = Path(__file__).with_name("ray_probe.py")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"


def test_ray_cluster_forms_from_a_slurm_allocation_and_is_torn_down(tmp_path):
    log_dir = tmp_path / "run"
    proc = subprocess.run(["salloc", "--nodes=1", "--ntasks=1", "--cpus-per-task=1", "--job-name=ray-probe",
                           sys.executable, str(PROBE), str(log_dir)],
                          capture_output=True, text=True, timeout=420, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["nodes"]) == 2  # Ray itself counts the head and the worker alive
    head_argv, worker_argv = report["argv"]
    assert "--head" in head_argv and not head_argv[0].endswith("srun")
    assert worker_argv[0] == "srun" and "--overlap" in worker_argv  # a job step of the allocation
    assert f"--address={report['address']}" in worker_argv
    assert (log_dir / "ray_head.log").is_file() and (log_dir / "ray_worker_1.log").is_file()
    assert "Ray runtime started" in (log_dir / "ray_head.log").read_text()
    assert not Path(report["temp_root"]).exists()  # Ray's session folders removed with the cluster
    assert not any(alive(pid) for pid in report["pids"])
    leftovers = [p for p in Path("/proc").glob("[0-9]*")
                 if str(log_dir) in (p / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
                 if (p / "cmdline").exists()]
    assert not [p for p in leftovers if alive(int(p.name))], "processes of the cluster outlived it"
