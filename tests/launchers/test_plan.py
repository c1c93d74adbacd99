"""Allocation planning without a cluster: node layouts, per-run SLURM requests, ``balanceroute plan``, and the
job-state watcher's squeue fallback."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from balanceroute.serving.multinode import LayoutError, NodeLayout, head_args, headless_args, headless_command
from launchers import plan, submission
from launchers.resources import ResourceError, job_resources

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dp, tp, nodes, per_node, gpus", [(16, 1, 2, 8, 8), (8, 2, 2, 4, 8), (4, 1, 1, 4, 4),
                                                           (1, 1, 1, 1, 1), (24, 1, 3, 8, 8)])
def test_layout_fills_whole_nodes(dp, tp, nodes, per_node, gpus):
    layout = NodeLayout.plan(dp, tp, 8)
    assert (layout.nodes, layout.ranks_per_node, layout.gpus_used_per_node) == (nodes, per_node, gpus)
    assert [layout.start_rank(i) for i in range(nodes)] == [i * per_node for i in range(nodes)]


@pytest.mark.parametrize("dp, tp, message", [
    (12, 1, ("parallel.dp: 12 ranks do not fill whole nodes of 8 ranks (8 GPUs / tp=1); use at most 8 or a "
             "multiple (8, 16, 24, 32, ...)")),
    (2, 3, "parallel.tp: 3 GPUs per rank do not divide the 8 GPUs of a node"),
    (0, 1, "parallel.dp: must be an integer >= 1, got 0")])
def test_layout_errors_name_the_key(dp, tp, message):
    with pytest.raises(LayoutError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.").replace("+", r"\+")):
        NodeLayout.plan(dp, tp, 8)


def test_multinode_arguments():
    layout = NodeLayout.plan(16, 1, 8)
    assert head_args(layout, "ray", "10.0.0.1") == ["--data-parallel-size-local", "8", "--data-parallel-address",
                                                    "10.0.0.1", "--data-parallel-backend", "ray"]
    assert head_args(layout, "native", "10.0.0.1", 5) == ["--data-parallel-size-local", "8",
                                                          "--data-parallel-address", "10.0.0.1",
                                                          "--data-parallel-rpc-port", "5"]
    assert headless_args(layout, 1, "10.0.0.1", 5)[:5] == ["--headless", "--data-parallel-size-local", "8",
                                                           "--data-parallel-start-rank", "8"]
    assert head_args(NodeLayout.plan(8, 1, 8), "ray", "10.0.0.1") == []  # one node: nothing to add
    assert headless_command(["vllm", "serve", "m", "--api-server-count", "2", "--port", "1"]) == [
        "vllm", "serve", "m", "--port", "1"]
    with pytest.raises(LayoutError, match="valid modes: ray, native"):
        head_args(layout, "mpi", "10.0.0.1")
    with pytest.raises(LayoutError, match="not a worker node"):
        headless_args(layout, 2, "10.0.0.1", 5)
    assert NodeLayout.on_nodes(16, 1, 2) == layout
    with pytest.raises(LayoutError, match="cannot be spread evenly over the allocation's 3 nodes"):
        NodeLayout.on_nodes(16, 1, 3)


def launcher_of(cfg) -> dict:
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_simulator_runs_ask_for_one_small_task(compose):
    cfg = compose(["hydra/launcher=slurm"], hydra_config=True)
    res = job_resources(launcher_of(cfg), cfg)
    params = res.submitit_parameters()
    assert (res.nodes, res.cpus_per_task, res.mem_gb, res.gpus_per_node, res.layout) == (1, 1, 4, None, None)
    assert params["time"] == 60 and params["mem"] == "4GB" and "srun_args" not in params
    assert res.describe() == "1 node, 1 CPU, 4 GB, 60 min"


def test_server_runs_ask_for_whole_nodes_with_the_models_defaults(compose):
    cfg = compose(["hydra/launcher=slurm", "backend=vllm", "model=qwen3_30b_a3b", "parallel.dp=16",
                   "hydra.launcher.partition=gpu", "hydra.launcher.account=proj"], hydra_config=True)
    res = job_resources(launcher_of(cfg), cfg)
    params = res.submitit_parameters()
    assert {k: params[k] for k in ("nodes", "gpus_per_node", "cpus_per_task", "mem", "time", "partition",
                                   "account", "srun_args")} == {
        "nodes": 2, "gpus_per_node": 8, "cpus_per_task": 64, "mem": "256GB", "time": 90, "partition": "gpu",
        "account": "proj", "srun_args": ["--nodes=1", "--ntasks=1"]}
    cpu = compose(["hydra/launcher=slurm", "backend=vllm", "model=qwen3_0_6b", "parallel.dp=2",
                   "hydra.launcher.request_gpus=false", "hydra.launcher.gpus_per_node=2",
                   "hydra.launcher.cpus_per_gpu=1"], hydra_config=True)
    res = job_resources(launcher_of(cpu), cpu)
    assert (res.nodes, res.gpus_per_node, res.cpus_per_task) == (1, None, 2)


@pytest.mark.parametrize("override, message", [
    ("hydra.launcher.nodes=3", "hydra.launcher.nodes: 3 given, but parallel.dp=16 x tp=1 on 8-GPU nodes needs 2"),
    ("+hydra.launcher.model_resources.qwen3_30b_a3b.gpus_per_node=0",
     "hydra.launcher.model_resources.qwen3_30b_a3b.gpus_per_node: must be an integer >= 1, got 0"),
    ("+hydra.launcher.model_resources.qwen3_30b_a3b.gpu=h100",
     "hydra.launcher.model_resources.qwen3_30b_a3b: unknown key(s) gpu; valid keys: mem_gb,"),
    ("parallel.dp=12", "parallel.dp: 12 ranks do not fill whole nodes of 8 ranks")])
def test_bad_requests_name_the_key(compose, override, message):
    cfg = compose(["hydra/launcher=slurm", "backend=vllm", "model=qwen3_30b_a3b", "parallel.dp=16", override],
                  hydra_config=True)
    with pytest.raises(ResourceError) as info:
        job_resources(launcher_of(cfg), cfg)
    assert str(info.value).startswith(message)


def run_plan(*args: str) -> int:
    parser = argparse.ArgumentParser()
    plan.add_parser(parser.add_subparsers())
    ns = parser.parse_args(["plan", *args])
    return ns.func(ns)


def test_plan_prints_allocations_and_the_server_command(capsys):
    assert run_plan("backend=vllm", "model=qwen3_30b_a3b", "parallel.dp=16") == 0
    out = capsys.readouterr().out
    assert "1 run(s) -> 1 allocation shape(s)" in out and "2 nodes, 8 GPUs per node" in out
    assert "#SBATCH --nodes=2" in out and "#SBATCH --gpus-per-node=8" in out and "#SBATCH --mem=256GB" in out
    assert "--data-parallel-backend ray" in out and "--data-parallel-size 16" in out

    assert run_plan("--json", "--", "-m", "backend=vllm", "parallel.dp=8,16", "model=qwen3_30b_a3b",
                    "backend.multinode=native") == 0
    data = __import__("json").loads(capsys.readouterr().out)
    assert data["runs"] == 2 and [a["submitit"]["nodes"] for a in data["allocations"]] == [1, 2]
    native = data["allocations"][1]["commands"]
    assert native["mode"] == "native" and native["workers"][0][0] == "srun"
    assert "--headless" in native["workers"][0] and "--api-server-count" not in native["workers"][0]


def test_plan_of_a_bad_value_is_one_line(capsys):
    assert run_plan("backend=vllm", "model=qwen3_30b_a3b", "parallel.dp=12") == 2
    err = capsys.readouterr().err
    assert err.startswith("balanceroute plan: error: parallel.dp: 12 ranks") and err.count("\n") == 1
    assert run_plan("hydra/launcher=submitit_local") == 2
    assert "plan describes SLURM submissions" in capsys.readouterr().err


def test_watcher_reads_squeue_when_there_is_no_accounting(monkeypatch):
    monkeypatch.setattr(submission, "accounting_enabled", lambda: False)
    watcher = submission.JobStateWatcher(delay_s=1)
    for job in ("7_0", "7_1", "7_2", "9"):
        watcher.register_job(job)
    assert watcher._make_command()[0] == "squeue"
    info = watcher.read_info(b"7_0|COMPLETED|vm\n7_1|CANCELLED|vm\n9|RUNNING|vm\n")
    assert {k: v["State"] for k, v in info.items()} == {"7_0": "COMPLETED", "7_1": "CANCELLED", "9": "RUNNING",
                                                          "7_2": submission.PURGED}
    watcher._info_dict.update(info)
    assert watcher.is_done("7_1", mode="cache") and watcher.is_done("7_2", mode="cache")
    assert not watcher.is_done("9", mode="cache")


def test_the_slurm_launcher_without_slurm_is_one_line(tmp_path):
    """No sbatch on PATH (a laptop): one line saying what to do instead, exit 2, no job folder, no traceback."""
    no_slurm = tmp_path / "bin"
    no_slurm.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PATH")} | {"PATH": str(no_slurm)}
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), "-m", "hydra/launcher=slurm",
                           "workload.num_requests=10"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: hydra/launcher=slurm submits through SLURM's sbatch, which is not on PATH")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("result.json"))
