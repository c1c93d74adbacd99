"""backend=proxy through run_experiment: an emulated fleet, the proxy over its ranks, the benchmark through it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from balanceroute.backends import ConfigError, make_backend
from balanceroute.experiment import run_experiment

#: A moderate load (TPOT ~7 ms modelled), twice as fast as the modelled GPU: the workload takes ~1.5 s.
RUN = ("model=qwen3_30b_a3b", "parallel.dp=3", "parallel.ep=false", "router=jsq_load", "rate=20",
       "workload.num_requests=60", "workload.prompt_mean=100", "workload.output_mean=20",
       "backend.fleet.time_scale=0.5")


def run(compose, tmp_path: Path, *overrides: str) -> dict:
    cfg = compose(["backend=proxy", *RUN, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path)
    return run_experiment(cfg)


def test_a_proxy_run_routes_the_workload_over_an_emulated_fleet(compose, tmp_path):
    result = run(compose, tmp_path)
    folder = tmp_path / "run"
    assert json.loads((folder / "result.json").read_text())["backend"] == "proxy"
    assert "listening on http://127.0.0.1:" in (folder / "proxy.log").read_text()
    assert "rank 2 http://127.0.0.1:" in (folder / "emulator.log").read_text()
    assert result["completed"] == 60 and result["failed"] == 0
    assert sum(result["proxy_backend_completed"]) == 60
    assert result["proxy_backend_completed"] == result["worker_requests"]  # the proxy and the client agree
    assert min(result["worker_requests"]) > 0  # jsq_load used every rank
    assert result["num_steps"] == 60 and result["mean_imbalance"] >= 0  # balance sampled at each decision


def test_a_pool_run_with_br0(compose, tmp_path):
    result = run(compose, tmp_path, "router=br0", "backend.dispatch=pool", "backend.proxy.max_num_seqs=4")
    assert result["completed"] == 60 and result["dispatch"] == "pool"


def test_bad_proxy_settings_fail_before_any_work(compose):
    cfg = compose(["backend=proxy", *RUN, "backend.dispatch=later"])
    with pytest.raises(ConfigError, match="backend.dispatch: 'later' is not a dispatch mode; valid: "
                                          "on_arrival, pool"):
        make_backend(cfg)
    cfg = compose(["backend=proxy", *RUN, "backend.targets=[localhost:8000]"])
    with pytest.raises(ConfigError, match="backend.targets: target 'localhost:8000' is not a backend base URL"):
        make_backend(cfg)
    cfg = compose(["backend=proxy", *RUN, "backend.targets=[http://127.0.0.1:8001]"])
    with pytest.raises(ConfigError, match="backend.model_name"):
        make_backend(cfg)
    cfg = compose(["backend=proxy", *RUN, "backend.fleet.time_scale=0"])
    with pytest.raises(ConfigError, match="backend.time_scale: must be a number > 0"):
        make_backend(cfg)
