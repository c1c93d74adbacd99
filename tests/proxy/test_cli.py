"""``balanceroute proxy`` as a process (``python -m balanceroute.cli proxy``): argument errors, graceful shutdown on
SIGTERM, and per-backend load logged to W&B (offline mode)."""
from __future__ import annotations

import asyncio
import json
import signal
import sys

import aiohttp
import pytest

from tests.proxy.client import completion_body, post
from tests.proxy.conftest import ROOT
from tests.support.waiting import wait_for


async def start_cli(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "balanceroute.cli", "proxy", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise AssertionError(f"proxy did not start: {line!r} {(await proc.stderr.read()).decode()[-2000:]}")
    return proc, line.removeprefix("listening on ")


@pytest.mark.parametrize("args, message", [
    (["--targets", "127.0.0.1:8001"], "target '127.0.0.1:8001' is not a backend base URL"),
    (["--targets", "http://127.0.0.1:8001", "--router", "nope"], "unknown routing policy 'nope'; valid policies:"),
    (["--targets", "http://127.0.0.1:8001", "--router", "br_h", "--router-param", "H=-1"], "br_h: parameter H"),
    (["--targets", "http://127.0.0.1:8001", "--dispatch", "pool"], "pool dispatch needs the slots per backend"),
    (["--targets", "http://127.0.0.1:8001", "--router-param", "oops"], "must look like KEY=VALUE"),
])
def test_bad_arguments_exit_2_with_one_clear_message(args, message, capsys):
    from balanceroute.cli import main
    try:
        code = main(["proxy", *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


async def sigterm_while_streaming(backend_factory, session, *, tpot_s: float, tokens: int, grace_s: float):
    """A proxy process over one backend, one stream of ``tokens`` through it, SIGTERM once the backend serves it."""
    backend = await backend_factory(tpot_s=tpot_s)
    proc, url = await start_cli("--targets", backend.url, "--port", "0", "--grace", str(grace_s))
    in_flight = asyncio.create_task(post(session, url, completion_body("long", tokens)))
    await wait_for(lambda: len(backend.bodies) == 1, what="the stream to reach the backend")
    proc.send_signal(signal.SIGTERM)
    return proc, url, in_flight


async def test_sigterm_stops_accepting_and_lets_the_stream_in_flight_finish(backend_factory):
    async with aiohttp.ClientSession() as session:
        proc, url, in_flight = await sigterm_while_streaming(backend_factory, session, tpot_s=0.05, tokens=60,
                                                             grace_s=30)  # the stream takes ~3 s

        async def refused() -> bool:  # a late request is not served: refused, or cut while the server closes
            try:
                await post(session, url, completion_body("late", 2))
            except aiohttp.ClientError:
                return True
            return False

        await wait_for(refused, what="the proxy to stop accepting")
        reply = await in_flight
    assert reply.completed and len(reply.events) == 60
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_requests_still_running_after_the_grace_period_are_cut(backend_factory):
    async with aiohttp.ClientSession() as session:
        proc, _, in_flight = await sigterm_while_streaming(backend_factory, session, tpot_s=0.05, tokens=100,
                                                           grace_s=0.3)  # the stream would take ~5 s
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        with pytest.raises(aiohttp.ClientError):
            await in_flight


@pytest.mark.slow
async def test_wandb_offline_run_holds_the_per_backend_load_series(backend_factory, tmp_path):
    pytest.importorskip("wandb", reason="W&B load logging needs the wandb package")
    from analysis.wandb_runs import read_records
    backends = [await backend_factory(tpot_s=0.01) for _ in range(2)]
    proc, url = await start_cli("--targets", ",".join(b.url for b in backends), "--port", "0",
                                "--wandb-project", "proxy-test", "--wandb-mode", "offline",
                                "--wandb-dir", str(tmp_path), "--wandb-interval", "0.05")
    async with aiohttp.ClientSession() as session:
        replies = await asyncio.gather(*(post(session, url, completion_body("p " * 20, 30)) for _ in range(8)))
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert all(r.completed for r in replies)
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in read_records(path) if r.WhichOneof("record_type") == "history"]
    load = [row for row in history if "load/time_s" in row]
    assert len(load) >= 3
    assert max(row["load/kv_load/worker_0"] + row["load/kv_load/worker_1"] for row in load) > 0
    assert load[-1]["load/kv_load/worker_0"] == load[-1]["load/kv_load/worker_1"] == 0  # released by the end
