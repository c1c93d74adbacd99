"""SHA-256 sidecar files: ``<name>.sha256`` beside each data file, in ``sha256sum`` format.

The sidecar lets a later run (or a user with ``sha256sum -c``) tell a good copy from a damaged one without
contacting the server, and records a trust-on-first-use checksum where the configuration pins none.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def is_sha256(value: str) -> bool:
    """True if ``value`` is a lowercase 64-digit hex digest."""
    return bool(_HEX64.match(value))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks so multi-GB files do not load into memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_recorded(path: Path) -> str | None:
    """The digest recorded beside ``path``, or None if there is no usable sidecar.

    A malformed sidecar is treated as absent (and logged) rather than as a mismatch: the file is then re-hashed
    and the sidecar rewritten, which is the right outcome either way.
    """
    side = sidecar_path(path)
    try:
        text = side.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("ignoring unreadable checksum file %s: %s", side, exc)
        return None
    fields = text.split()
    if not fields or not is_sha256(fields[0].lower()):
        log.warning("ignoring malformed checksum file %s", side)
        return None
    return fields[0].lower()


def record(path: Path, digest: str) -> Path:
    """Write ``<path>.sha256`` atomically (temp file + os.replace) and return its path."""
    side = sidecar_path(path)
    fd, tmp = tempfile.mkstemp(dir=side.parent, prefix=side.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{digest}  {path.name}\n")
        os.replace(tmp, side)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return side
