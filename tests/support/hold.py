"""A Hydra callback for tests that interrupt a sweep: it holds the sweep after its first job has ended.

``+hydra.callbacks.hold._target_=tests.support.hold.HoldAfterFirstJob +hydra.callbacks.hold.marker=PATH``: once the
first job's result is written, the callback creates ``marker`` and waits. A test waits for the marker (state, not
time), then sends SIGINT, which lands here, between two runs, whatever the machine's load.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

#: Longest hold: a test that never interrupts gets its sweep back rather than a hung process.
HOLD_LIMIT_S = 300.0


class HoldAfterFirstJob(Callback):
    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)
        self.held = False

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if self.held:
            return
        self.held = True
        self.marker.touch()
        deadline = time.monotonic() + HOLD_LIMIT_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
