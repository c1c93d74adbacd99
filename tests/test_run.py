"""run.py end to end: result files, resume, real multiruns through Hydra's launchers, and bad input."""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import open_dict

from balanceroute.config_hash import config_hash
from balanceroute.experiment import run_experiment

REPO = Path(__file__).resolve().parents[1]
#: A 2x2 sweep small enough to finish in seconds.
SWEEP = ("-m", "router=jsq,jsq_load", "rate=1,3", "workload.num_requests=60")
#: A run that takes a fraction of a second.
SMALL_RUN = ("workload.num_requests=20",)
SWEEP_RUNS = ("rate=1,router=jsq,workload.num_requests=60", "rate=1,router=jsq_load,workload.num_requests=60",
              "rate=3,router=jsq,workload.num_requests=60", "rate=3,router=jsq_load,workload.num_requests=60")


def result_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def mtimes(root: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in root.glob("*/result.json")}


# ---- in process -------------------------------------------------------------------------------------------------
def test_a_run_writes_the_result_contract(cfg_run):
    result = run_experiment(cfg_run)
    run_dir = Path(cfg_run.paths.output_dir)
    on_disk = result_of(run_dir)
    assert result == on_disk
    assert {k: on_disk[k] for k in ("router", "rate", "dp", "tp", "model", "backend", "workload", "seed",
                                    "num_requests")} == {
        "router": "vllm_default", "rate": 3, "dp": 2, "tp": 1, "model": "tiny", "backend": "sim",
        "workload": "synthetic", "seed": 0, "num_requests": 40}
    assert on_disk["config_hash"] == config_hash(cfg_run)
    assert on_disk["config"]["router"] == {"_target_": "balanceroute.policies.make_policy", "name": "vllm_default"}
    assert on_disk["completed"] + on_disk["failed"] + on_disk["unfinished"] == 40
    assert on_disk["completed"] > 0 and on_disk["output_throughput"] > 0
    for metric in ("p95_ttft_ms", "p95_tpot_ms", "mean_imbalance", "barrier_idle_fraction"):
        assert metric in on_disk
    requests = pd.read_parquet(run_dir / "requests.parquet")
    assert len(requests) == 40 and set(requests["worker"]) <= {0, 1}
    assert len(pd.read_parquet(run_dir / "timeline.parquet")) > 0
    assert not list(run_dir.glob("*.tmp*"))  # atomic writes leave no temporaries


