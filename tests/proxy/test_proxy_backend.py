"""backend=proxy through run_experiment: an emulated fleet, the proxy over its ranks, the benchmark through it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import open_dict

from balanceroute.backends import make_backend
from balanceroute.config import ConfigError
from balanceroute.experiment import RunFailed, check_config, check_live_outcome, run_experiment

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
        make_backend(check_config(cfg))
    cfg = compose(["backend=proxy", *RUN, "backend.targets=[localhost:8000]"])
    with pytest.raises(ConfigError, match="backend.targets: target 'localhost:8000' is not a backend base URL"):
        make_backend(check_config(cfg))
    cfg = compose(["backend=proxy", *RUN, "backend.targets=[http://127.0.0.1:8001]"])
    with pytest.raises(ConfigError, match="backend.model_name"):
        make_backend(check_config(cfg))
    cfg = compose(["backend=proxy", *RUN, "backend.fleet.time_scale=0"])
    with pytest.raises(ConfigError, match="backend.fleet.time_scale: must be a number > 0"):
        make_backend(check_config(cfg))


def test_a_live_run_whose_requests_fail_ends_non_zero_with_one_line_and_keeps_its_result(tmp_path, run_py):
    """Every prompt is longer than the tiny model's KV cache, so the emulated fleet refuses each (HTTP 400): the
    run says so in one line and exits 1, with the failures recorded in its result."""
    proc = run_py(["backend=emulated", "model=tiny", "parallel.dp=1", "workload.num_requests=5", "rate=50",
                   "workload.distribution=constant", "workload.prompt_mean=6000", "workload.output_mean=4",
                   "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: backend=emulated: 0/5 completed, 5 failed (http_400: 5): nothing "
                                  "completed. Result kept in "), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["failed"] == 5 and result["error_counts"] == {"http_400": 5}


def test_live_run_limits_are_validated(compose):
    with pytest.raises(ConfigError, match=r"^backend.bench.max_failed_fraction: must be a number in \[0, 1\], "
                                          r"got 1.5"):
        make_backend(check_config(compose(["backend=proxy", "backend.bench.max_failed_fraction=1.5"])))
    with pytest.raises(ConfigError, match=r"^backend.bench.stall_timeout_s: must be a number > 0 or null, got 0"):
        make_backend(check_config(compose(["backend=emulated", "backend.bench.stall_timeout_s=0"])))


@pytest.mark.parametrize("result, message", [
    ({"num_requests": 10, "completed": 4, "failed": 6, "error_counts": {"http_503": 6}},
     "backend=proxy: 4/10 completed, 6 failed (http_503: 6): more than backend.bench.max_failed_fraction=0.5"),
    ({"num_requests": 10, "completed": 3, "failed": 0, "stalled": True},
     "backend=proxy: 3/10 completed, 0 failed; stalled: nothing finished for backend.bench.stall_timeout_s=120.0 s"),
    ({"num_requests": 10, "completed": 5, "failed": 5}, None),  # at the limit: a measurement, with its failures
])
def test_which_live_outcomes_fail_the_run(compose, tmp_path, result, message):
    cfg = compose(["backend=proxy"])
    if message is None:
        check_live_outcome(check_config(cfg), result, tmp_path)
        return
    with pytest.raises(RunFailed, match=f"^{re.escape(message)}"):
        check_live_outcome(check_config(cfg), result, tmp_path)
    check_live_outcome(check_config(compose(["backend=sim"])), result, tmp_path)  # the simulator's failures are outcomes
