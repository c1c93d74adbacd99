"""Sweeps through a real SLURM cluster: ``python run.py -m hydra/launcher=slurm ...`` submits through slurmctld,
a cancelled job fails the sweep with its id and the rerun completes only the missing run, and a preempted job
(USR2, as SLURM sends before preemption) is requeued by submitit and completes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
#: Small runs: the tiny model on two workers. Each job requests one CPU (hydra.launcher.cpus_per_task's default).
SMALL = ("backend=sim", "model=tiny", "parallel.dp=2", "workload.prompt_mean=200", "workload.output_mean=40")
SWEEP = ("-m", "hydra/launcher=slurm", "router=br0,jsq_load", "rate=1,3", *SMALL)
RUNS = 4
DEADLINE_S = 240


def results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}


def mtimes(sweep: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/result.json")}


def job_states() -> dict[str, str]:
    """State of every job slurmctld still lists (finished ones stay for MinJobAge), by squeue's id."""
    out = subprocess.run(["squeue", "--me", "--array", "--states=all", "--noheader", "--format=%i|%T"],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|", 1) for line in out.split())


#: Job states slurmctld may still report just after a job's result is written (the job step is ending).
UNSETTLED = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")


def settled_states(job_ids: list[str]) -> dict[str, str]:
    """``job_states()`` once none of ``job_ids`` is still ending: the launcher returns when a job's result is
    written, a moment before slurmctld sees the job finish."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        states = job_states()
        if all(states.get(j) not in UNSETTLED for j in job_ids) or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def start_sweep(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "BALANCEROUTE_DATA_DIR")}
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def array_of(sweep: Path) -> str:
    """The job array the launcher submitted (submitit names its first folder after the array id)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        arrays = [p.name for p in (sweep / ".submitit").glob("*") if p.name.isdigit()]
        if arrays:
            return arrays[0]
        time.sleep(0.2)
    raise AssertionError(f"no job array submitted under {sweep / '.submitit'}")


def wait_running(array: str, proc: subprocess.Popen) -> str:
    """A task of ``array`` (or the job itself, when the sweep had one run and submitit no array) once it is
    RUNNING."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and proc.poll() is None:
        running = [job for job, state in job_states().items()
                   if (job == array or job.startswith(f"{array}_")) and state == "RUNNING"]
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError(f"no task of job array {array} started running")


def test_sweep_runs_one_slurm_job_per_run(tmp_path, run_py):
    sweep = tmp_path / "sweep"
    proc = run_py([*SWEEP, "workload.num_requests=40", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stderr
    found = results(sweep)
    assert len(found) == RUNS
    ids = [r["slurm_job_id"] for r in found.values()]
    assert len(set(ids)) == RUNS and all(isinstance(i, str) for i in ids)
    states = settled_states(ids)
    for job_id in ids:  # each run was a job slurmctld scheduled and saw complete
        assert states.get(job_id) == "COMPLETED", (job_id, states)
        assert (sweep / ".submitit" / job_id).is_dir()
    for name, result in found.items():
        assert f"rate={result['rate']}" in name and f"router={result['router']}" in name
    scripts = list((sweep / ".submitit").rglob("*_submission.sh"))
    assert scripts and all("#SBATCH --cpus-per-task=1\n" in s.read_text() for s in scripts)
    assert "SLURM sweep: 4 job(s) in 1 allocation shape(s)" in proc.stdout + proc.stderr


def test_cancelled_job_fails_the_sweep_and_the_rerun_completes_only_it(tmp_path, run_py):
    sweep = tmp_path / "sweep"
    args = [*SWEEP, "workload.num_requests=400", f"hydra.sweep.dir={sweep}"]
    proc = start_sweep(args, tmp_path)
    try:
        victim = wait_running(array_of(sweep), proc)
        subprocess.run(["scancel", victim], check=True)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "1 of 4 SLURM jobs ended without a result" in err and f"job {victim} (" in err and "CANCELLED" in err
    assert "Traceback" not in err
    done = mtimes(sweep)
    assert len(done) == RUNS - 1
    assert victim not in {r["slurm_job_id"] for r in results(sweep).values()}

    rerun = run_py(args, tmp_path, timeout=DEADLINE_S)
    assert rerun.returncode == 0, rerun.stderr
    after = mtimes(sweep)
    assert len(after) == RUNS and {k: after[k] for k in done} == done  # finished runs untouched
    (missing,) = set(after) - set(done)
    assert results(sweep)[missing]["slurm_job_id"] != victim
    logs = "".join(p.read_text() for p in sweep.glob("*/run.log"))
    assert logs.count("skipped:") == RUNS - 1  # the rerun's other jobs found their results and did nothing


def test_preempted_job_is_requeued_and_completes(tmp_path):
    """USR2 is what SLURM sends ``signal_delay_s`` before preempting or ending a job; submitit calls the launcher's
    checkpoint, which requeues the job under the same id, and the run starts again and completes."""
    sweep = tmp_path / "sweep"
    # Long enough (~10 s of simulation on a busy machine) that the signal arrives during the run.
    proc = start_sweep(["-m", "hydra/launcher=slurm", "router=jsq_load", "workload.num_requests=40000",
                        f"hydra.sweep.dir={sweep}"], tmp_path)
    try:
        job = array_of(sweep)
        deadline = time.monotonic() + DEADLINE_S
        while not any("running sim" in p.read_text() for p in sweep.glob("*/run.log")):
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not start"
            time.sleep(0.2)
        subprocess.run(["scancel", f"--signal={signal.SIGUSR2.name[3:]}", job], check=True)
        # SLURM makes a requeued job eligible only ~2 min later; as an administrator would, start it now.
        while job_states().get(job) not in ("PENDING", "COMPLETED"):
            assert time.monotonic() < deadline, job_states().get(job)
            time.sleep(0.2)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    (result,) = results(sweep).values()
    assert result["slurm_job_id"] == job and result["num_requests"] == 40000
    err_log = "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_log.err"))
    assert "this job is preempted" in err_log and "DUE TO JOB REQUEUE" in err_log
    out_log = "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_log.out"))
    assert out_log.count("running sim") == 2  # the run started twice: before and after the requeue
