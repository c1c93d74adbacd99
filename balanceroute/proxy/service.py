"""Running a :class:`~balanceroute.proxy.server.RoutingProxy` as a service: bind, serve, shut down gracefully.

Shutdown (SIGTERM or SIGINT, or ``stop`` set): the listening socket closes at once (new connections are refused),
requests in flight get up to ``grace_s`` seconds to finish, then whatever is left is cancelled (their load is
released like any disconnect) and the upstream session closes.

Optionally the per-backend load is logged over time to a tracker (:mod:`balanceroute.tracking`; W&B with
``--wandb-project``), one sample every ``interval_s``; the tracker is finished at shutdown.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable

from aiohttp import web

from balanceroute.proxy.server import RoutingProxy
from balanceroute.tracking import Tracker

log = logging.getLogger(__name__)


async def serve(proxy: RoutingProxy, *, host: str = "127.0.0.1", port: int = 9000, grace_s: float = 30.0,
                stop: asyncio.Event | None = None, on_ready: Callable[[str], None] | None = None,
                tracker: Tracker | None = None, load_interval_s: float = 1.0) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``); ``on_ready(url)`` is called once the socket listens."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(proxy.app(), handler_cancellation=True, shutdown_timeout=grace_s, access_log=None)
    await runner.setup()
    logger_task = None
    t0 = time.monotonic()  # the load series' clock
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        await web.SockSite(runner, sock, backlog=1024).start()
        url = f"http://{host}:{sock.getsockname()[1]}"
        log.info("proxy listening on %s", url)
        if on_ready is not None:
            on_ready(url)
        if tracker is not None:
            logger_task = asyncio.create_task(_log_load(proxy, tracker, load_interval_s, t0))
        await stop.wait()
        log.info("shutting down: no new connections; waiting up to %.0f s for %d requests in flight", grace_s,
                 len(proxy.tracker) + proxy.dispatcher.pending)
    finally:
        await runner.cleanup()
        if logger_task is not None:
            logger_task.cancel()
            await asyncio.gather(logger_task, return_exceptions=True)
            _sample(proxy, tracker, t0)  # the series ends with the final (released) state
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    log.info("proxy stopped")


async def _log_load(proxy: RoutingProxy, tracker: Tracker, interval_s: float, t0: float) -> None:
    """Per-backend tracked load every ``interval_s`` (the tracker copies what it logs)."""
    while True:
        _sample(proxy, tracker, t0)
        await asyncio.sleep(interval_s)


def _sample(proxy: RoutingProxy, tracker: Tracker, t0: float) -> None:
    t = proxy.tracker
    tracker.log_load(time.monotonic() - t0, t.kv_load.copy(), t.running.copy(), t.waiting.copy())
