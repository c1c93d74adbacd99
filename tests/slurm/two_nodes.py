"""A two-node allocation on the one-node test cluster, for the multi-node tests: ``salloc`` one node, then run the
command with the job's node list doubled (``vm`` -> ``vm,vm``). Everything the command does from there is what it
would do on two nodes: ``Allocation.from_env`` sees two, ``srun --nodelist=vm`` starts real job steps."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOUBLE_NODELIST = 'export SLURM_JOB_NODELIST="$SLURM_JOB_NODELIST,$SLURM_JOB_NODELIST"; exec "$@"'


def run_py_on_two_nodes(args: Sequence[str], cwd: Path, *, env: Mapping[str, str] | None = None, cpus: int = 1,
                        timeout: float = 420) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in a doubled one-node allocation of ``cpus`` CPUs; ``env`` added to this process's
    environment (without PYTHONPATH and Hydra's error switch)."""
    proc_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR",
                                                                  "BALANCEROUTE_DATA_DIR")}
    proc_env.update(env or {})
    return subprocess.run(["salloc", "--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}", "--job-name=br-two-nodes",
                           "bash", "-c", DOUBLE_NODELIST, "two-nodes", sys.executable, str(REPO / "run.py"), *args],
                          cwd=cwd, env=proc_env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def processes_mentioning(*marks: str) -> list[str]:
    """Command lines of running processes that contain any of ``marks`` (for "nothing was left behind")."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if any(m in line for m in marks) and not line.startswith("ps ")]
