"""The files a run leaves behind, written atomically: result.json, requests.parquet, timeline.parquet.

Every backend's run folder holds the same files (DESIGN.md): ``result.json`` (the summary, vLLM
``bench serve --save-result`` keys plus ours), ``requests.parquet`` (per-request records) and, where the backend has
one, ``timeline.parquet``. Each file is written to a temporary file in the same folder and moved into place with
``os.replace``, so a reader never sees half a file; ``result.json`` is written last, so its presence means the run
completed and a resumed sweep may skip the folder.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

RESULT_FILE = "result.json"
#: Permissions of written files: what a plain open() would give under the process umask (mkstemp uses 0600).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
REQUESTS_FILE = "requests.parquet"
TIMELINE_FILE = "timeline.parquet"


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: numpy scalars and arrays as Python numbers and lists, NaN and infinities as
    None (JSON has neither), mappings and sequences converted recursively."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)`` for a temporary file beside ``path``, then move it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run_files(run_dir: str | os.PathLike, summary: Mapping[str, Any], requests: pd.DataFrame | None = None,
                    timeline: pd.DataFrame | None = None) -> Path:
    """Write a run's files into ``run_dir`` (created if needed); ``result.json`` last. Returns the folder.

    ``summary`` must be JSON-serialisable after :func:`jsonable` (numbers, strings, booleans, None, nested
    mappings and sequences, numpy scalars); a value that is not raises ValueError naming its key.
    """
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(jsonable(summary), indent=2, allow_nan=False)
    except TypeError as exc:
        bad = [k for k, v in summary.items() if not _serialisable(v)]
        raise ValueError(f"run summary is not JSON-serialisable ({exc}); offending key(s): {bad}") from None
    for frame, name in ((requests, REQUESTS_FILE), (timeline, TIMELINE_FILE)):
        if frame is not None:
            atomic_write(folder / name, lambda tmp, frame=frame: frame.to_parquet(tmp, index=False))
    atomic_write(folder / RESULT_FILE, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return folder


def _serialisable(value: Any) -> bool:
    try:
        json.dumps(jsonable(value))
    except TypeError:
        return False
    return True


def set_aside(path: Path) -> Path:
    """Rename a damaged result file out of the way (``result.json.corrupt``, then ``.corrupt.1``, ...) so that the
    run is redone and the damaged file kept for inspection; returns its new path."""
    target = path.with_name(f"{path.name}.corrupt")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt.{n}")
    path.rename(target)
    return target


def read_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The summary in ``run_dir/result.json``, or None when there is none (a run not completed; not a folder).

    Raises ValueError naming the file if it exists but is not a JSON object.
    """
    path = Path(run_dir) / RESULT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # no result yet, or run_dir is not a folder
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
