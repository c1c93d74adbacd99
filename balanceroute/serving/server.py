"""A managed HTTP server: a :class:`~balanceroute.serving.process.ManagedProcess` that is ready once a health URL
answers 200, for the duration of a ``with`` block.

Nothing here knows what the server is (``vllm serve``, ``balanceroute emulate``, ``balanceroute proxy``, a test's
stand-in): the caller gives the command, the port it listens on and where its log goes. What every caller needs
is the same: fail fast with the log's tail when the server dies while loading (instead of waiting out the
time-out), fail with the log's tail when it is not ready in time, and never leave a process of it behind.
"""
from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from balanceroute.serving.process import STOP_GRACE_S, ManagedProcess, ServerError, log_tail

log = logging.getLogger(__name__)

#: Seconds between health probes while a server starts.
POLL_S = 0.5


def _answers(url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class ManagedServer:
    """``command`` serving HTTP on ``host:port``: :meth:`start` launches it and waits for ``health_path``,
    :meth:`stop` ends its process group; ``with server:`` does both.

    ``env`` is the server's whole environment (None: this process's); ``cwd`` its working directory.
    ``watch`` are checks of what the server depends on (helper processes on other nodes, say): each raises
    :class:`ServerError` when its part has died, and they run at every health probe and in :meth:`check_alive`,
    so a dead dependency ends a start-up or a run with its own log instead of a time-out. ``timeout_hint`` is
    added to the not-ready message (which setting raises the time-out).
    """

    def __init__(self, name: str, command: Sequence[str], log_path: Path, host: str, port: int, *,
                 health_path: str = "/health", env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 ready_timeout_s: float = 300.0, stop_grace_s: float = STOP_GRACE_S,
                 watch: Sequence[Callable[[], None]] = (), timeout_hint: str = "") -> None:
        self.name = name
        self.command = [str(a) for a in command]
        self.log_path = Path(log_path)
        self.host = host
        self.port = int(port)
        self.health_path = health_path
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.watch = list(watch)
        self.timeout_hint = timeout_hint
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The base URL clients use (a server bound to all interfaces is reached on the loopback address)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ManagedServer:
        """Start the server and wait until ``health_path`` answers 200; :class:`ServerError` (with the log's tail)
        if it exits first, a watched dependency dies, or it is not ready within ``ready_timeout_s``. On any
        failure the server is stopped before the error propagates."""
        started = time.monotonic()
        self.process = ManagedProcess(self.name, self.command, self.log_path, env=self.env, cwd=self.cwd,
                                      stop_grace_s=self.stop_grace_s)
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        log.info("%s ready at %s after %.0f s", self.name, self.url, time.monotonic() - started)
        return self

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.ready_timeout_s
        health = self.url + self.health_path
        while not _answers(health):
            code = self.process.returncode
            if code is not None:
                raise ServerError(f"{self.name} exited with status {code} before it was ready "
                                  f"({time.monotonic() - started:.0f} s); end of {self.log_path}:\n"
                                  f"{log_tail(self.log_path)}")
            for check in self.watch:
                check()
            if time.monotonic() > deadline:
                hint = f" ({self.timeout_hint})" if self.timeout_hint else ""
                raise ServerError(f"{self.name} not healthy at {health} after {self.ready_timeout_s:.0f} s{hint}; "
                                  f"end of {self.log_path}:\n{log_tail(self.log_path)}")
            time.sleep(POLL_S)

    def check_alive(self) -> None:
        """:class:`ServerError` (with the log's tail) if the server, or a watched dependency, is not running."""
        if self.process is None:
            raise ServerError(f"{self.name} was not started")
        self.process.check_alive()
        for check in self.watch:
            check()

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after ``stop_grace_s``; a no-op if it
        was never started."""
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fetch(self, path: str, timeout_s: float = 30.0) -> str:
        """The text body of ``GET path`` on the server."""
        with urllib.request.urlopen(self.url + path, timeout=timeout_s) as resp:
            return resp.read().decode()

    def metrics(self, path: str = "/metrics") -> str:
        """The Prometheus text exposition of ``path``."""
        return self.fetch(path)
