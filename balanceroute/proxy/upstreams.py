"""The proxy's backends: their URLs, which of them are live, and the health checks that decide it.

``live`` is one boolean numpy array shared with the router (:class:`.dispatch.LiveRouter`), so taking a backend
out is one assignment and the next decision already avoids it. A backend is taken out when its ``GET /health``
fails (an error, a timeout or a status other than 200) or when a request cannot connect to it, and readmitted
by the first health check that succeeds again.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import aiohttp
import numpy as np
from yarl import URL

log = logging.getLogger(__name__)


def check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    """Base URLs without a trailing slash; ValueError naming a target that is not an http(s) base URL."""
    if not targets:
        raise ValueError("no targets; give at least one backend base URL, e.g. http://127.0.0.1:8001")
    out = []
    for target in targets:
        url = URL(target.strip())
        if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/") or url.query_string:
            raise ValueError(f"target {target!r} is not a backend base URL; valid: http(s)://HOST:PORT "
                             "without a path, e.g. http://127.0.0.1:8001")
        out.append(str(url.with_path("")).rstrip("/"))
    if len(set(out)) != len(out):
        raise ValueError(f"targets repeat a backend: {', '.join(out)}")
    return tuple(out)


class Upstreams:
    """Backend base URLs and their liveness (``live[g]``); :meth:`mark` logs and reports every change."""

    def __init__(self, urls: Sequence[str], on_change: Callable[[], None] = lambda: None) -> None:
        self.urls = tuple(urls)
        self.live = np.ones(len(self.urls), dtype=bool)
        self.on_change = on_change

    def __len__(self) -> int:
        return len(self.urls)

    def mark(self, index: int, healthy: bool, reason: str = "") -> None:
        if bool(self.live[index]) == healthy:
            return
        self.live[index] = healthy
        if healthy:
            log.info("backend %d (%s) is healthy again; readmitted", index, self.urls[index])
        else:
            log.warning("backend %d (%s) taken out: %s", index, self.urls[index], reason or "unhealthy")
        self.on_change()


class HealthMonitor:
    """Checks every backend's ``/health`` every ``interval_s`` seconds (all backends concurrently)."""

    def __init__(self, upstreams: Upstreams, session: aiohttp.ClientSession, *, interval_s: float,
                 timeout_s: float) -> None:
        self.upstreams = upstreams
        self.session = session
        self.interval_s = interval_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(i) for i in range(len(self.upstreams))))

    async def run(self) -> None:
        """Check forever (cancel to stop)."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check_all()

    async def _check(self, index: int) -> None:
        url = self.upstreams.urls[index] + "/health"
        try:
            async with self.session.get(url, timeout=self.timeout) as resp:
                await resp.read()
                healthy, reason = resp.status == 200, f"GET /health answered {resp.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            healthy, reason = False, f"GET /health failed ({type(exc).__name__}: {exc})"
        self.upstreams.mark(index, healthy, reason)
