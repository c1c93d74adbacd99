"""Long-running helper processes (Ray nodes, headless vLLM engines, ``srun`` steps) that a job starts and must
stop: each runs in its own session with its output in a log file of the run folder, and stopping it signals the
whole process group, so nothing it forked outlives the job."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL when stopping a process group (``ray start --block`` can take ~20 s to
#: wind down its children on SIGTERM; a job must not wait for that at teardown).
STOP_GRACE_S = 10.0


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if it cannot be read), for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ManagedProcess:
    """A started command: ``name`` for messages, ``log_path`` holding its stdout and stderr."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s: %s (log %s)", name, " ".join(self.argv), self.log_path)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=None if env is None else dict(env), cwd=cwd,
                                            start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def check_alive(self) -> None:
        """RuntimeError with the log's tail if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with status {code}; log {self.log_path}:\n"
                               f"{log_tail(self.log_path)}")

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; returns once the process is reaped."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.info("%s did not stop within %.0f s of SIGTERM; killing its process group", self.name, grace_s)
        # Also after a clean exit of the leader: children it left in the group (daemons) go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        log.info("stopped %s", self.name)
