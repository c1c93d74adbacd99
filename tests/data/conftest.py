"""A real HTTP server on 127.0.0.1 serving fixture files, with Range support and injectable faults.

Faults are queued per file and consumed one per request:
  "drop"         send the headers and half the body, then close the connection
  "500"          answer HTTP 500
  "ignore_range" answer 200 with the whole file even if a Range was asked for
Paths under ``/redirect/`` answer 302 to the same file without the prefix (like the hub's CDN redirects).
"""
from __future__ import annotations

import random
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import balanceroute.cli


@dataclass(frozen=True)
class Served:
    """One request as the server saw it: ``sent`` counts body bytes actually written."""

    path: str
    range: str | None
    status: int
    sent: int
    authorization: str | None = None


class FixtureServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[Served] = []
        self._faults: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fixture = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def add(self, name: str, size: int, seed: int = 0) -> bytes:
        data = random.Random(seed).randbytes(size)
        self.files[name] = data
        return data

    def fail_next(self, name: str, *faults: str) -> None:
        with self._lock:
            self._faults.setdefault(name, []).extend(faults)

    def take_fault(self, name: str) -> str | None:
        with self._lock:
            queue = self._faults.get(name)
            return queue.pop(0) if queue else None

    def log(self, served: Served) -> None:
        """Called before the response is written, so a client never sees an answer the log lacks."""
        with self._lock:
            self.requests.append(served)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        fixture: FixtureServer = self.server.fixture
        name = self.path.lstrip("/")
        requested_range = self.headers.get("Range")

        def record(status: int, sent: int) -> None:
            fixture.log(Served(name, requested_range, status, sent, self.headers.get("Authorization")))

        if name.startswith("redirect/"):
            record(302, 0)
            self._reply(302, b"", {"Location": "/" + name.removeprefix("redirect/")})
            return
        fault = fixture.take_fault(name)
        data = fixture.files.get(name)
        if fault == "500" or data is None:
            status = 500 if fault == "500" else 404
            body = b"injected failure" if status == 500 else b"no such file"
            record(status, len(body))
            self._reply(status, body)
            return
        status, start, headers = 200, 0, {"Accept-Ranges": "bytes"}
        match = re.fullmatch(r"bytes=(\d+)-", requested_range or "")
        if match and fault != "ignore_range":
            start = int(match.group(1))
            if start >= len(data):
                record(416, 0)
                self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if fault == "drop":
            half = len(body) // 2
            record(status, half)
            self._reply(status, body[:half], headers, content_length=len(body))
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        record(status, len(body))
        self._reply(status, body, headers)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None,
               content_length: int | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    fixture = FixtureServer()
    fixture.start()
    yield fixture
    fixture.stop()


def _write_conf(root: Path, datasets: dict[str, dict], models: dict[str, str | None] | None = None,
                data_dir: Path | None = None) -> Path:
    """A conf/ tree like the project's: data/default.yaml plus model/<name>.yaml (hf_repo or none)."""
    (root / "data").mkdir(parents=True)
    lines = [f"data_dir: {data_dir or root / 'datadir'}", "datasets:"]
    for name, entry in datasets.items():
        lines.append(f"  {name}:")
        lines += [f"    {key}: {'null' if value is None else value}" for key, value in entry.items()]
    (root / "data" / "default.yaml").write_text("\n".join(lines) + "\n")
    (root / "model").mkdir()
    for name, repo in (models or {}).items():
        text = f"name: {name}\nnum_layers: 2\n" + (f"hf_repo: {repo}\n" if repo else "")
        (root / "model" / f"{name}.yaml").write_text(text)
    return root


@pytest.fixture
def make_conf():
    """``make_conf(root, datasets, models=None, data_dir=None)`` writes a conf/ tree and returns its path."""
    return _write_conf


@pytest.fixture
def cli_main(monkeypatch):
    """The real ``balanceroute`` entry point with only the prepare-data subcommand registered, so these tests
    depend neither on the other subcommands' modules (the library's or installed ones) nor on the lead having
    listed this one yet."""
    monkeypatch.setattr(balanceroute.cli, "SUBCOMMAND_MODULES", {"prepare-data": "balanceroute.data.cli"})
    monkeypatch.setattr(balanceroute.cli, "installed_commands", list)
    return balanceroute.cli.main
