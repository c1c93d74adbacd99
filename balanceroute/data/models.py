"""Model weights through ``huggingface_hub.snapshot_download``, into the Hugging Face cache.

Why the hub cache rather than a folder of our own: vLLM resolves ``--model <repo>`` from that cache, so a cache
on shared storage (``HF_HOME``) serves every node without path overrides, and huggingface_hub already resumes,
deduplicates and verifies (etag / sha256) each file. Credentials are left entirely to huggingface_hub: it reads
``HF_TOKEN`` (or the token file under ``HF_HOME``) itself; this module never reads, passes, stores or logs a
token. huggingface_hub is an optional dependency (the ``data`` extra), imported only when a model is requested.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balanceroute.data.catalog import ModelSpec
from balanceroute.data.errors import DataError, DownloadError, MissingDataError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'balanceroute[data]'  (or: pip install 'huggingface_hub>=0.20')"


@dataclass(frozen=True)
class PreparedModel:
    """A model snapshot present in the hub cache: local ``path`` and total ``size`` in bytes."""

    model: str
    repo: str
    revision: str | None
    path: Path
    size: int


def hub_cache() -> Path:
    """Where huggingface_hub keeps snapshots: ``HF_HUB_CACHE``, default ``$HF_HOME/hub``."""
    return Path(_hub().constants.HF_HUB_CACHE)


def prepare_model(spec: ModelSpec, *, offline: bool = False, force: bool = False,
                  snapshot_download: Callable[..., Any] | None = None) -> PreparedModel:
    """Fetch (or, with ``offline``, only locate) the snapshot of ``spec.repo`` at ``spec.revision``.

    ``snapshot_download`` defaults to huggingface_hub's; tests pass a stand-in with the same signature.
    """
    if offline and force:
        raise ValueError("--offline and --force contradict each other: --force re-downloads")
    hub = _hub()
    if snapshot_download is None:
        snapshot_download = hub.snapshot_download
    where = spec.repo + (f"@{spec.revision}" if spec.revision else "")
    log.info("%s: %s %s", spec.name, "locating cached" if offline else "fetching", where)
    try:
        path = snapshot_download(repo_id=spec.repo, revision=spec.revision, local_files_only=offline,
                                 force_download=force)
    except hub.errors.LocalEntryNotFoundError as exc:
        if offline:
            raise MissingDataError(spec.name, where, "not in the Hugging Face cache") from exc
        raise DownloadError(f"{spec.name}: cannot fetch {where}: {exc}") from exc
    except (OSError, ValueError) as exc:  # hub HTTP errors (not found, gated, 401) are OSErrors
        raise DownloadError(f"{spec.name}: cannot fetch {where}: {exc}") from exc
    path = Path(path)
    return PreparedModel(spec.name, spec.repo, spec.revision, path, _tree_size(path))


def _tree_size(root: Path) -> int:
    """Bytes under ``root``, following the cache's symlinks to the blobs they name."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _hub() -> Any:
    """The huggingface_hub package with the submodules used here loaded (it imports them lazily)."""
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
    except ImportError as exc:
        raise DataError(f"fetching models needs huggingface_hub, which is not installed: {INSTALL_HINT}") from exc
    return huggingface_hub
