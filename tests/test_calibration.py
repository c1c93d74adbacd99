"""``balanceroute calibrate``: step logs in the plugin's format are read, joined across ranks and fitted back to
the coefficients that made them; the written model config runs the simulator; bad input is one clear error.

Step logs here are made from a known step model (no vLLM needed): once from random compositions with prefill,
once from the simulator's own timeline (its steps' start times and per-worker KV), so the fit is checked against
the model the simulator actually runs.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from balanceroute.calibration.fit import fit_steps
from balanceroute.calibration.steps import StepLogError, read_steps
from balanceroute.calibration.timings import TokenTimings, fit_timings, token_timings
from balanceroute.cli import main as cli_main
from balanceroute.policies import make_policy
from balanceroute.results import write_run_files
from balanceroute.sim import SimConfig, get_preset, simulate
from balanceroute.workload import synthetic

REPO = Path(__file__).resolve().parents[1]
TRUE = {"constant": 0.012, "a": 2e-6, "b": 1e-6, "p": 5e-5}
ENGINE = {"event": "engine", "dp_size": 2, "num_gpu_blocks": 1000, "block_size": 16, "max_num_seqs": 8,
          "max_num_batched_tokens": 512}


def write_step_logs(run_dir: Path, starts: np.ndarray, kv: np.ndarray, prefill: np.ndarray, *,
                    wave_every: int = 0) -> None:
    """steps/steps_dp<g>.jsonl as the plugin writes them: a header, then one line per step starting at
    ``starts[k]``; ``wave_every`` > 0 ends a wave (vLLM's ranks pausing) after that many steps."""
    folder = run_dir / "steps"
    folder.mkdir(parents=True)
    for g in range(kv.shape[1]):
        lines = [json.dumps({**ENGINE, "dp_rank": g, "dp_size": kv.shape[1]})]
        for k, t in enumerate(starts.tolist()):
            wave, counter = divmod(k, wave_every) if wave_every else (0, k)
            lines.append(json.dumps({"event": "step", "wave": wave, "k": counter, "t": t, "dur": 0.0,
                                     "reqs": 1, "tokens": 1, "prefill": int(prefill[k, g]), "kv": int(kv[k, g]),
                                     "running": 1, "waiting": 0}))
        (folder / f"steps_dp{g}.jsonl").write_text("\n".join(lines) + "\n")


def model_periods(kv: np.ndarray, prefill: np.ndarray) -> np.ndarray:
    local = TRUE["a"] * kv + TRUE["p"] * prefill
    return TRUE["constant"] + local.max(axis=1) + TRUE["b"] * kv.mean(axis=1)


def test_fit_recovers_the_coefficients_that_made_the_steps(tmp_path):
    rng = np.random.default_rng(1)
    kv = rng.integers(0, 4000, size=(600, 2)).astype(float)
    prefill = np.where(rng.random((600, 2)) < 0.15, rng.integers(1, 500, size=(600, 2)), 0).astype(float)
    periods = model_periods(kv, prefill)
    # a wave ends every 100 steps: the pause after it is no step period and must not be fitted
    starts = np.concatenate([[0.0], np.cumsum(periods)[:-1]]) + 5.0 * (np.arange(600) // 100)
    write_step_logs(tmp_path, starts, kv, prefill, wave_every=100)
    steps = read_steps(tmp_path)
    assert steps.num_steps == 600 - 6  # each wave's last step has no following step
    fit = fit_steps(steps)
    for name, value in TRUE.items():
        assert getattr(fit, name) == pytest.approx(value, rel=1e-6), name
    assert fit.r2 == pytest.approx(1.0)


def test_fit_recovers_the_simulators_own_step_model(tmp_path):
    """Decode-only workers (disaggregated prefill): every step of the simulator costs c0 + cw + a max L + b mean L
    over the KV the timeline records, so its step starts fitted back give the preset's a, b and c0 + cw."""
    preset = dataclasses.replace(get_preset("tiny"), kv_capacity_tokens=100_000)
    workload = synthetic(num_requests=60, rate=20.0, prompt_mean=100, output_mean=60, seed=3)
    result = simulate(workload, make_policy("round_robin"), SimConfig(num_workers=2, model=preset,
                                                                       prefill="disaggregated"))
    timeline = result.timeline.sort_values(["step", "worker"])
    steps = np.sort(timeline["step"].unique())
    assert np.array_equal(steps, np.arange(len(steps)))  # every step is in the timeline
    starts = timeline.groupby("step")["time_s"].first().to_numpy()
    kv = timeline["kv_load"].to_numpy().reshape(-1, 2)
    write_step_logs(tmp_path, starts, kv, np.zeros_like(kv))
    fit = fit_steps(read_steps(tmp_path))
    assert fit.a == pytest.approx(preset.a, rel=1e-6)
    assert fit.b == pytest.approx(preset.b, rel=1e-6)
    assert fit.constant == pytest.approx(preset.c0 + preset.cw, rel=1e-6)


FRONTEND_S = 0.007  # the "live" runs' front-end latency, for calibrate to find


def live_run(run_dir: Path, *, backend: str = "vllm", seed: int = 0) -> Path:
    """A finished vLLM run folder as the vllm backend writes it: result.json with the model section of
    conf/model/tiny_moe.yaml, step logs from the known step model, and requests.parquet from the simulator with
    that model, the engines' limits and FRONTEND_S of front-end latency (so a replay without it is FRONTEND_S
    short on every TTFT)."""
    rng = np.random.default_rng(seed)
    kv = rng.integers(0, 3000, size=(200, 2)).astype(float)
    prefill = np.where(rng.random((200, 2)) < 0.2, 300, 0).astype(float)
    write_step_logs(run_dir, np.concatenate([[0.0], np.cumsum(model_periods(kv, prefill))[:-1]]), kv, prefill)
    engine = get_preset("tiny").with_overrides(
        a=TRUE["a"], b=TRUE["b"], c0=0.0, cw=TRUE["constant"], p=TRUE["p"], kv_capacity_tokens=16_000, block_size=16,
        max_num_seqs=8, max_num_batched_tokens=512, frontend_latency_s=FRONTEND_S)
    workload = synthetic(num_requests=40, rate=15.0, prompt_mean=200, output_mean=30, seed=seed)
    requests = simulate(workload, make_policy("round_robin", seed=seed), SimConfig(num_workers=2, model=engine,
                                                                                     seed=seed)).requests
    model = {"name": "tiny", "hf_repo": None, "moe": True, "a": None, "b": None, "c0": None, "cw": None, "p": None,
             "kv_capacity_tokens": None, "block_size": None, "max_num_seqs": None, "max_num_batched_tokens": None,
             "external_prefill_tokens_per_s": None, "prefill_pool_tokens_per_s": None, "frontend_latency_s": None,
             "vllm": {"model": "/models/tiny_moe", "served_model_name": "tiny_moe", "max_num_seqs": 8,
                      "max_num_batched_tokens": 512}}
    config = {"model": model, "router": {"_target_": "balanceroute.policies.make_policy", "name": "round_robin"},
              "parallel": {"dp": 2, "tp": 1, "ep": True}}
    write_run_files(run_dir, {"backend": backend, "completed": 40, "seed": seed, "config": config}, requests)
    return run_dir


def test_calibrate_writes_a_model_config_the_simulator_runs(tmp_path, capsys):
    runs = [live_run(tmp_path / f"run{i}", seed=i) for i in range(2)]
    out = tmp_path / "conf" / "model" / "tiny_moe_cal.yaml"
    assert cli_main(["calibrate", *map(str, runs), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["cw"] == pytest.approx(TRUE["constant"], rel=1e-6) and report["model"]["c0"] == 0.0
    assert report["model"]["frontend_latency_s"] == pytest.approx(FRONTEND_S, rel=1e-6)
    assert report["model"]["kv_capacity_tokens"] == 16_000 and report["model"]["max_num_batched_tokens"] == 512
    assert "R^2 1.000" in out.read_text() and "vllm:" in out.read_text()
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), "backend=sim", "model=tiny_moe_cal",
                           f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "parallel.dp=2",
                           "workload.num_requests=30", f"hydra.run.dir={tmp_path / 'sim'}", "--cfg", "job"],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"cw: {report['model']['cw']}" in proc.stdout and "max_num_batched_tokens: 512" in proc.stdout
    assert f"frontend_latency_s: {report['model']['frontend_latency_s']}" in proc.stdout


@pytest.mark.parametrize("case, message", [
    ("no_steps", "no step logs"), ("sim_run", "a backend=sim run; calibrate needs backend=vllm runs"),
    ("no_result", "no result.json"), ("a_file", "no result.json"), ("no_requests", "requests.parquet")])
def test_calibrate_refuses_what_it_cannot_fit_with_one_line(tmp_path, capsys, case, message):
    run_dir = tmp_path / "run"
    if case == "no_steps":
        live_run(run_dir)
        for log in (run_dir / "steps").iterdir():
            log.unlink()
    elif case == "sim_run":
        live_run(run_dir, backend="sim")
    elif case == "no_requests":
        (live_run(run_dir) / "requests.parquet").unlink()
    elif case == "a_file":  # e.g. a sweep's multirun.yaml caught by a glob
        run_dir.write_text("{}")
    else:
        run_dir.mkdir()
    out = tmp_path / "model.yaml"
    source = ["--from", "steps"] if case == "no_steps" else []  # (auto would fit the token timings)
    assert cli_main(["calibrate", str(run_dir), "--out", str(out), *source]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_steps_of_ranks_missing_each_other_are_left_out(tmp_path):
    kv = np.full((50, 2), 100.0)
    write_step_logs(tmp_path, np.arange(50) * 0.01, kv, np.zeros_like(kv))
    log = tmp_path / "steps" / "steps_dp1.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:21]) + "\n" + lines[21][:15])  # rank 1 died mid-line after 20 steps
    with pytest.raises(StepLogError, match="only 19 complete steps"):
        fit_steps(read_steps(tmp_path))


def simulated_requests(preset, *, barrier: bool, rate: float, seed: int):
    workload = synthetic(num_requests=150, rate=rate, prompt_mean=300, output_mean=150, seed=seed)
    return simulate(workload, make_policy("jsq_load"), SimConfig(num_workers=2, model=preset, barrier=barrier,
                                                                 seed=seed)).requests


@pytest.mark.parametrize("barrier", [True, False])
def test_token_timings_recover_the_step_costs_of_the_simulator(barrier):
    """Without step logs: the simulator's per-request first and last token times, fitted back, give its constant
    and prefill cost, and a + b (two ranks' max and mean load move together; a worker of its own pays them alike,
    so then all of it is in a), close enough that the fitted model predicts other runs' mean TPOT."""
    preset = get_preset("tiny").with_overrides(a=2e-6, b=1e-6, c0=0.0, cw=0.012, p=5e-5, kv_capacity_tokens=200_000,
                                               block_size=16, max_num_seqs=8, max_num_batched_tokens=2048)
    timings = TokenTimings.concat([token_timings(simulated_requests(preset, barrier=barrier, rate=3.0, seed=s), 2,
                                                 barrier=barrier) for s in (0, 1)])
    fit = fit_timings(timings)
    assert fit.constant == pytest.approx(0.012, rel=0.03)
    assert fit.p == pytest.approx(5e-5, rel=0.1)
    assert fit.a + fit.b == pytest.approx(3e-6, rel=0.1)
    assert fit.b == 0.0 or barrier
    assert fit.r2 > 0.95
    fitted = preset.with_overrides(**fit.coefficients())
    for rate in (2.0, 5.0):  # held out: other rates and seeds
        live = simulated_requests(preset, barrier=barrier, rate=rate, seed=7)
        sim = simulated_requests(fitted, barrier=barrier, rate=rate, seed=7)
        tpot = [((f.finish_s - f.first_token_s) / (f.output_len - 1))[f.output_len > 1].mean() for f in (live, sim)]
        assert tpot[1] == pytest.approx(tpot[0], rel=0.03)


def test_token_timings_leave_out_client_stalls():
    """Tokens a paused client receives in one burst (a TPOT near zero) or after a pause are not step costs: the
    fit leaves those requests out and still finds the simulator's costs, where a plain fit of all of them would
    not; a clean run loses no request."""
    preset = get_preset("tiny").with_overrides(a=2e-6, b=1e-6, c0=0.0, cw=0.012, p=5e-5, kv_capacity_tokens=200_000,
                                               block_size=16, max_num_seqs=8, max_num_batched_tokens=2048)
    requests = simulated_requests(preset, barrier=True, rate=3.0, seed=0)
    clean = fit_timings(token_timings(requests, 2, barrier=True))
    assert clean.num_outliers == 0
    stalled = requests.copy()
    output_len = stalled["output_len"].to_numpy()
    # one in nine requests delivered at once; one in ten short ones after a 0.5 s pause (over a long output a
    # pause is a few ms a token, within the fit's noise, and kept)
    burst = np.flatnonzero(output_len > 3)[::9]
    pause = np.setdiff1d(np.flatnonzero((output_len > 3) & (output_len <= 40))[4::10], burst)
    stalled.loc[burst, "finish_s"] = stalled.loc[burst, "first_token_s"] + 1e-5
    stalled.loc[pause, "finish_s"] += 0.5
    timings = token_timings(stalled, 2, barrier=True)
    fit = fit_timings(timings)
    decoded_rows = stalled.index[(stalled["status"] == "completed") & (stalled["output_len"] >= 2)]
    assert len(decoded_rows) == timings.num_requests
    assert (fit.fitted(timings) == ~np.isin(decoded_rows, np.concatenate([burst, pause]))).all()
    assert fit.num_outliers == len(burst) + len(pause)
    assert fit.constant == pytest.approx(0.012, rel=0.05) and fit.a + fit.b == pytest.approx(3e-6, rel=0.15)
    design = np.column_stack([np.ones(timings.num_requests), timings.max_load, timings.mean_load, timings.prefill])
    plain = np.linalg.lstsq(design, timings.tpot, rcond=None)[0]
    assert abs(plain[0] - 0.012) > 0.1 * 0.012  # what the stalls do to a fit that keeps them


def test_calibrate_without_step_logs_fits_the_token_timings(tmp_path, capsys):
    runs = [live_run(tmp_path / f"run{i}", seed=i) for i in range(2)]
    for run_dir in runs:
        shutil.rmtree(run_dir / "steps")
    out = tmp_path / "model.yaml"
    assert cli_main(["calibrate", *map(str, runs), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "timings" and report["samples"] > 40 and not report["limits_measured"]
    assert report["model"]["cw"] == pytest.approx(TRUE["constant"], rel=0.05)
    assert report["model"]["frontend_latency_s"] == pytest.approx(FRONTEND_S, rel=0.25)
    # the limits asked of vLLM (model.vllm), the KV capacity the preset's: vLLM's sizing is not known
    tiny = get_preset("tiny")
    assert (report["model"]["max_num_seqs"], report["model"]["max_num_batched_tokens"]) == (8, 512)
    assert report["model"]["kv_capacity_tokens"] == tiny.kv_capacity_tokens
    text = out.read_text()
    assert "token timings" in text and "not measured" in text and "vllm:" in text


def test_token_timings_hold_one_token_requests_without_fitting_them():
    """A request of one output token (first token = last) holds its prompt + 1 tokens while it is there and gives
    no TPOT; the loads beside it stay finite."""
    requests = pd.DataFrame({"worker": [0, 1, 0], "status": "completed", "prompt_len": [100, 50, 400],
                             "output_len": [11, 11, 1], "first_token_s": [0.0, 0.0, 0.05],
                             "finish_s": [0.1, 0.1, 0.05]})
    timings = token_timings(requests, 2, barrier=True)
    assert timings.num_requests == 2 and np.isfinite(timings.max_load).all()
    assert timings.tpot == pytest.approx([0.01, 0.01])
    # worker 0 holds 101 -> 111 tokens over the window (mean 106), worker 1 51 -> 61 (mean 56)
    assert timings.max_load == pytest.approx([106, 106], abs=0.5)
    assert timings.mean_load == pytest.approx([81, 81], abs=0.5)
    assert timings.prefill == pytest.approx([40, 40])  # the 400-token prompt prefilled at 0.05 s, over 10 steps
