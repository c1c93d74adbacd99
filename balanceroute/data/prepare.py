"""Bring one dataset file into the data directory: reuse a verified copy, or download, verify and place it.

The invariant experiments rely on: a file under its final name is complete and matches its recorded checksum.
Downloads go to ``<name>.part`` (resumable), are hashed, checked against the pinned checksum if the config has
one, get their ``<name>.sha256`` sidecar, and only then are moved into place with ``os.replace``.
"""
from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from balanceroute.data import checksums
from balanceroute.data.catalog import DatasetSpec
from balanceroute.data.download import download
from balanceroute.data.errors import DownloadError, MissingDataError

log = logging.getLogger(__name__)

DOWNLOADED = "downloaded"
VERIFIED = "verified"
RECORDED = "checksum recorded"
UNRECORDED = "checksum not recorded: read-only"


@dataclass(frozen=True)
class PreparedFile:
    """A dataset file ready under its final name; ``status`` says what this run did with it."""

    dataset: str
    path: Path
    size: int
    sha256: str
    status: str


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def prepare_dataset(spec: DatasetSpec, data_dir: Path, *, offline: bool = False, force: bool = False,
                    retries: int = 3, backoff_s: float = 1.0) -> PreparedFile:
    """Make ``data_dir/spec.file`` present and verified.

    - present and matching its pinned or recorded checksum: reused (nothing fetched);
    - present without any checksum: hashed and the checksum recorded (trust on first use);
    - present but corrupted: removed and fetched again (with ``offline``: MissingDataError);
    - absent: downloaded (with ``offline``: MissingDataError).
    ``force`` re-downloads from scratch; the old file stays in place until the new one is verified.
    """
    if offline and force:
        raise ValueError("--offline and --force contradict each other: --force re-downloads")
    final = data_dir / spec.file
    if not force and final.exists():
        reused = _reuse(spec, final)
        if reused is not None:
            return reused
        if offline:
            raise MissingDataError(spec.name, str(final), "fails its sha256 checksum")
        log.warning("%s: %s does not match its checksum; fetching it again", spec.name, final)
        final.unlink()
        checksums.sidecar_path(final).unlink(missing_ok=True)
    elif offline:
        raise MissingDataError(spec.name, str(final), "missing")

    part = part_path(final)
    if force:
        part.unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    download(spec.url, part, label=spec.file, retries=retries, backoff_s=backoff_s)
    digest = checksums.sha256_file(part)
    if spec.sha256 is not None and digest != spec.sha256:
        part.unlink()
        raise DownloadError(f"{spec.file}: downloaded file has sha256 {digest} but the config pins {spec.sha256} "
                            f"({spec.url}); nothing was kept. If the upstream file changed on purpose, update "
                            f"datasets.{spec.name}.sha256 in conf/data/default.yaml")
    # Sidecar first: a crash between the two steps leaves a checksum without a file (harmless, re-fetched),
    # never a file under its final name without a checksum.
    checksums.record(final, digest)
    os.replace(part, final)
    log.info("%s: placed %s (sha256 %s)", spec.name, final, digest)
    return PreparedFile(spec.name, final, final.stat().st_size, digest, DOWNLOADED)


def _reuse(spec: DatasetSpec, final: Path) -> PreparedFile | None:
    """The existing file if it checks out (recording its checksum where none was known), else None."""
    digest = checksums.sha256_file(final)
    recorded = checksums.read_recorded(final)
    expected = spec.sha256 or recorded
    size = final.stat().st_size
    if expected is None:
        status = RECORDED if _try_record(final, digest) else UNRECORDED
        log.info("%s: %s had no checksum; sha256 is %s", spec.name, final, digest)
        return PreparedFile(spec.name, final, size, digest, status)
    if digest != expected:
        return None
    if recorded != digest:
        _try_record(final, digest)
    return PreparedFile(spec.name, final, size, digest, VERIFIED)


def _try_record(final: Path, digest: str) -> bool:
    """Record the checksum of a file that is already in place; a read-only data directory (shared storage
    prepared by someone else) is fine for reading, so failing to write the sidecar is only a warning."""
    try:
        checksums.record(final, digest)
    except OSError as exc:
        log.warning("cannot record the checksum beside %s (%s); verifying it against the config only", final, exc)
        return False
    return True


def fetch_command(datasets: Iterable[str] = (), models: Iterable[str] = (), dest: Path | None = None) -> str:
    """The ``balanceroute prepare-data`` command that fetches the named presets (for error messages)."""
    parts = ["balanceroute", "prepare-data"]
    if datasets := list(datasets):
        parts += ["--datasets", ",".join(datasets)]
    if models := list(models):
        parts += ["--models", ",".join(models)]
    if dest is not None:
        parts += ["--dest", str(dest)]
    return shlex.join(parts)
