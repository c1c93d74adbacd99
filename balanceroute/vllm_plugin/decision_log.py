"""The decision log: one JSON line per routing decision and per released request, for analysis and Gantt plots.

Every API-server process appends to the same file. Each line is written with a single ``write`` on a file opened
with ``O_APPEND``, so lines of different processes never interleave and nothing is buffered in a process that
may be killed. Two kinds of lines (all carry ``event``, ``time`` (Unix seconds), ``pid``, ``client`` (vLLM's
API-server index), ``request_id`` (vLLM's internal id) and ``engine``):

- ``route``: also ``external_id`` (the id the OpenAI server gave the request, e.g. ``cmpl-<X-Request-Id>-0``),
  ``policy``, ``how`` (``policy``; ``explicit`` for a request naming its ``data_parallel_rank``;
  ``late_interaction`` for vLLM's pooling affinity), ``prompt_len`` and the snapshot the decision saw:
  ``epoch``, ``kv_load``, ``running``, ``waiting``, ``inflight``, ``kv_usage`` (one value per engine).
- ``release``: ``prompt_len``, ``output_len`` (tokens the engine reported) and ``reason`` (vLLM's finish reason:
  ``stop``, ``length``, ``abort``, ``error``, ...; ``abort`` also when the engine dropped it unannounced).

:func:`read_decision_log` and :func:`engine_totals` read it back (without pandas: this module also runs inside
vLLM's environment).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from balanceroute.policies.base import ClusterSnapshot

ROUTE, RELEASE = "route", "release"


class DecisionLog:
    """Appends the events of one front-end client (``client``) of this process to ``path``."""

    def __init__(self, path: str | os.PathLike, *, client: int, policy: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._head = {"pid": os.getpid(), "client": client}
        self.policy = policy

    def _write(self, record: Mapping[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())

    def route(self, request_id: str, external_id: str | None, engine: int, how: str, prompt_len: int,
              snap: ClusterSnapshot) -> None:
        self._write({"event": ROUTE, "time": time.time(), **self._head, "request_id": request_id,
                     "external_id": external_id, "engine": engine, "policy": self.policy, "how": how,
                     "prompt_len": prompt_len, "epoch": snap.epoch, "kv_load": snap.kv_load.tolist(),
                     "running": snap.running.tolist(), "waiting": snap.waiting.tolist(),
                     "inflight": snap.inflight.tolist(), "kv_usage": snap.kv_usage.tolist()})

    def release(self, request_id: str, engine: int, prompt_len: int, output_len: int, reason: str) -> None:
        self._write({"event": RELEASE, "time": time.time(), **self._head, "request_id": request_id,
                     "engine": engine, "prompt_len": prompt_len, "output_len": output_len, "reason": reason})

    def close(self) -> None:
        os.close(self._fd)


def read_decision_log(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The events of a decision log in file order; a final line cut off by a killed process is skipped."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                yield json.loads(line)


def engine_totals(events: Iterable[dict[str, Any]], num_engines: int) -> dict[str, list[int]]:
    """Per-engine sums over a decision log, under the result keys of :func:`balanceroute.metrics.summarize`:
    ``worker_requests`` and ``worker_prompt_tokens`` over the requests routed there, ``worker_output_tokens``
    over the tokens generated there by requests released (finished or aborted)."""
    routed = np.zeros(num_engines, dtype=np.int64)
    prompt = np.zeros(num_engines, dtype=np.int64)
    output = np.zeros(num_engines, dtype=np.int64)
    for ev in events:
        g = ev["engine"]
        if ev["event"] == ROUTE:
            routed[g] += 1
            prompt[g] += ev["prompt_len"]
        elif ev["event"] == RELEASE:
            output[g] += ev["output_len"]
    return {"worker_requests": routed.tolist(), "worker_prompt_tokens": prompt.tolist(),
            "worker_output_tokens": output.tolist()}
