"""backend=emulated through run_experiment: the fleet as a subprocess, benchmarked, agreeing with backend=sim."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from balanceroute.backends import emulated, make_backend
from balanceroute.config import ConfigError
from balanceroute.experiment import check_config, run_experiment

RUN = ("model=qwen3_30b_a3b", "parallel.dp=4", "router=jsq_load", "rate=8", "workload.num_requests=120",
       "workload.prompt_mean=400", "workload.output_mean=60")


def run(compose, tmp_path: Path, *overrides: str) -> dict:
    cfg = compose([*RUN, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / cfg.backend.name)
        cfg.paths.log_dir = str(tmp_path)
    return run_experiment(cfg)


@pytest.mark.slow
@pytest.mark.wallclock
def test_an_emulated_run_agrees_with_the_simulator(compose, tmp_path):
    sim = run(compose, tmp_path, "backend=sim")
    live = run(compose, tmp_path, "backend=emulated")
    folder = tmp_path / "emulated"
    assert json.loads((folder / "result.json").read_text())["backend"] == "emulated"
    assert (folder / "requests.parquet").is_file()
    assert "front http://127.0.0.1:" in (folder / "emulator.log").read_text()
    assert live["completed"] == sim["completed"] == 120
    assert live["total_output_tokens"] == sim["total_output_tokens"]
    assert live["total_input_tokens"] == sim["total_input_tokens"]
    assert live["vllm_engine_requests"] == live["worker_requests"]  # the fleet's counters agree with the client
    assert sum(live["vllm_engine_generation_tokens"]) == live["total_output_tokens"]
    for key, tolerance in (("output_throughput", 0.05), ("request_throughput", 0.05), ("mean_tpot_ms", 0.05),
                           ("mean_e2el_ms", 0.05), ("mean_imbalance", 0.10), ("mean_kv_load", 0.10)):
        assert live[key] == pytest.approx(sim[key], rel=tolerance), key
    # TTFT (~15 ms here) also holds the HTTP round trip and the timer's lateness: a few ms, never less
    assert sim["mean_ttft_ms"] - 1 < live["mean_ttft_ms"] < sim["mean_ttft_ms"] + 10


def test_bad_backend_settings_fail_before_any_work(compose):
    cfg = compose([*RUN, "backend=emulated", "backend.time_scale=0"])
    with pytest.raises(ConfigError, match="backend.time_scale: must be a number > 0"):
        make_backend(check_config(cfg))
    cfg = compose([*RUN, "backend=emulated", "+backend.bench.tokenizer=x"])
    with pytest.raises(ConfigError, match="backend.bench.tokenizer: unknown key; backend.bench has endpoint,"):
        make_backend(check_config(cfg))


def test_the_fleet_command_carries_model_overrides_and_router_parameters(compose, tmp_path):
    from balanceroute.backends import RunSpec
    from balanceroute.workload import synthetic
    cfg = compose([*RUN, "backend=emulated", "model.b=0", "backend.time_scale=2", "parallel.ep=false"])
    backend = make_backend(check_config(cfg))
    spec = RunSpec(workload=synthetic(2, rate=1.0), policy=None, router={"name": "fast_phi", "k": 3}, seed=5,
                   run_dir=tmp_path)
    cmd = backend.command(spec, 9000)[len(emulated.COMMAND):]
    assert " ".join(cmd) == ("--ranks 4 --model qwen3_30b_a3b --host 127.0.0.1 --port 9000 --no-barrier "
                             "--time-scale 2.0 --router fast_phi --seed 5 --model-param b=0.0 --router-param k=3")
