"""Fixtures for the proxy tests: OpenAI test backends (tests/support/openai_server.py, real HTTP on 127.0.0.1)
and a routing proxy, all started in the test's event loop; backends that a test kills run as subprocesses."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from balanceroute.proxy import ProxyConfig, RoutingProxy, serve
from tests.support.openai_server import RunningServer, ServerConfig, make_app
from tests.support.openai_server import serve as serve_backend

ROOT = Path(__file__).resolve().parents[2]  # the subprocess backends run from the repository root

#: Health checks in tests run every 50 ms, so that take-out and readmission happen within a test's second.
FAST_HEALTH = {"health_interval_s": 0.05, "health_timeout_s": 0.5, "connect_timeout_s": 1.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def _serve_with(config: ServerConfig, middleware):
    """The test backend with an aiohttp middleware in front of its handlers (to record or fake something)."""
    app, handler = make_app(config)
    app.middlewares.append(middleware)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", handler)
    finally:
        await runner.cleanup()


@pytest.fixture
async def backend_factory():
    """``await backend_factory(middleware=None, **ServerConfig fields)``: a test backend that lives until the
    test ends (``middleware``: an aiohttp middleware in front of its handlers)."""
    started = []

    async def start(port: int = 0, middleware=None, **config):
        cm = serve_backend(ServerConfig(**config), port) if middleware is None else \
            _serve_with(ServerConfig(**config), middleware)
        started.append(cm)
        return await cm.__aenter__()

    yield start
    for cm in reversed(started):
        await cm.__aexit__(None, None, None)


class RunningProxy:
    """A proxy served in the test's loop: ``url``, ``proxy`` (its state: tracker, upstreams, telemetry)."""

    def __init__(self, proxy: RoutingProxy) -> None:
        self.proxy = proxy
        self.url = ""
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    @property
    def tracker(self):
        return self.proxy.tracker

    async def start(self) -> RunningProxy:
        ready = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(serve(self.proxy, port=0, grace_s=1.0, stop=self.stop,
                                              on_ready=ready.set_result))
        done, _ = await asyncio.wait({ready, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
        self.url = ready.result()
        return self

    async def close(self) -> None:
        self.stop.set()
        await self.task


@pytest.fixture
async def proxy_factory():
    """``await proxy_factory(targets, router=..., **ProxyConfig fields)``: a started proxy (fast health checks)."""
    started: list[RunningProxy] = []

    async def start(targets, tokenizer=None, **config):
        config = {**FAST_HEALTH, **config}
        running = RunningProxy(RoutingProxy(ProxyConfig(targets=tuple(targets), **config), tokenizer=tokenizer))
        started.append(running)
        return await running.start()

    yield start
    for running in reversed(started):
        await running.close()


class BackendProcess:
    """A test backend in its own process on a fixed port, so a test can kill it (SIGKILL) and start it again."""

    def __init__(self, port: int, *, tpot_s: float) -> None:
        self.port = port
        self.tpot_s = tpot_s
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackendProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.openai_server", "--port", str(self.port),
                                      "--tpot", str(self.tpot_s)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.kill()
            raise RuntimeError(f"test backend did not start: {line!r}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()


@pytest.fixture
def backend_process():
    """``backend_process(port, tpot_s=...)``: a started :class:`BackendProcess`, killed at the end of the test."""
    started: list[BackendProcess] = []

    def start(port: int, *, tpot_s: float = 0.0) -> BackendProcess:
        proc = BackendProcess(port, tpot_s=tpot_s).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
