"""Resumable HTTP(S) download of one URL into a partial file.

Why a partial file: the data files are large (ShareGPT is ~650 MiB) and cluster networks drop connections, so
a transfer must survive an interruption without starting over and must never leave a half file under the name
that experiments read. :func:`download` only ever writes ``<name>.part``; the caller verifies it and moves it
into place. Resumption uses an HTTP ``Range`` request from the partial file's size; a server that ignores the
range (``200`` instead of ``206``) is handled by restarting the file from byte 0.

Plain ``urllib`` is enough here (one sequential stream per file) and follows redirects while keeping the
``Range`` header, which the Hugging Face hub's CDN redirects need.
"""
from __future__ import annotations

import http.client
import logging
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from balanceroute import __version__
from balanceroute.data.errors import DownloadError

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_USER_AGENT = f"balanceroute/{__version__} (prepare-data)"


class _Retryable(Exception):
    """A failure that another attempt (resuming from the partial file) may get past."""

    def __init__(self, message: str, written: int):
        super().__init__(message)
        self.message = message
        self.written = written  # bytes this attempt added to the partial file before failing


def download(url: str, part: Path, *, label: str = "", retries: int = 3, backoff_s: float = 1.0,
             timeout_s: float = 60.0) -> int:
    """Fetch ``url`` into ``part``, resuming from the bytes already in ``part``; return the bytes transferred.

    Connection failures, truncated bodies and 5xx/429 answers are retried up to ``retries`` times (waiting
    ``backoff_s * attempt`` seconds), each attempt resuming where the last stopped. Other HTTP errors fail at
    once. On failure :class:`DownloadError` is raised and ``part`` keeps what arrived, so a later call resumes.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    label = label or part.name
    transferred = 0
    attempt = 0
    while True:
        try:
            return transferred + _attempt(url, part, label, timeout_s)
        except _Retryable as exc:
            transferred += exc.written
            attempt += 1
            kept = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise DownloadError(
                    f"{label}: {exc.message} from {url} (gave up after {attempt} attempt(s); "
                    f"{kept} bytes kept in {part}, run the command again to resume)") from exc
            log.warning("%s: %s; retry %d/%d resumes at byte %d", label, exc.message, attempt, retries, kept)
            time.sleep(backoff_s * attempt)


def _attempt(url: str, part: Path, label: str, timeout_s: float) -> int:
    """One request. Returns the bytes written; raises _Retryable or DownloadError."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # The partial file is not a prefix the server can continue (e.g. the remote file shrank).
            log.warning("%s: server cannot resume at byte %d (HTTP 416); starting over", label, offset)
            part.unlink()
            return _attempt(url, part, label, timeout_s)
        message = f"HTTP {exc.code} {exc.reason}"
        if exc.code >= 500 or exc.code == 429:
            raise _Retryable(message, 0) from exc
        raise DownloadError(f"{label}: {message} from {url}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _Retryable(f"cannot connect ({getattr(exc, 'reason', exc)})", 0) from exc

    with response:
        offset, total = _start_position(response, offset, label)
        mode = "ab" if offset else "wb"
        if offset:
            log.info("%s: resuming at byte %d of %s", label, offset, total if total is not None else "?")
        else:
            log.info("%s: downloading %s (%s bytes)", label, url, total if total is not None else "unknown")
        written = 0
        with open(part, mode) as out, tqdm(total=total, initial=offset, desc=label, unit="B", unit_scale=True,
                                           unit_divisor=1024, file=sys.stderr, disable=None, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:  # only network errors: disk errors propagate
                    raise _Retryable(f"connection lost after {offset + written} bytes ({exc!r})", written) from exc
                if not chunk:
                    break
                out.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    size = offset + written
    if total is not None and size != total:
        raise _Retryable(f"body ended at byte {size} of {total}", written)
    return written


def _start_position(response: http.client.HTTPResponse, offset: int, label: str) -> tuple[int, int | None]:
    """Where the body starts in the file and the file's full size (None if the server does not say).

    A ``200`` to a range request means the server sent the whole file, so writing restarts at byte 0.
    """
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            raise DownloadError(f"{label}: asked for bytes from {offset} but the server answered "
                                f"Content-Range {response.headers.get('Content-Range')!r}")
        return offset, None if match.group(3) == "*" else int(match.group(3))
    if offset:
        log.warning("%s: server ignored the range request (HTTP %d); restarting from byte 0", label,
                    response.status)
    return 0, int(length) if length is not None else None
