"""Helpers for the emulator tests (imported as ``fleet_helpers``): the fleet as a subprocess, SSE parsing, metrics."""
from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from balanceroute.backends.emulated import COMMAND


@contextlib.contextmanager
def fleet_process(ranks: int, *args: str, log: Path, timeout_s: float = 60) -> Iterator[dict]:
    """``balanceroute emulate --ranks RANKS --port 0 ARGS`` running; yields {"front": URL, "ranks": [URL, ...],
    "process": Popen}. Stops it with SIGTERM at the end and checks that it exits cleanly."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([*COMMAND, "--ranks", str(ranks), "--port", "0", *args], stdout=subprocess.PIPE,
                                bufsize=0, stderr=err, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        urls = _read_urls(proc, ranks, timeout_s, log)
        yield {**urls, "process": proc}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _read_urls(proc: subprocess.Popen, ranks: int, timeout_s: float, log: Path) -> dict:
    """The URLs the fleet prints (``front URL``, then ``rank G URL`` per rank); stdout is unbuffered, so select
    sees every line."""
    urls: dict = {"front": None, "ranks": []}
    deadline = time.monotonic() + timeout_s
    while len(urls["ranks"]) < ranks and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        words = proc.stdout.readline().decode().split()
        if not words:
            break
        if words[0] == "front":
            urls["front"] = words[1]
        elif words[0] == "rank":
            urls["ranks"].append(words[2])
    if urls["front"] is None or len(urls["ranks"]) < ranks:
        raise RuntimeError(f"the fleet did not print its URLs; log:\n{log.read_text()}")
    return urls


def sse_events(body: bytes) -> list:
    """The ``data:`` payloads of an SSE body, JSON-decoded except the final ``[DONE]``; asserts the framing."""
    text = body.decode()
    assert text.endswith("\n\n"), text[-50:]
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


_SAMPLE = re.compile(r'^([\w:]+)\{([^}]*)\} (\S+)$')


def metric_values(text: str, name: str) -> dict[int, float]:
    """``{engine: value}`` of one metric from Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out[int(labels["engine"])] = float(m.group(3))
    return out
