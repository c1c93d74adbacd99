"""``backend=vllm`` inside a SLURM allocation of two nodes: the backend starts the other node's part (a headless
engine, or a Ray worker) as a real ``srun`` job step, gives the front end the matching arguments, fails fast with
the lost node's log, and leaves nothing behind.

The test cluster has one node, so the allocation's node list is doubled (tests/slurm/two_nodes.py) before run.py
starts: everything else is as on a real cluster (salloc, srun steps, Ray). vLLM is replaced by
stand_in_vllm.py, which performs the same handshakes (RPC port in native mode, Ray cluster in ray mode) without a
model, fast enough for every CI run; real vLLM through SLURM, on one and on two nodes, is test_vllm_slurm.py.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.two_nodes import REPO, processes_mentioning, run_py_on_two_nodes

pytestmark = pytest.mark.slurm

STAND_IN = Path(__file__).with_name("stand_in_vllm.py")
NUM_REQUESTS = 12


@pytest.fixture
def stand_in_bin(tmp_path) -> Path:
    """An executable ``vllm`` that runs stand_in_vllm.py with this interpreter (so ``backend.python``, read from
    its ``#!`` line, is this environment's, with Ray)."""
    exe = tmp_path / "bin" / "vllm"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.path.insert(0, {str(REPO)!r})\n"
                   f"runpy.run_path({str(STAND_IN)!r}, run_name='__main__')\n")
    exe.chmod(0o755)
    return exe


def run_on_two_nodes(tmp_path: Path, stand_in_bin: Path, mode: str, **env: str
                     ) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """``python run.py backend=vllm parallel.dp=2 backend.multinode=MODE`` in a doubled one-node allocation;
    (the finished process, the run folder, the stand-in's record folder)."""
    run_dir, records = tmp_path / "run", tmp_path / "records"
    args = ["backend=vllm", "model=tiny_dense", "model.vllm.model=stand-in", f"backend.vllm_bin={stand_in_bin}",
            "backend.plugin=false", f"backend.multinode={mode}", "backend.bench.tokenizer=false",
            "backend.ready_timeout_s=600", "parallel.dp=2", f"workload.num_requests={NUM_REQUESTS}",
            "workload.prompt_mean=32", "workload.output_mean=4", "rate=inf", f"hydra.run.dir={run_dir}"]
    proc = run_py_on_two_nodes(args, tmp_path, env={"STAND_IN_RECORD": str(records), **env})
    return proc, run_dir, records


def read_records(records: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in records.glob("*.json")}


def value_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def check_result(run_dir: Path, job_id: str) -> None:
    result = json.loads((run_dir / "result.json").read_text())
    assert result["completed"] == result["num_sent"] == NUM_REQUESTS
    assert result["slurm_job_id"] == job_id
    assert result["vllm_engine_requests"] == [NUM_REQUESTS // 2] * 2


def test_native_mode_starts_a_headless_engine_step_on_the_other_node(tmp_path, stand_in_bin):
    proc, run_dir, records = run_on_two_nodes(tmp_path, stand_in_bin, "native")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rec = read_records(records)
    head, worker = rec["head"], rec["headless_1"]
    job_id = head["env"]["SLURM_JOB_ID"]
    check_result(run_dir, job_id)
    # the other node's engines: a job step of the same allocation, meeting the front end at its address and port
    assert worker["env"]["SLURM_JOB_ID"] == job_id and worker["env"]["SLURM_STEP_ID"] is not None
    assert head["env"]["SLURM_STEP_ID"] is None  # the front end runs in the job body itself
    for flag in ("--data-parallel-address", "--data-parallel-rpc-port"):
        assert value_after(head["argv"], flag) == value_after(worker["argv"], flag)
    assert value_after(head["argv"], "--data-parallel-size-local") == "1" and head["remote_ranks"] == [1]
    assert value_after(worker["argv"], "--data-parallel-start-rank") == "1" and "--headless" in worker["argv"]
    assert "--api-server-count" not in worker["argv"]  # vLLM refuses it with --headless
    assert "registered" in (run_dir / "vllm_headless_1.log").read_text()
    assert not processes_mentioning(str(stand_in_bin))


def test_a_lost_node_fails_the_start_up_with_its_log(tmp_path, stand_in_bin):
    """The front end would wait for the missing ranks until backend.ready_timeout_s (600 s, beyond this test's
    time-out); the health wait watches the other node's process and ends at once with its log."""
    proc, run_dir, _ = run_on_two_nodes(tmp_path, stand_in_bin, "native", STAND_IN_FAIL="headless")
    assert proc.returncode != 0
    assert "vllm headless node 1 (vm) exited with status 1" in proc.stderr
    assert "EngineCore failed: lost the node (injected)" in proc.stderr
    assert not (run_dir / "result.json").exists()
    assert not processes_mentioning(str(stand_in_bin))


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray is not installed (pip install -e ".[ray]")')
def test_ray_mode_forms_a_ray_cluster_over_both_nodes(tmp_path, stand_in_bin):
    proc, run_dir, records = run_on_two_nodes(tmp_path, stand_in_bin, "ray")
    assert proc.returncode == 0, proc.stderr[-4000:]
    head = read_records(records)["head"]
    check_result(run_dir, head["env"]["SLURM_JOB_ID"])
    assert head["ray_nodes_alive"] == 2  # Ray itself saw the worker started through srun
    assert value_after(head["argv"], "--data-parallel-backend") == "ray"
    assert value_after(head["argv"], "--data-parallel-size-local") == "1"
    assert head["env"]["RAY_ADDRESS"].startswith(value_after(head["argv"], "--data-parallel-address") + ":")
    worker_log = (run_dir / "ray_worker_1.log").read_text()
    assert "Ray runtime started" in (run_dir / "ray_head.log").read_text() and worker_log
    assert not processes_mentioning(str(stand_in_bin), "br-ray-")
