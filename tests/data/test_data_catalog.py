"""The presets in conf/: the project's own data config, validation of malformed entries, model discovery."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import balanceroute
from balanceroute.data.catalog import DEFAULT_CONF_DIR, load_catalog, load_models, select

REAL_MODELS_WITH_WEIGHTS = ("qwen3_0_6b", "qwen3_30b_a3b", "deepseek_v3", "deepseek_v4_flash")


def test_project_config_names_the_three_public_datasets(monkeypatch):
    monkeypatch.delenv("BALANCEROUTE_DATA_DIR", raising=False)
    catalog = load_catalog()
    assert catalog.data_dir == Path("data")
    assert set(catalog.datasets) == {"azure_conv", "azure_code", "sharegpt"}
    assert all(spec.url.startswith("https://") for spec in catalog.datasets.values())
    assert catalog.datasets["azure_conv"].file == "azure_llm_2023_conv.csv"
    assert catalog.datasets["azure_code"].sha256 is not None  # pinned together with a commit URL


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BALANCEROUTE_DATA_DIR", str(tmp_path))
    assert load_catalog().data_dir == tmp_path


def test_public_urls_live_only_in_the_config():
    hosts = ("raw.githubusercontent.com", "huggingface.co/datasets")
    sources = Path(balanceroute.__file__).parent.rglob("*.py")
    offenders = [str(p) for p in sources if any(h in p.read_text() for h in hosts)]
    assert offenders == []


@pytest.mark.parametrize(("entry", "message"), [
    ({"url": "ftp://x/y", "file": "y", "sha256": None}, "datasets.d.url must be an http(s) URL"),
    ({"url": "http://x/y", "file": "../y", "sha256": None}, "datasets.d.file must be a plain file name"),
    ({"url": "http://x/y", "file": "y", "sha256": "abc"}, "datasets.d.sha256 must be 64 hex digits or null"),
])
def test_malformed_dataset_entries_are_rejected_naming_the_key(tmp_path, make_conf, entry, message):
    conf = make_conf(tmp_path / "conf", {"d": entry})
    with pytest.raises(ValueError, match=re.escape(message)):
        load_catalog(conf)


def test_missing_config_directory_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist; pass --config-dir"):
        load_catalog(tmp_path / "nowhere")


def test_models_with_hf_repo_are_fetchable_and_the_rest_simulated(tmp_path, make_conf):
    conf = make_conf(tmp_path / "conf", {"d": {"url": "http://x/y", "file": "y", "sha256": None}},
                     models={"big": "org/big", "small": None})
    (conf / "model" / "pinned.yaml").write_text("hf_repo: org/pinned\nhf_revision: abc123\n")
    (conf / "model" / "_base.yaml").write_text("hf_repo: null\n")  # a shared fragment, not a preset
    models = load_models(conf)
    assert sorted(models.fetchable) == ["big", "pinned"]
    assert models.fetchable["pinned"].revision == "abc123" and models.fetchable["big"].revision is None
    assert models.simulated == ("small",)
    assert [m.repo for m in select(["pinned", "big", "pinned"], models.fetchable, "model")] == ["org/pinned",
                                                                                               "org/big"]


def test_project_model_presets_for_real_runs_name_their_weights():
    present = [name for name in REAL_MODELS_WITH_WEIGHTS if (DEFAULT_CONF_DIR / "model" / f"{name}.yaml").exists()]
    if not present:
        pytest.skip("none of the real model presets is in conf/model/ yet")
    fetchable = load_models().fetchable
    assert [name for name in present if name not in fetchable] == []
