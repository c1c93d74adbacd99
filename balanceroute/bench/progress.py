"""What a running benchmark tells the person watching it: requests done, failed, the rate, and whether it stalled.

With a terminal, a tqdm bar whose postfix counts failures; without one (a SLURM log, run.log), a log line every
``log_every_s`` seconds. A run in which requests are outstanding but none has finished for ``stall_timeout_s``
is stalled: the watchdog ends it, so a dead server costs minutes of silence at most, not the per-request timeout.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)

#: Seconds between progress lines when there is no progress bar.
LOG_EVERY_S = 10.0


class Progress:
    """Counts of one run, updated as requests finish; the bar or the log lines, and the stall watchdog."""

    def __init__(self, total: int, *, bar: bool, log_every_s: float = LOG_EVERY_S) -> None:
        self.total = total
        self.sent = self.done = self.failed = 0
        self.stalled = False
        self.start = self.last_finish = time.perf_counter()
        self.log_every_s = log_every_s
        self._bar = tqdm(total=total, unit="req", file=sys.stderr, disable=not bar, dynamic_ncols=True)
        self._logging = not bar
        self._next_log = self.start + log_every_s

    def started(self) -> None:
        self.sent += 1

    def finished(self, status: str) -> None:
        now = time.perf_counter()
        self.done += 1
        self.failed += status == "failed"
        self.last_finish = now
        self._bar.update(1)
        if self.failed:
            self._bar.set_postfix(failed=self.failed, refresh=False)
        if self._logging and now >= self._next_log:
            self._next_log = now + self.log_every_s
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        rate = self.done / (now - self.start) if now > self.start else 0.0
        return f"progress: {self.done}/{self.total} finished, {self.failed} failed, {rate:.2f} requests/s"

    async def watch(self, stall_timeout_s: float, stop: asyncio.Event) -> None:
        """Set ``stop`` (and ``stalled``) when requests are outstanding and none finished for ``stall_timeout_s``."""
        while not stop.is_set():
            await asyncio.sleep(min(1.0, stall_timeout_s / 4))
            now = time.perf_counter()
            if self.sent > self.done and now - self.last_finish > stall_timeout_s:
                log.error("stalled: %d requests outstanding and none finished for %.0f s; ending the run (%s)",
                          self.sent - self.done, now - self.last_finish, self.line(now))
                self.stalled = True
                stop.set()

    def close(self) -> None:
        self._bar.close()
