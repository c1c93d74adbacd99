"""A process a run starts and must stop: its own process group, its output in a log file, nothing left behind.

Servers (``vllm serve``, ``balanceroute emulate``, ``balanceroute proxy``) and their helpers (Ray nodes, headless
vLLM engines, ``srun`` steps) fork children of their own. Each is therefore started in a new session, so it leads
a process group holding everything it forks, and stopping signals that whole group: SIGTERM, a grace period while
any member is left, then SIGKILL to the rest. Waiting for the group rather than for the leader matters: vLLM's
API server can exit on SIGTERM while its engine processes are still shutting down (or wedged), and a stop that
returned then would leave them holding memory and ports for the next run.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL when stopping a process group, unless the caller says otherwise.
STOP_GRACE_S = 10.0
#: Seconds to wait for a group's members to vanish after SIGKILL (the kernel reaps them; this is only latency).
_KILL_WAIT_S = 5.0


class ServerError(RuntimeError):
    """A managed server or one of its helper processes could not be started, died, or never became ready; the
    message ends with the tail of the process's log."""


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('(no log)' if it cannot be read), for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (another process may take it before the server binds it; rare on
    one machine, and the server's start then fails with the log saying so)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    """Whether any process (a zombie included) is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its user; it is still there
        return True
    return True


def _wait_group_gone(process: subprocess.Popen, timeout_s: float) -> bool:
    """Poll until the leader is reaped and no member of its group is left; whether that happened in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        process.poll()  # reaps the leader, which would otherwise stay in the group as a zombie
        if process.returncode is not None and not _group_alive(process.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def stop_group(process: subprocess.Popen, name: str, grace_s: float = STOP_GRACE_S) -> None:
    """Stop ``process`` (started with ``start_new_session``) and every process of its group: SIGTERM, up to
    ``grace_s`` for the whole group to exit, then SIGKILL to what is left. Also when the leader has already
    exited: members it left behind are still signalled. Returns once the leader is reaped and the group empty
    (or, for a member that survives SIGKILL in an uninterruptible sleep, after a short wait, with a warning)."""
    pgid = process.pid  # start_new_session: the process leads its own group
    if process.poll() is None or _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        if not _wait_group_gone(process, grace_s):
            log.warning("%s: process group %d still running %.0f s after SIGTERM; killing it", name, pgid, grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            if not _wait_group_gone(process, _KILL_WAIT_S):
                log.warning("%s: process group %d not gone %.0f s after SIGKILL", name, pgid, _KILL_WAIT_S)
    process.wait()
    log.info("stopped %s (exit status %s)", name, process.returncode)


class ManagedProcess:
    """A command started at construction in its own process group, stdout and stderr appended to ``log_path``.

    ``env`` is the process's whole environment (None: this process's); ``name`` appears in messages.
    :class:`ServerError` if it cannot be started.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, stop_grace_s: float = STOP_GRACE_S) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.stop_grace_s = stop_grace_s
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s (log %s): %s", name, self.log_path, " ".join(self.argv))
        with open(self.log_path, "ab") as out:
            try:
                self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=None if env is None else dict(env),
                                                cwd=cwd, start_new_session=True)
            except OSError as exc:
                raise ServerError(f"cannot start {name} ({self.argv[0]}): {exc}") from exc

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal), else None."""
        return self.process.poll()

    def wait(self, timeout_s: float | None = None) -> int:
        """The exit status, once the process exits (subprocess.TimeoutExpired after ``timeout_s``)."""
        return self.process.wait(timeout_s)

    def check_alive(self) -> None:
        """:class:`ServerError` with the log's tail if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise ServerError(f"{self.name} exited with status {code}; end of {self.log_path}:\n"
                              f"{log_tail(self.log_path)}")

    def stop(self) -> None:
        """Stop the process and its whole group (:func:`stop_group`)."""
        stop_group(self.process, self.name, self.stop_grace_s)
