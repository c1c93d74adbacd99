"""W&B runs -> the same DataFrame as :func:`analysis.collect.collect_runs`, from the W&B server or from offline runs.

A run logged with ``logger=wandb`` holds result.json in two halves (balanceroute.tracking.wandb_sink): the W&B
config is result.json's ``config`` and the summary is everything else. Putting the halves back together gives
result.json again, which :func:`analysis.collect.result_row` turns into the usual row, so tables and plots do not
care where a run came from.

    python -m analysis.compare outputs/multirun/rate_sweep            # local folders
    collect_wandb("my-team/balanceroute", filters={"group": "rate_sweep"})   # the W&B server (wandb.Api)
    collect_offline("outputs/multirun/rate_sweep")                     # offline runs, never synced

Offline runs are read from their ``.wandb`` files: a LevelDB-style log (a 7-byte file header, then 32 KiB blocks of
checksummed, possibly fragmented records), each record a ``wandb.proto`` ``Record`` message. The reader replays
the run's config and summary updates as W&B's server does when the run is synced.
"""
from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.collect import result_row, runs_frame

#: File header: ident, magic, version (the only versions written so far are 0 and 1).
_FILE_HEADER = struct.Struct("<4sHB")
_IDENT, _MAGIC = b":W&B", 0xBEE1
#: Record header: CRC-32 of (type byte + payload), payload length, type.
_RECORD_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass(frozen=True)
class WandbRun:
    """What analysis needs of a W&B run, whether it came from the server or an offline file."""

    id: str
    name: str
    group: str
    location: str  # "wandb:<entity>/<project>/<run id>" (what wandb.Api().run() takes), or its offline folder
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    job_type: str = ""


def result_of(run: WandbRun) -> dict[str, Any]:
    """result.json as the run mirrored it: its summary without W&B's own keys (``_step``, ...), the logged series
    (``load/...``, ``charts/...``) and media (tables), plus ``config``."""
    summary = {k: v for k, v in run.summary.items()
               if not k.startswith("_") and "/" not in k and not (isinstance(v, dict) and "_type" in v)}
    return {**summary, "config": {k: v for k, v in run.config.items() if not k.startswith("_")}}


def wandb_frame(runs: Iterable[WandbRun]) -> pd.DataFrame:
    """The runs frame (collect_runs' schema; ``run_dir`` is the run's address) of W&B runs that hold a result:
    runs without a ``config_hash`` in their summary (failed or unrelated runs) are left out."""
    rows = [result_row(result_of(run), run.location) for run in runs if "config_hash" in run.summary]
    if not rows:
        raise ValueError("none of the W&B runs holds a balanceroute result (no config_hash in their summaries)")
    return runs_frame(rows)


# ---- the W&B server -------------------------------------------------------------------------------------------------
def from_api_run(run: Any) -> WandbRun:
    """A :class:`WandbRun` of a ``wandb.apis.public.Run`` (loaded with ``lazy=False``)."""
    return WandbRun(id=run.id, name=run.name or "", group=run.group or "", location="wandb:" + "/".join(run.path),
                    config=dict(run.config), summary=dict(run.summary_metrics), tags=tuple(run.tags or ()),
                    job_type=run.job_type or "")


def collect_wandb(path: str, *, filters: Mapping[str, Any] | None = None, api: Any = None) -> pd.DataFrame:
    """The runs frame of the runs of W&B project ``path`` ("entity/project"), optionally filtered
    (``{"group": "rate_sweep"}``, ``{"config.parallel.dp": 8}``; W&B's MongoDB-style filters). Reads through
    ``wandb.Api`` (credentials from ``WANDB_API_KEY`` or ``wandb login``), or ``api`` if given."""
    if api is None:
        import wandb

        api = wandb.Api()
    return wandb_frame(from_api_run(run) for run in api.runs(path, filters=dict(filters or {}), lazy=False))


# ---- offline runs ----------------------------------------------------------------------------------------------------
def collect_offline(root: str | Path) -> pd.DataFrame:
    """The runs frame of every offline W&B run under ``root`` (``**/offline-run-*/run-*.wandb``)."""
    files = sorted(Path(root).rglob("offline-run-*/run-*.wandb"))
    if not files:
        raise ValueError(f"no offline W&B run under {root}; runs logged with logger=wandb logger.mode=offline keep "
                         "them in <run folder>/wandb/offline-run-*/")
    return wandb_frame(read_offline_run(f) for f in files)


def read_offline_run(path: str | Path) -> WandbRun:
    """The run stored in an offline ``.wandb`` file: its identity, final config and final summary."""
    path = Path(path)
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    identity: dict[str, Any] = {}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            identity = {"id": run.run_id, "name": run.display_name, "group": run.run_group,
                        "tags": tuple(run.tags), "job_type": run.job_type}
            _apply(config, run.config.update, run.config.remove)
        elif kind == "config":
            _apply(config, record.config.update, record.config.remove)
        elif kind == "summary":
            _apply(summary, record.summary.update, record.summary.remove)
    if not identity:
        raise ValueError(f"{path}: no run record; not a W&B run file, or one cut short before the run started")
    return WandbRun(location=str(path.parent), config=config, summary=summary, **identity)


def _apply(target: dict[str, Any], updates: Iterable[Any], removes: Iterable[Any]) -> None:
    """Replay config/summary items: ``key`` names a top-level entry, ``nested_key`` a path into nested dicts."""
    for item in updates:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)
    for item in removes:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            node = node.get(key, {})
        node.pop(keys[-1], None)


def read_records(path: str | Path) -> Iterator[Any]:
    """The ``wandb.proto`` ``Record`` messages of an offline ``.wandb`` file, in order (run, config, history,
    summary, artifact, ... records; ``record.WhichOneof("record_type")`` says which)."""
    from wandb.proto import wandb_internal_pb2

    for payload in _payloads(Path(path)):
        yield wandb_internal_pb2.Record.FromString(payload)


def _payloads(path: Path) -> Iterator[bytes]:
    """The payloads of the records of a .wandb log file, reassembled from their fragments, checksums verified."""
    data = path.read_bytes()
    if len(data) < _FILE_HEADER.size:
        raise ValueError(f"{path}: too short to be a W&B run file")
    ident, magic, _version = _FILE_HEADER.unpack_from(data)
    if ident != _IDENT or magic != _MAGIC:
        raise ValueError(f"{path}: not a W&B run file (header {ident!r}, magic {magic:#x})")
    pos, pending = _FILE_HEADER.size, bytearray()
    while pos + _RECORD_HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER.size:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        crc, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        start = pos + _RECORD_HEADER.size
        payload = data[start:start + length]
        if kind == 0 or len(payload) < length:  # preallocated zeros or a record cut short: the end of the log
            return
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos} (checksum mismatch)")
        pos = start + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = bytearray(payload)
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield bytes(pending + payload)
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")
