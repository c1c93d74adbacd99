"""balanceroute.serving's managed processes on real stand-in servers (Python's http.server, with children in
its group, deaf to SIGTERM or dying on cue): start, health wait, death and time-out with the log's tail,
watched dependencies, and a stop that leaves no process of the group behind."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from balanceroute.serving import ManagedProcess, ManagedServer, ServerError, free_port

STAND_IN = "http.server.ThreadingHTTPServer"


def _http_server(tmp_path, *, children: int = 0, ignore_term: bool = False, kids_ignore_term: bool = False
                 ) -> list[str]:
    """A stand-in server serving a folder with ``health`` and ``metrics`` files; ``children`` processes in its
    group; deaf to SIGTERM itself (``ignore_term``) or only in its children (``kids_ignore_term``, as vLLM's
    engines can be while the API server exits at once). Takes PORT and FOLDER arguments."""
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    (www / "health").write_text("ok")
    (www / "metrics").write_text('requests_total{engine="0"} 3.0\n')
    kid = ("import signal, time; "
           f"signal.signal(signal.SIGTERM, signal.SIG_IGN) if {ignore_term or kids_ignore_term} else None; "
           "time.sleep(600)")
    prog = ("import signal, subprocess, sys, http.server, functools\n"
            f"if {ignore_term}: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"kids = [subprocess.Popen([sys.executable, '-c', {kid!r}]) for _ in range({children})]\n"
            "print('kids', [k.pid for k in kids], flush=True)\n"
            "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])\n"
            f"{STAND_IN}(('127.0.0.1', int(sys.argv[1])), h).serve_forever()\n")
    return [sys.executable, "-c", prog]


def _server(tmp_path, port: int | None = None, **kwargs) -> ManagedServer:
    port = port or free_port()
    flags = {k: kwargs.pop(k) for k in ("children", "ignore_term", "kids_ignore_term") if k in kwargs}
    cmd = _http_server(tmp_path, **flags) + [str(port), str(tmp_path / "www")]
    return ManagedServer("stand-in", cmd, tmp_path / "server.log", "127.0.0.1", port, **kwargs)


def _kids(path, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if line.startswith("kids"):
                return [int(p) for p in line[6:-1].split(",") if p.strip()]
        time.sleep(0.1)
    raise AssertionError(f"no kids line in {path}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_server_starts_answers_health_and_its_whole_group_stops(tmp_path):
    server = _server(tmp_path, children=2, ready_timeout_s=60)
    with server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        server.check_alive()
        assert server.metrics() == 'requests_total{engine="0"} 3.0\n'
        kids = _kids(tmp_path / "server.log")
        assert len(kids) == 2 and all(_alive(k) for k in kids)
    assert server.process.returncode is not None
    assert not any(_alive(k) for k in kids)
    with pytest.raises(ServerError, match="stand-in exited with status"):
        server.check_alive()


def test_a_group_deaf_to_sigterm_is_killed(tmp_path):
    server = _server(tmp_path, children=1, ignore_term=True, ready_timeout_s=60, stop_grace_s=1).start()
    kids = _kids(tmp_path / "server.log")
    server.stop()
    assert server.process.returncode == -9 and not any(_alive(k) for k in kids)


def test_children_that_outlive_their_leader_are_stopped_too(tmp_path):
    """The leader exits on SIGTERM at once, its children do not: stop must not return with them running (as
    vLLM's API server leaves engine processes behind)."""
    server = _server(tmp_path, children=2, kids_ignore_term=True, ready_timeout_s=60, stop_grace_s=1).start()
    kids = _kids(tmp_path / "server.log")
    server.stop()
    assert server.process.returncode == -15  # the leader went on SIGTERM
    assert not any(_alive(k) for k in kids)


def test_children_left_by_a_leader_that_already_exited_are_stopped(tmp_path):
    prog = ("import subprocess, sys\n"
            "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print('kids', [kid.pid], flush=True)\n")
    proc = ManagedProcess("parent", [sys.executable, "-c", prog], tmp_path / "parent.log")
    assert proc.wait(60) == 0
    (kid,) = _kids(tmp_path / "parent.log")
    assert _alive(kid)
    with pytest.raises(ServerError, match=r"parent exited with status 0; end of .*parent.log:\nkids"):
        proc.check_alive()
    proc.stop()
    assert not _alive(kid)


def test_a_server_that_dies_fails_with_its_log_tail(tmp_path):
    prog = "import sys; print('loading'); print('out of memory', file=sys.stderr); sys.exit(3)"
    server = ManagedServer("stand-in", [sys.executable, "-c", prog], tmp_path / "server.log", "127.0.0.1",
                           free_port(), ready_timeout_s=60)
    with pytest.raises(ServerError) as err:
        server.start()
    message = str(err.value)
    assert message.startswith("stand-in exited with status 3 before it was ready")
    assert "loading\nout of memory" in message and str(tmp_path / "server.log") in message


def test_a_server_never_healthy_times_out_and_is_stopped(tmp_path):
    cmd = [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(600)"]
    server = ManagedServer("stand-in", cmd, tmp_path / "server.log", "127.0.0.1", free_port(), ready_timeout_s=2,
                           timeout_hint="raise its time-out")
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"not healthy at .*/health after 2 s \(raise its time-out\);.*\n"
                                          r"still loading"):
        server.start()
    assert server.process.returncode is not None and time.monotonic() - started < 60


def test_a_dead_dependency_ends_the_wait_with_its_log(tmp_path):
    """A watched helper (a Ray worker, a headless engine) that dies fails the start-up at once, with its log,
    although the server itself would become healthy only much later."""
    helper = ManagedProcess("helper node", [sys.executable, "-c", "print('worker lost'); raise SystemExit(7)"],
                            tmp_path / "helper.log")
    cmd = [sys.executable, "-c", "import time; time.sleep(600)"]
    server = ManagedServer("stand-in", cmd, tmp_path / "server.log", "127.0.0.1", free_port(), ready_timeout_s=300,
                           watch=[helper.check_alive])
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"helper node exited with status 7; .*\nworker lost"):
        server.start()
    assert time.monotonic() - started < 60 and server.process.returncode is not None
    helper.stop()


def test_a_command_that_cannot_start_says_so(tmp_path):
    with pytest.raises(ServerError, match=r"cannot start stand-in \(/nowhere/server\)"):
        ManagedServer("stand-in", ["/nowhere/server"], tmp_path / "s.log", "127.0.0.1", free_port()).start()


def test_stand_in_processes_are_gone():
    """No stand-in server of this module survives it (each test stops its process group)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    assert STAND_IN not in out
