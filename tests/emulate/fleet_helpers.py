"""Helpers for the emulator tests (imported as ``fleet_helpers``): SSE parsing, metrics (the fleet as a subprocess:
tests/support/parity.py)."""
from __future__ import annotations

import json
import re


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
