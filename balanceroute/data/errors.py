"""Failures a user can cause or fix while preparing data, kept apart from bugs.

The CLI turns these into one clear message and a non-zero exit code; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations


class DataError(RuntimeError):
    """Base class: preparing a dataset or model failed for a reason the message explains."""


class DownloadError(DataError):
    """A fetch failed (HTTP error, connection lost after all retries, checksum or size mismatch).

    Nothing is left under the final name; a resumable partial file (``<name>.part``) may be kept.
    """


class MissingDataError(DataError):
    """A file or model needed offline is absent or fails its checksum.

    ``what`` is the preset name (dataset or model), ``where`` the path or repository that was looked for.
    """

    def __init__(self, what: str, where: str, reason: str):
        super().__init__(f"{where} ({what}): {reason}")
        self.what = what
        self.where = where
        self.reason = reason
