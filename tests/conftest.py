"""Shared fixtures: composed Hydra configs shrunk for speed, small generated traces, and run.py as a subprocess.

Configs are composed with Hydra's compose API from the repository's conf/ (as lightning-hydra-template's tests
do), so the tests exercise the same files users run; they are shrunk (tiny model, two workers, a few dozen
requests) and pointed at a temporary folder.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from balanceroute.config import register_schemas

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
RUN_PY = REPO / "run.py"

#: Overrides that make a run take a fraction of a second: the round-number model, two workers, few requests.
SMALL = ("model=tiny", "parallel.dp=2", "workload.num_requests=40", "workload.prompt_mean=200",
         "workload.output_mean=40")


def compose_config(overrides: Sequence[str] = (), *, hydra_config: bool = False) -> DictConfig:
    """conf/config.yaml with ``overrides``, composed as run.py would (``hydra_config`` keeps the ``hydra`` node)."""
    GlobalHydra.instance().clear()
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)


def write_azure_trace(path: Path, n: int = 60, *, seed: int = 0) -> Path:
    """A small Azure-format trace (TIMESTAMP, ContextTokens, GeneratedTokens), about 2 requests/s."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2023-11-16 18:15:46")
    times = start + pd.to_timedelta(np.cumsum(rng.exponential(0.5, n)), unit="s")
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"TIMESTAMP": times.strftime("%Y-%m-%d %H:%M:%S.%f"),
                  "ContextTokens": rng.integers(20, 300, n),
                  "GeneratedTokens": rng.integers(2, 60, n)}).to_csv(path, index=False)
    return path


def write_sharegpt(path: Path, n: int = 40) -> Path:
    """A small ShareGPT-format file: conversations of one human prompt and one reply of growing length."""
    convs = [{"id": str(i), "conversations": [{"from": "human", "value": "word " * (10 + i)},
                                             {"from": "gpt", "value": "reply " * (5 + i)}]} for i in range(n)]
    path.write_text(json.dumps(convs))
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder holding small generated versions of every dataset, under the file names conf/data uses."""
    root = tmp_path_factory.mktemp("data")
    files = compose_config().data.datasets
    for name in ("azure_conv", "azure_code"):
        write_azure_trace(root / files[name].file, 2500, seed=len(name))  # >= the default num_requests
    write_sharegpt(root / files.sharegpt.file)
    GlobalHydra.instance().clear()
    return root


@pytest.fixture
def cfg_run(tmp_path, data_dir) -> DictConfig:
    """A small composed run config writing into ``tmp_path`` (as run.py's job would, without Hydra's runtime)."""
    cfg = compose_config([*SMALL, f"data.data_dir={data_dir}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path)
    yield cfg
    GlobalHydra.instance().clear()


@pytest.fixture
def hydra_runtime(tmp_path):
    """Make a config composed with its ``hydra`` node current, as in a job (run folder: ``tmp_path``), so that
    interpolations such as ``${hydra:runtime.output_dir}`` resolve."""
    def set_config(cfg: DictConfig) -> DictConfig:
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig.instance().set_config(cfg)
        return cfg
    yield set_config
    HydraConfig.instance().cfg = None


def _run_py(args: Sequence[str], cwd: Path, *, data: Path | None = None, timeout: float = 300,
            ) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in ``cwd`` (so Hydra's outputs/ lands there), capturing text output."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "BALANCEROUTE_DATA_DIR")}
    if data is not None:
        env["BALANCEROUTE_DATA_DIR"] = str(data)
    return subprocess.run([sys.executable, str(RUN_PY), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def compose():
    """:func:`compose_config`, for tests (conftest is not importable as a module)."""
    yield compose_config
    GlobalHydra.instance().clear()


@pytest.fixture
def run_py():
    """:func:`_run_py`: run.py as a subprocess."""
    return _run_py
