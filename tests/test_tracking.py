"""logger=wandb end to end with real W&B offline runs: the summary is result.json, no secret reaches any file, the
results survive W&B failures; and the pure parts (redaction, the load series) by hand."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from analysis.collect import collect_runs
from analysis.wandb_runs import (
    collect_offline,
    collect_wandb,
    read_offline_run,
    read_records,
    result_of,
)
from balanceroute.config import ConfigError
from balanceroute.experiment import run_experiment
from balanceroute.tracking import NullTracker, record_run
from balanceroute.tracking.secrets import REDACTED, redact, secret_values
from balanceroute.tracking.wandb_sink import (
    WandbOptions,
    WandbTracker,
    load_row,
    summary_of,
    thin_timeline,
)

wandb = pytest.importorskip("wandb", reason="logger=wandb needs the wandb package (pip install 'balanceroute[wandb]')")

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"
#: Secret-looking values planted in the environment of the W&B run (fake, but shaped like the real ones).
SECRETS = {
    "WANDB_API_KEY": "local-0123456789abcdef0123456789abcdef01234567",
    "HF_TOKEN": "hf_PlantedSecretTokenValue42xyz",
    "OPENAI_API_KEY": "sk-planted-0123456789abcdefghij",
    "AWS_SECRET_ACCESS_KEY": "planted/AWS+secret/0123456789abcdef",
}
SMALL = ["model=tiny", "parallel.dp=2", "workload.num_requests=40", "workload.prompt_mean=200",
         "workload.output_mean=40"]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> Path:
    """One run of run.py with logger=wandb in offline mode, secrets in its environment and one of them pulled into
    its config (``+model.vllm.env.HF_TOKEN=${oc.env:HF_TOKEN}``, as a vLLM server's environment would); HOME is a temporary folder, so W&B's own cache, config
    and data folders are inside it too. Returns the temporary root (run folder: ``run/``, home: ``home/``)."""
    root = tmp_path_factory.mktemp("wandb_offline")
    (root / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "HYDRA_FULL_ERROR"}
    env.update(SECRETS, HOME=str(root / "home"))
    small = ["model=tiny_moe" if a == "model=tiny" else a for a in SMALL]  # tiny's preset, with a vllm section
    args = [*small, "logger=wandb", "logger.mode=offline", "logger.tags=[test]", "+model.vllm.env.HF_TOKEN=${oc.env:HF_TOKEN}",
            f"hydra.run.dir={root / 'run'}"]
    proc = subprocess.run([sys.executable, str(RUN_PY), *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    return root


def wandb_file(run_dir: Path) -> Path:
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return path


def test_offline_run_summary_equals_result_json(offline_run):
    run_dir = offline_run / "run"
    result = json.loads((run_dir / "result.json").read_text())
    run = read_offline_run(wandb_file(run_dir))
    expected = summary_of(result)
    assert {k: run.summary[k] for k in expected} == expected  # every key, the same value (lists and nulls too)
    assert result_of(run)["config"] == result["config"]
    assert (run.group, run.job_type, run.tags, run.name) == ("default", "sim", ("test",), "run")


def test_offline_run_holds_load_series_request_table_and_result_artifact(offline_run):
    run_dir = offline_run / "run"
    records = list(read_records(wandb_file(run_dir)))
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    load = [row for row in history if "load/time_s" in row]
    timeline = pd.read_parquet(run_dir / "timeline.parquet")
    assert 0 < len(load) <= 500 and len(load) == min(500, timeline["step"].nunique())
    first = timeline[timeline["step"] == timeline["step"].min()].sort_values("worker")
    assert [load[0][f"load/kv_load/worker_{w}"] for w in (0, 1)] == first["kv_load"].tolist()
    assert load[0]["load/imbalance"] == 2 * first["kv_load"].max() - first["kv_load"].sum()

    run = read_offline_run(wandb_file(run_dir))
    assert run.summary["requests"]["_type"] == "table-file" and run.summary["requests"]["nrows"] == 40
    (table_file,) = run_dir.glob("wandb/offline-run-*/files/media/table/requests_*.table.json")
    table = json.loads(table_file.read_text())
    assert {"request_id", "worker", "ttft_ms", "tpot_ms", "e2el_ms"} <= set(table["columns"])

    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"
                   and r.artifact.type == "run-results"]
    result = json.loads((run_dir / "result.json").read_text())
    assert artifact.name == f"run-{result['config_hash']}"
    assert {e.path for e in artifact.manifest.contents} == {
        "result.json", "requests.parquet", "timeline.parquet", ".hydra/config.yaml", ".hydra/overrides.yaml"}


def test_no_secret_reaches_any_file_the_run_writes(offline_run):
    files = [p for p in offline_run.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files) and any(".cache" in p.parts for p in files)  # W&B wrote files
    leaks = {str(p.relative_to(offline_run)): name for p in files for name, value in SECRETS.items()
             if value.encode() in p.read_bytes()}
    assert leaks == {}
    # the secret pulled into the config arrived there, redacted, in result.json and in the W&B config
    result = json.loads((offline_run / "run" / "result.json").read_text())
    assert result["config"]["model"]["vllm"]["env"]["HF_TOKEN"] == REDACTED
    assert read_offline_run(wandb_file(offline_run / "run")).config["model"]["vllm"]["env"]["HF_TOKEN"] == REDACTED


def test_collecting_offline_runs_gives_the_local_frame(offline_run):
    local = collect_runs(offline_run / "run")
    mirrored = collect_offline(offline_run)
    assert sorted(mirrored.columns) == sorted(local.columns)
    assert mirrored["run_dir"].iloc[0].endswith(wandb_file(offline_run / "run").parent.name)
    pd.testing.assert_frame_equal(mirrored.drop(columns="run_dir")[sorted(local.columns.drop("run_dir"))],
                                  local.drop(columns="run_dir")[sorted(local.columns.drop("run_dir"))])


class _RecordedApi:
    """Stands in for ``wandb.Api`` (which needs the network): serves ``wandb.apis.public.Run`` objects built from
    run fields as W&B's GraphQL API returns them (config entries wrapped as {value, desc}, JSON strings)."""

    def __init__(self, runs: list[dict]) -> None:
        self.attrs = runs
        self.asked: list[tuple] = []

    def runs(self, path: str, filters: dict | None = None, lazy: bool = True) -> list:
        from wandb.apis.public.runs import Run

        self.asked.append((path, filters, lazy))
        entity, project = path.split("/")
        return [Run(None, entity, project, a["name"], attrs=a, lazy=lazy) for a in self.attrs]


def test_collecting_through_the_public_api_gives_the_local_frame(offline_run):
    run = read_offline_run(wandb_file(offline_run / "run"))
    response = {"id": "UnVuOjE=", "name": run.id, "displayName": run.name, "group": run.group, "tags": list(run.tags),
                "jobType": run.job_type, "state": "finished",
                "config": json.dumps({k: {"value": v, "desc": None} for k, v in run.config.items()}),
                "summaryMetrics": json.dumps(run.summary)}
    api = _RecordedApi([response, {**response, "name": "other", "summaryMetrics": "{}"}])  # + a run without results
    frame = collect_wandb("team/balanceroute", filters={"group": "default"}, api=api)
    assert api.asked == [("team/balanceroute", {"group": "default"}, False)]
    local = collect_runs(offline_run / "run")
    assert frame["run_dir"].tolist() == [f"wandb:team/balanceroute/{run.id}"]
    pd.testing.assert_frame_equal(frame[local.columns.drop("run_dir")], local.drop(columns="run_dir"))


# ---- failures never cost the local results ---------------------------------------------------------------------
def test_online_without_an_api_key_warns_and_keeps_the_results(cfg_run, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no wandb settings
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    with open_dict(cfg_run):
        cfg_run.logger = {"name": "wandb", "mode": "online", "project": "p", "init_timeout_s": 10}
    caplog.set_level(logging.WARNING)
    result = run_experiment(cfg_run)
    assert "W&B: could not start a run" in caplog.text
    assert json.loads((Path(cfg_run.paths.output_dir) / "result.json").read_text()) == result


@pytest.mark.slow
def test_unreachable_server_warns_and_keeps_the_results(cfg_run, tmp_path, monkeypatch, caplog):
    """No network: the W&B server's address refuses connections; wandb gives up after init_timeout_s."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with open_dict(cfg_run):
        cfg_run.logger = {"name": "wandb", "mode": "online", "project": "p", "init_timeout_s": 3}
    caplog.set_level(logging.WARNING)
    result = run_experiment(cfg_run)
    assert "W&B: could not start a run" in caplog.text and SECRETS["WANDB_API_KEY"] not in caplog.text
    assert json.loads((Path(cfg_run.paths.output_dir) / "result.json").read_text()) == result


class _LostConnection:
    """A W&B run whose connection drops at the first log call (what a real run does when the network goes)."""

    def __init__(self) -> None:
        self.finished_with: list[int] = []

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log(self, row) -> None:
        raise ConnectionError("connection reset by peer")

    def finish(self, exit_code: int = 0) -> None:
        self.finished_with.append(exit_code)


def test_a_failure_mid_run_warns_once_and_the_files_are_written(tmp_path, caplog):
    run = _LostConnection()
    tracker = WandbTracker(run, WandbOptions(mode="offline"))
    timeline = pd.DataFrame({"time_s": [0.0, 0.0], "step": [0, 0], "worker": [0, 1], "kv_load": [5.0, 3.0],
                             "running": [1, 1], "waiting": [0, 0]})
    caplog.set_level(logging.WARNING)
    written = record_run(tmp_path, {"config_hash": "abc", "completed": 1}, None, timeline, tracker)
    tracker.log_load(1.0, np.array([1.0, 2.0]))
    tracker.finish()
    assert caplog.text.count("W&B:") == 1 and "connection reset by peer" in caplog.text
    assert run.finished_with == [1]  # closed as failed, once
    assert json.loads((tmp_path / "result.json").read_text()) == written
    assert (tmp_path / "timeline.parquet").is_file()


@pytest.mark.parametrize("logger, message", [
    ({"mode": "sometimes"}, "logger: mode: 'sometimes' is not a W&B mode; valid modes: online, offline, disabled"),
    ({"colour": "red"}, "logger.colour: unknown key; logger has mode, project, entity"),
    ({"table_rows": -1}, "logger: table_rows: must be an integer >= 0, got -1"),
])
def test_a_bad_logger_option_stops_the_run_before_any_work(cfg_run, logger, message):
    with open_dict(cfg_run):
        cfg_run.logger = {"name": "wandb", **logger}
    with pytest.raises(ConfigError) as error:
        run_experiment(cfg_run)
    assert str(error.value).startswith(message)
    run_dir = Path(cfg_run.paths.output_dir)
    assert not (run_dir / "result.json").exists() and not (run_dir / "wandb").exists()


def test_logger_none_writes_only_the_run_files(cfg_run):
    run_experiment(cfg_run)
    assert not (Path(cfg_run.paths.output_dir) / "wandb").exists()


# ---- pure parts ------------------------------------------------------------------------------------------------------
def test_redact_replaces_env_secrets_and_secret_keys_only():
    env = {"HF_TOKEN": "hf_abcdefgh12345", "WANDB_API_KEY": "k" * 40, "TOKENIZERS_PARALLELISM": "false",
           "PATH": "/usr/bin:/bin"}
    secrets = secret_values(env)
    assert set(secrets) == {"hf_abcdefgh12345", "k" * 40}  # short values of secret-named variables are not secrets
    data = {"url": "https://x/?t=hf_abcdefgh12345", "nested": [{"api_key": "anything"}, "k" * 40],
            "max_num_batched_tokens": 8192, "tokenizer": "Qwen/Qwen3-0.6B", "hf_token": None, "path": "/usr/bin"}
    assert redact(data, secrets) == {
        "url": f"https://x/?t={REDACTED}", "nested": [{"api_key": REDACTED}, REDACTED],
        "max_num_batched_tokens": 8192, "tokenizer": "Qwen/Qwen3-0.6B", "hf_token": None, "path": "/usr/bin"}


def test_load_row_and_thinning():
    row = load_row(2.5, np.array([10.0, 40.0, 25.0]), running=np.array([1, 4, 2]))
    assert row["load/time_s"] == 2.5 and row["load/imbalance"] == 3 * 40 - 75 and row["load/spread"] == 30
    assert [row[f"load/kv_load/worker_{g}"] for g in range(3)] == [10, 40, 25]
    assert row["load/running/worker_1"] == 4 and "load/waiting/worker_0" not in row
    steps = np.repeat(np.arange(0, 1000, 2), 2)
    timeline = pd.DataFrame({"step": steps, "worker": np.tile([0, 1], 500), "time_s": steps * 0.01,
                             "kv_load": 1.0, "running": 1, "waiting": 0})
    thinned = thin_timeline(timeline, 50)
    kept = np.unique(thinned["step"])
    assert len(kept) == 50 and kept[0] == 0 and kept[-1] == 998 and len(thinned) == 100


def test_null_tracker_is_silent(tmp_path):
    record_run(tmp_path, {"a": 1}, tracker=NullTracker())
    assert json.loads((tmp_path / "result.json").read_text()) == {"a": 1}
