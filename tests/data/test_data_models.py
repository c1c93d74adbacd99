"""Model weights through huggingface_hub: never a real hub; a fake cache, a local server or a recording seam."""
from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from balanceroute.data.catalog import ModelSpec
from balanceroute.data.errors import DownloadError
from balanceroute.data.models import prepare_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_test_secret_token_never_printed"


def fake_hub_cache(hf_home: Path, repo: str, payload: bytes) -> Path:
    """The layout huggingface_hub leaves after a download: a blob, a snapshot symlinking to it, refs/main."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / "abc").write_bytes(payload)
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(root / "blobs" / "abc")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_snapshot_download_gets_repo_revision_and_mode_but_no_token(tmp_path):
    pytest.importorskip("huggingface_hub")
    calls = []

    def recording(**kwargs):
        calls.append(kwargs)
        return str(tmp_path)

    spec = ModelSpec("m", "org/model", "v1.0")
    prepare_model(spec, force=True, snapshot_download=recording)
    prepare_model(spec, offline=True, snapshot_download=recording)
    assert calls == [
        {"repo_id": "org/model", "revision": "v1.0", "local_files_only": False, "force_download": True},
        {"repo_id": "org/model", "revision": "v1.0", "local_files_only": True, "force_download": False},
    ]


def test_hub_reads_hf_token_itself_and_errors_never_show_it(server, tmp_path, monkeypatch, caplog):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    real = functools.partial(hub.snapshot_download, endpoint=server.base_url, cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.DEBUG), pytest.raises(DownloadError, match=r"m: cannot fetch org/model") as err:
        prepare_model(ModelSpec("m", "org/model", None), snapshot_download=real)
    assert server.requests, "the hub client never reached the local endpoint"
    assert {r.authorization for r in server.requests} == {f"Bearer {TOKEN}"}
    assert TOKEN not in str(err.value) and TOKEN not in caplog.text
    assert not any(TOKEN in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The real entry point in a fresh interpreter, so huggingface_hub reads HF_HOME from this environment."""
    code = ("import sys, balanceroute.cli as c; c.SUBCOMMAND_MODULES = {'prepare-data': 'balanceroute.data.cli'}; "
            "c.installed_commands = list; "
            "sys.exit(c.main(sys.argv[1:]))")
    base = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    return subprocess.run([sys.executable, "-c", code, "prepare-data", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_offline_models_resolve_from_hf_home_and_missing_ones_name_the_fetch_command(tmp_path, make_conf):
    pytest.importorskip("huggingface_hub")
    conf = make_conf(tmp_path / "conf", {"unused": {"url": "http://127.0.0.1:9/x", "file": "x", "sha256": None}},
                      models={"tiny": "org/tiny", "big": "org/big", "sim_only": None})
    hf_home = tmp_path / "hf"
    snapshot = fake_hub_cache(hf_home, "org/tiny", b"w" * 2048)
    env = {"HF_HOME": str(hf_home), "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1"}

    ok = _run_cli(["--config-dir", str(conf), "--models", "tiny", "--offline"], env)
    assert ok.returncode == 0, ok.stderr
    assert f"models in the Hugging Face cache {hf_home / 'hub'}:" in ok.stdout
    assert str(snapshot) in ok.stdout and "2.0 KiB" in ok.stdout
    assert f"use: HF_HUB_CACHE={hf_home / 'hub'} HF_HUB_OFFLINE=1 python run.py model=tiny" in ok.stdout

    missing = _run_cli(["--config-dir", str(conf), "--models", "tiny,big", "--offline"], env)
    assert missing.returncode == 1
    assert "org/big (big): not in the Hugging Face cache" in missing.stderr
    assert "fetch with: balanceroute prepare-data --models big\n" in missing.stderr
    assert TOKEN not in ok.stdout + ok.stderr + missing.stdout + missing.stderr


def test_missing_huggingface_hub_names_the_extra(tmp_path, monkeypatch, cli_main, capsys, make_conf):
    conf = make_conf(tmp_path / "conf", {"unused": {"url": "http://127.0.0.1:9/x", "file": "x", "sha256": None}},
                      models={"tiny": "org/tiny"})
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    assert cli_main(["prepare-data", "--config-dir", str(conf), "--models", "tiny"]) == 2
    assert "pip install 'balanceroute[data]'" in capsys.readouterr().err
