"""What can be prepared and from where, read from the Hydra configuration tree (``conf/``).

Why from conf/: the public URLs and pinned checksums must live in one place that both ``prepare-data`` and the
experiments read. Datasets come from ``conf/data/default.yaml`` (``data_dir`` and ``datasets``); models from
``conf/model/<name>.yaml``, where a preset with real weights carries ``hf_repo`` (and optionally
``hf_revision``). The files are read with plain OmegaConf rather than a full Hydra compose, so preparing data
does not depend on every other config group being valid.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from balanceroute.data.checksums import is_sha256

#: conf/ of a source checkout (the package is installed editable from the repository root).
DEFAULT_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DATA_CONFIG = Path("data") / "default.yaml"
MODEL_GROUP = "model"

T = TypeVar("T")


@dataclass(frozen=True)
class DatasetSpec:
    """One downloadable file: preset ``name``, source ``url``, local ``file`` name, pinned ``sha256`` or None."""

    name: str
    url: str
    file: str
    sha256: str | None


@dataclass(frozen=True)
class ModelSpec:
    """A model preset with weights on the Hugging Face hub (``revision`` None means the default branch)."""

    name: str
    repo: str
    revision: str | None


@dataclass(frozen=True)
class DataCatalog:
    """``data_dir`` as configured (relative paths are relative to the working directory) and the datasets."""

    data_dir: Path
    datasets: dict[str, DatasetSpec]


@dataclass(frozen=True)
class ModelCatalog:
    """Model presets that name weights (``fetchable``) and those that are simulator-only (``simulated``)."""

    fetchable: dict[str, ModelSpec]
    simulated: tuple[str, ...]


def resolve_conf_dir(conf_dir: Path | str | None) -> Path:
    path = Path(conf_dir) if conf_dir is not None else DEFAULT_CONF_DIR
    if not path.is_dir():
        raise ValueError(f"config directory {path} does not exist; pass --config-dir pointing at the project's conf/")
    return path


def load_catalog(conf_dir: Path | str | None = None) -> DataCatalog:
    """Read ``<conf>/data/default.yaml``; ValueError naming the file and key if an entry is malformed."""
    path = resolve_conf_dir(conf_dir) / DATA_CONFIG
    cfg = _load(path)
    try:
        data_dir = cfg.get("data_dir")
        entries = cfg.get("datasets")
    except OmegaConfBaseException as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not data_dir:
        raise ValueError(f"{path}: 'data_dir' is missing or empty")
    if not isinstance(entries, DictConfig) or not entries:
        raise ValueError(f"{path}: 'datasets' must map preset names to {{url, file, sha256}}")
    datasets = {str(name): _dataset(path, str(name), entry) for name, entry in entries.items()}
    return DataCatalog(data_dir=Path(str(data_dir)), datasets=datasets)


def load_models(conf_dir: Path | str | None = None) -> ModelCatalog:
    """Read every ``<conf>/model/*.yaml``; those with ``hf_repo`` can be fetched.

    Files whose name starts with ``_`` (e.g. ``_base.yaml``, pulled in through a defaults list) are shared
    fragments, not presets, and are skipped.
    """
    group = resolve_conf_dir(conf_dir) / MODEL_GROUP
    fetchable: dict[str, ModelSpec] = {}
    simulated: list[str] = []
    for path in sorted(group.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        cfg = _load(path)
        try:
            repo = cfg.get("hf_repo")
            revision = cfg.get("hf_revision")
        except OmegaConfBaseException as exc:
            raise ValueError(f"{path}: {exc}") from exc
        if repo:
            fetchable[path.stem] = ModelSpec(path.stem, str(repo), str(revision) if revision else None)
        else:
            simulated.append(path.stem)
    return ModelCatalog(fetchable=fetchable, simulated=tuple(simulated))


def select(requested: Iterable[str], available: Mapping[str, T], kind: str, *,
           unavailable: Mapping[str, str] | None = None) -> list[T]:
    """The entries named in ``requested``, in order and without repeats.

    An unknown name raises ValueError listing the valid ones; ``unavailable`` maps names that exist but cannot
    be selected to the reason (e.g. a simulator-only model preset).
    """
    chosen: dict[str, T] = {}
    for name in requested:
        if name in available:
            chosen.setdefault(name, available[name])
        elif unavailable and name in unavailable:
            raise ValueError(f"{kind} {name!r} {unavailable[name]}; valid: {_names(available)}")
        else:
            raise ValueError(f"unknown {kind} {name!r}; valid: {_names(available)}")
    return list(chosen.values())


def _names(available: Mapping[str, object]) -> str:
    return ", ".join(sorted(available)) or "(none configured)"


def _load(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError as exc:
        raise ValueError(f"config file {path} does not exist") from exc
    except Exception as exc:  # yaml.YAMLError and OmegaConf errors: report the file, not a parser traceback
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return cfg


def _dataset(path: Path, name: str, entry: object) -> DatasetSpec:
    where = f"{path}: datasets.{name}"
    if not isinstance(entry, DictConfig):
        raise ValueError(f"{where} must be a mapping with url, file and sha256")
    try:
        url, file, sha = entry.get("url"), entry.get("file"), entry.get("sha256")
    except OmegaConfBaseException as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"{where}.url must be an http(s) URL, got {url!r}")
    if not isinstance(file, str) or file in ("", ".", "..") or Path(file).name != file:
        raise ValueError(f"{where}.file must be a plain file name, got {file!r}")
    if sha is not None:
        sha = str(sha).lower()
        if not is_sha256(sha):
            raise ValueError(f"{where}.sha256 must be 64 hex digits or null, got {entry.get('sha256')!r}")
    return DatasetSpec(name=name, url=url, file=file, sha256=sha)
