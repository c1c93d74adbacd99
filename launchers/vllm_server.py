"""A managed ``vllm serve``: its command from the Hydra config, started, health-checked and stopped cleanly.

:func:`serve_command` turns the ``model.vllm`` section (what to serve and how: max-model-len, memory, dtype, ...),
the ``parallel`` group (DP, TP, EP) and the ``backend`` section (host, port, API servers, extra arguments) into
a ``vllm serve`` command line. :class:`VllmServer` runs it in its own process group (vLLM starts engine, worker
and API-server processes; they must all go when the run ends), writes its output to a log file in the run
folder, waits for ``/health`` and, if the server dies or never becomes healthy, raises
:class:`VllmServerError` with the end of that log. Stopping sends SIGTERM to the whole group, then SIGKILL to
whatever is left after a grace period.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Keys of ``model.vllm`` that are not ``vllm serve --<key>`` options.
NOT_OPTIONS = ("model", "served_model_name", "tokenizer", "args", "env")


class VllmServerError(RuntimeError):
    """The server died, never became healthy, or could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now (another process may take it before vLLM binds it; rare on one machine)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def option_args(options: Mapping[str, Any]) -> list[str]:
    """``{"max_model_len": 1024, "enforce_eager": True, "dtype": None}`` -> ``--max-model-len 1024
    --enforce-eager``: None and False leave an option out, True is a bare flag."""
    args: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def serve_command(vllm_bin: str | os.PathLike, model: Mapping[str, Any], *, dp: int, tp: int, ep: bool,
                  host: str, port: int, api_server_count: int | None = None,
                  extra_args: Sequence[str] = ()) -> list[str]:
    """The ``vllm serve`` command for a ``model.vllm`` section and the parallel layout.

    ``model["model"]`` is what vLLM loads (a Hugging Face name or a folder); ``served_model_name`` the name
    requests use (default: the same); every key not in :data:`NOT_OPTIONS` becomes ``--key value``; then
    ``model["args"]`` and ``extra_args`` verbatim (later ones win where vLLM takes the last value).
    """
    cmd = [str(vllm_bin), "serve", str(model["model"]), "--host", host, "--port", str(port),
           "--data-parallel-size", str(dp), "--tensor-parallel-size", str(tp)]
    if ep:
        cmd.append("--enable-expert-parallel")
    if model.get("served_model_name"):
        cmd += ["--served-model-name", str(model["served_model_name"])]
    if api_server_count is not None:
        cmd += ["--api-server-count", str(api_server_count)]
    cmd += option_args({k: v for k, v in model.items() if k not in NOT_OPTIONS})
    return cmd + [str(a) for a in model.get("args") or ()] + [str(a) for a in extra_args]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class VllmServer:
    """``vllm serve`` for the duration of a ``with`` block (or :meth:`start` / :meth:`stop`).

    ``env`` is added to this process's environment for the server (CPU settings, the router's variables);
    ``cwd`` is its working directory (the run folder; a source checkout there would shadow installed metadata).
    """

    command: list[str]
    log_path: Path
    host: str
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    ready_timeout_s: float = 900.0
    stop_timeout_s: float = 60.0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> VllmServer:
        """Start the server and wait until it answers ``/health``; VllmServerError (with the log's tail) if it
        exits first or is not healthy within ``ready_timeout_s``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        log.info("starting vllm serve (log: %s): %s", self.log_path, " ".join(self.command))
        started = time.monotonic()
        with open(self.log_path, "ab") as out:
            try:
                self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                                cwd=self.cwd, start_new_session=True, stdin=subprocess.DEVNULL)
            except OSError as exc:
                raise VllmServerError(f"cannot start {self.command[0]}: {exc}") from exc
        try:
            self._wait_healthy(started)
        except BaseException:
            self.stop()
            raise
        log.info("vllm serve healthy at %s after %.0f s", self.url, time.monotonic() - started)
        return self

    def _wait_healthy(self, started: float) -> None:
        deadline = started + self.ready_timeout_s
        while not _healthy(self.url):
            code = self.process.poll()
            if code is not None:
                raise VllmServerError(f"vllm serve exited with status {code} before it was ready "
                                      f"({time.monotonic() - started:.0f} s); end of {self.log_path}:\n"
                                      f"{log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise VllmServerError(f"vllm serve not healthy at {self.url} after {self.ready_timeout_s:.0f} s "
                                      f"(raise backend.ready_timeout_s if it is just slow); end of "
                                      f"{self.log_path}:\n{log_tail(self.log_path)}")
            time.sleep(1.0)

    def check_alive(self) -> None:
        """VllmServerError (with the log's tail) if the server has exited."""
        code = None if self.process is None else self.process.poll()
        if self.process is None or code is not None:
            raise VllmServerError(f"vllm serve is not running (exit status {code}); end of {self.log_path}:\n"
                                  f"{log_tail(self.log_path)}")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after ``stop_timeout_s``."""
        proc = self.process
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the server leads its own group
        if not _group_alive(pgid):
            proc.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.2)
        if _group_alive(pgid):
            log.warning("vllm serve did not stop within %.0f s of SIGTERM; killing its process group",
                        self.stop_timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        proc.wait()
        log.info("vllm serve stopped (exit status %s)", proc.returncode)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as resp:
            return resp.read().decode()


#: vLLM's per-engine Prometheus counters the results report, as (result key suffix, metric name).
ENGINE_COUNTERS = (("requests", "vllm:request_success_total"), ("prompt_tokens", "vllm:prompt_tokens_total"),
                   ("generation_tokens", "vllm:generation_tokens_total"))
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def engine_counter(metrics_text: str, name: str, num_engines: int, where: Mapping[str, str] | None = None
                   ) -> list[float]:
    """The per-engine values of counter ``name`` from Prometheus text exposition, summed over its other labels
    (such as ``finished_reason``) or only over samples whose labels match ``where``; missing engines count 0."""
    totals = [0.0] * num_engines
    prefix = name + "{"
    for line in metrics_text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, _, value = line[len(prefix):].rpartition("} ")
        found = dict(_LABEL.findall(labels))
        engine = found.get("engine")
        if where and any(found.get(k) != v for k, v in where.items()):
            continue
        if engine is not None and engine.isdigit() and int(engine) < num_engines:
            totals[int(engine)] += float(value.split()[0])
    return totals