def test_the_documented_overrides_reach_the_result(compose, tmp_path):
    cfg = compose(["workload.num_requests=30", "parallel.dp=3", "router=jsq_load", "rate=2", "seed=4",
                   "backend=sim"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    result = run_experiment(cfg)
    assert (result["num_requests"], result["dp"], result["router"], result["rate"], result["seed"],
            result["backend"]) == (30, 3, "jsq_load", 2, 4, "sim")
    assert len(result["worker_requests"]) == 3


def test_rate_inf_and_trace_timestamps_are_recorded_as_such(cfg_run, compose, data_dir, tmp_path):
    with open_dict(cfg_run):
        cfg_run.rate = float("inf")
    result = run_experiment(cfg_run)
    assert result["rate"] == result["config"]["rate"] == result["config"]["workload"]["rate"] == "inf"
    assert (pd.read_parquet(Path(cfg_run.paths.output_dir) / "requests.parquet")["arrival_s"] == 0).all()

    trace = compose(["model=tiny", "parallel.dp=2", "workload=azure_conv", "workload.num_requests=30", "rate=null",
                     f"data.data_dir={data_dir}"])
    with open_dict(trace):
        trace.paths.output_dir = str(tmp_path / "trace")
    result = run_experiment(trace)
    assert result["rate"] is None and result["workload"] == "azure_conv" and result["num_requests"] == 30
    arrivals = pd.read_parquet(tmp_path / "trace" / "requests.parquet")["arrival_s"]
    assert arrivals.iloc[0] == 0 and arrivals.is_monotonic_increasing and arrivals.iloc[-1] > 0


def test_resume_skips_the_same_config_and_reruns_a_changed_one(cfg_run, caplog):
    caplog.set_level(logging.INFO, logger="balanceroute.experiment")
    run_experiment(cfg_run)
    result_json = Path(cfg_run.paths.output_dir) / "result.json"
    first = result_json.stat().st_mtime_ns

    caplog.clear()
    run_experiment(cfg_run)
    assert result_json.stat().st_mtime_ns == first
    assert "skipped:" in caplog.text

    with open_dict(cfg_run):
        cfg_run.seed = 1
    caplog.clear()
    run_experiment(cfg_run)
    assert "rerunning: the configuration changed" in caplog.text
    assert result_of(result_json.parent)["seed"] == 1

    with open_dict(cfg_run):
        cfg_run.resume = False
    before = result_json.stat().st_mtime_ns
    caplog.clear()
    run_experiment(cfg_run)
    assert "skipped:" not in caplog.text and result_json.stat().st_mtime_ns > before


def test_resume_redoes_a_job_whose_result_is_truncated(cfg_run, caplog):
    run_dir = Path(cfg_run.paths.output_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text('{"completed": 40, "config_ha')  # a job killed mid-write
    caplog.set_level(logging.WARNING, logger="balanceroute.experiment")
    result = run_experiment(cfg_run)
    assert result_of(run_dir) == result and result["completed"] == 40
    assert (run_dir / "result.json.corrupt").read_text() == '{"completed": 40, "config_ha'
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "result.json: not valid JSON" in warnings[0]
    assert "moved it to result.json.corrupt and running the job again" in warnings[0]


# ---- run.py as users run it -----------------------------------------------------------------------------------
def test_single_run_prints_where_results_are(tmp_path, run_py):
    proc = run_py(["workload.num_requests=100"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "results: " in line]
    assert len(lines) == 1
    run_dir = Path(lines[0].split("results: ", 1)[1])
    assert run_dir.parent == tmp_path / "outputs" / "runs"
    assert result_of(run_dir)["num_requests"] == 100
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "run.log").is_file()


def test_multirun_2x2_compare_and_resume(tmp_path, run_py):
    sweep = tmp_path / "sweep"
    args = [*SWEEP, f"hydra.sweep.dir={sweep}"]
    proc = run_py(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(mtimes(sweep)) == sorted(SWEEP_RUNS)
    assert f"sweep folder: {sweep} (table: python -m analysis.compare {sweep})" in proc.stdout
    for name in SWEEP_RUNS:
        run_dir = sweep / name
        assert {"requests.parquet", "timeline.parquet", ".hydra"} <= {p.name for p in run_dir.iterdir()}
        rate, router = name.split(",")[:2]
        assert (f"rate={result_of(run_dir)['rate']}", f"router={result_of(run_dir)['router']}") == (rate, router)

    table = subprocess.run([sys.executable, "-m", "analysis.compare", str(sweep), "--baseline", "jsq",
                            "--format", "csv"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    df = pd.read_csv(pd.io.common.StringIO(table))
    assert list(zip(df["rate"], df["router"])) == [(1, "jsq"), (1, "jsq_load"), (3, "jsq"), (3, "jsq_load")]
    assert (df["n"] == 1).all() and (df.loc[df.router == "jsq", "output_throughput_delta_pct"] == 0).all()

    # Interrupted sweep: one run lost its result. The rerun redoes only that one.
    lost = sweep / SWEEP_RUNS[3] / "result.json"
    lost.unlink()
    before = mtimes(sweep)
    proc = run_py(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = mtimes(sweep)
    assert proc.stdout.count("skipped:") == 3 and proc.stdout.count("results: ") == 1
    assert {k: after[k] for k in before} == before and SWEEP_RUNS[3] in after


@pytest.mark.slow
def test_sweep_interrupted_by_ctrl_c_finishes_on_rerun(tmp_path, run_py):
    """A real interruption: SIGINT once the first run has finished (the sweep held there by a test callback,
    tests/support/hold.py, so that the signal lands between runs at any machine load), then the same command
    again."""
    sweep, marker = tmp_path / "sweep", tmp_path / "first_run_done"
    args = ["-m", "router=jsq,jsq_load,vllm_default", "rate=2,4", "workload.num_requests=1500",
            f"hydra.sweep.dir={sweep}"]
    hold = ["+hydra.callbacks.hold._target_=tests.support.hold.HoldAfterFirstJob",
            f"+hydra.callbacks.hold.marker={marker}"]
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args, *hold], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=60)[0][-3000:]
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    done = mtimes(sweep)
    assert len(done) == 1, "the sweep should have been interrupted after its first run"

    rerun = run_py(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("skipped:") == len(done)
    assert rerun.stdout.count("results: ") == 6 - len(done)
    assert len(mtimes(sweep)) == 6 and all(mtimes(sweep)[k] == v for k, v in done.items())


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_job_in_its_own_process(tmp_path, run_py):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=submitit_local", "router=jsq,jsq_load", "workload.num_requests=60",
            f"hydra.sweep.dir={sweep}"]
    proc = run_py(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(mtimes(sweep)) == 2
    assert list((sweep / ".submitit").iterdir())  # the jobs ran through submitit
    before = mtimes(sweep)
    rerun = run_py(args, tmp_path)
    assert rerun.returncode == 0 and mtimes(sweep) == before
    logs = "".join(p.read_text() for p in sweep.glob("*/run.log"))
    assert logs.count("skipped:") == 2


# ---- bad input: one line naming the key, before any work ----------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("rate=-1", ("error: rate: must be > 0 (requests/s), inf (all requests at t=0) or null (a trace's own "
                 "timestamps), got -1")),
    ("parallel.dp=0", "error: parallel.dp: must be an integer >= 1 (data-parallel workers), got 0"),
    ("workload=azure_conv", "error: workload.path: trace file '"),
    ("router.S_greedy=-1", "error: router: br0: parameter S_greedy must be an integer >= "),
    ("+model.aa=1", "error: model.aa: unknown key; model has name, hf_repo, moe, a, b, c0, cw, p, "),
    ("+backend.dispatchh=pool", "error: backend.dispatchh: unknown key; backend has name, dispatch, barrier, "),
    ("router=_prior", "error: router: the chosen router config defines no router (no _target_ or name); configs "
                      "starting with _ in conf/router/ are shared bases, not routers. Valid routers: bf_io, br0, "),
])
def test_bad_value_stops_with_one_line(tmp_path, run_py, override, message):
    extra = ["router=br0"] if override.startswith("router.") else []
    proc = run_py([*extra, override, f"data.data_dir={tmp_path / 'empty'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("result.json"))


@pytest.mark.parametrize("swept", [["rate=-1,3"], ["rate=1,-1"], ["router=br0", "router.S_greedy=4,-1"],
                                    ["+arm=jsq,br0_pool", "seed=0,-2"]])
def test_a_bad_value_anywhere_in_a_sweep_stops_it_before_any_job(tmp_path, run_py, swept):
    proc = run_py(["-m", *swept, *SMALL_RUN, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.rstrip().endswith("no job was run)")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "sweep").exists() or not any((tmp_path / "sweep").iterdir())


def test_a_rejected_run_leaves_no_run_folder(tmp_path, run_py):
    proc = run_py(["rate=-1"], tmp_path)
    assert proc.returncode == 2
    assert not any((tmp_path / "outputs" / "runs").iterdir())


@pytest.mark.parametrize("group, valid", [("router", "jsq_load"), ("model", "qwen3_30b_a3b")])
def test_unknown_option_lists_the_valid_ones(tmp_path, run_py, group, valid):
    proc = run_py([f"{group}=nope"], tmp_path)
    assert proc.returncode != 0
    assert f"Could not find '{group}/nope'" in proc.stderr
    assert f"Available options in '{group}'" in proc.stderr and valid in proc.stderr


def test_a_study_without_multirun_says_to_add_m_or_pick_a_run(tmp_path, run_py):
    proc = run_py(["+experiment=bu2026_g8"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr == ("error: experiment: bu2026_g8 is a study that sweeps +arm, workload, seed; run it with -m "
                           "(python run.py -m +experiment=bu2026_g8), or pick one of its runs by also setting +arm, "
                           "workload, seed\n")
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())
    one_run = run_py(["+experiment=bu2026_g8", "+arm=jsq", "workload=bu2026_b", "seed=1",
                      "workload.num_requests=50"], tmp_path)
    assert one_run.returncode == 0, one_run.stderr
    assert json.loads(next(tmp_path.rglob("result.json")).read_text())["label"] == "jsq"
