"""Proxy overhead: the latency ``balanceroute proxy`` adds and the streamed request rate it sustains, beside
``vllm-router`` (the Rust router on PyPI) in round-robin mode, in front of the same upstream fleet.

Upstream: the emulated vLLM fleet (``balanceroute emulate --no-barrier``; its ranks' own endpoints, a fast time
scale so a request takes a few ms) or, with ``--upstream testserver``, G processes of the instant OpenAI test
server (tests/support/openai_server.py). Every configuration goes to the same upstream processes:

- ``direct``: the client sends to the ranks itself, in turn (the baseline);
- ``balanceroute``: ``balanceroute proxy --router round_robin`` (and ``--router`` given here);
- ``vllm-router``: ``vllm-router --policy round_robin`` (skipped if it is not installed).

Latency: ``--latency-requests`` sequential streamed requests per configuration, interleaved (request i goes to
every configuration before request i+1), so background load hits all alike; added latency = p50/p99 of
(through the proxy) minus the same percentile direct, for TTFT and for the whole request (E2E).
Throughput: closed loop with ``--concurrency`` clients for ``--seconds``; completed streamed requests per second
(the best of the concurrency levels). On a 2-core machine the client, the proxy and the upstream share the
cores, so the absolute rates are the machine's; the ratio between proxies is the figure to read.

``--compare-stacks`` also measures two minimal pass-through proxies (no routing), aiohttp.web and
FastAPI + uvicorn, the measurement behind the proxy's choice of server stack (needs fastapi and uvicorn).

    python benchmarks/bench_proxy_overhead.py [--backends 4] [--latency-requests 400] [--seconds 5]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from balanceroute.backends.emulated import COMMAND as EMULATE
from balanceroute.backends.emulated import free_port_block
from balanceroute.backends.proxy import COMMAND as PROXY
from balanceroute.serving import ManagedServer, free_port

#: Minimal pass-through proxies for --compare-stacks: round robin, body forwarded, stream copied chunk by chunk.
AIOHTTP_STACK = """
import itertools, sys, aiohttp
from aiohttp import web
targets = sys.argv[2].split(","); rr = itertools.cycle(range(len(targets)))
async def ctx(app):
    app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)); yield; await app["s"].close()
async def generate(request):
    body = await request.read()
    async with request.app["s"].post(targets[next(rr)] + request.path, data=body,
                                     headers={"Content-Type": "application/json"}) as up:
        resp = web.StreamResponse(headers={"Content-Type": up.headers.get("Content-Type", "text/event-stream")})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp
async def health(request): return web.Response(text="ok")
app = web.Application(); app.cleanup_ctx.append(ctx)
app.router.add_post("/v1/completions", generate); app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""
FASTAPI_STACK = """
import itertools, sys, aiohttp, uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse, PlainTextResponse
targets = sys.argv[2].split(","); rr = itertools.cycle(range(len(targets))); state = {}
app = FastAPI()
@app.on_event("startup")
async def startup(): state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
@app.post("/v1/completions")
async def generate(request: Request):
    body = await request.body()
    up = await state["s"].post(targets[next(rr)] + "/v1/completions", data=body,
                               headers={"Content-Type": "application/json"})
    async def stream():
        try:
            async for chunk in up.content.iter_any():
                yield chunk
        finally:
            up.release()
    return StreamingResponse(stream(), media_type=up.headers.get("Content-Type", "text/event-stream"))
@app.get("/health")
async def health(): return PlainTextResponse("ok")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def start_upstream(kind: str, g: int, logs: Path) -> tuple[list[ManagedServer], list[str]]:
    if kind == "emulator":
        port = free_port_block("127.0.0.1", g + 1)  # the front end, then rank i on port + 1 + i
        server = ManagedServer("emulator", [*EMULATE, "--ranks", str(g), "--model", "tiny",
                                            "--port", str(port), "--no-barrier", "--time-scale", "0.01"],
                               logs / "emulator.log", "127.0.0.1", port, cwd=ROOT, ready_timeout_s=60).start()
        return [server], [f"http://127.0.0.1:{port + 1 + i}" for i in range(g)]
    servers = []
    for i in range(g):
        port = free_port()
        servers.append(ManagedServer(f"test server {i}", [sys.executable, "-m", "tests.support.openai_server",
                                                          "--port", str(port)], logs / f"upstream{i}.log",
                                     "127.0.0.1", port, cwd=ROOT, ready_timeout_s=30).start())
    return servers, [s.url for s in servers]


def start_proxy(kind: str, targets: list[str], logs: Path, router: str = "round_robin") -> ManagedServer:
    port = free_port()
    if kind == "balanceroute":
        cmd = [*PROXY, "--targets", ",".join(targets), "--router", router,
               "--port", str(port)]
    elif kind == "vllm-router":
        cmd = ["vllm-router", "--worker-urls", *targets, "--policy", "round_robin", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--max-concurrent-requests", "32768",
               "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
    else:
        code = AIOHTTP_STACK if kind == "aiohttp.web" else FASTAPI_STACK
        cmd = [sys.executable, "-c", code, str(port), ",".join(targets)]
    return ManagedServer(kind, cmd, logs / f"{kind}.log", "127.0.0.1", port, cwd=ROOT, ready_timeout_s=60).start()


def body(model: str, tokens: int) -> bytes:
    return (b'{"model": "%s", "prompt": "the quick brown fox jumps over the lazy dog", "max_tokens": %d, '
            b'"stream": true, "ignore_eos": true}' % (model.encode(), tokens))


async def one(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[float, float]:
    """(TTFT, E2E) seconds of one streamed request; raises on an error status."""
    start = time.perf_counter()
    first = None
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.text())[:200]}")
        async for _ in resp.content.iter_any():
            if first is None:
                first = time.perf_counter()
    return first - start, time.perf_counter() - start


async def latency(configs: dict[str, list[str]], n: int, data: bytes) -> dict[str, np.ndarray]:
    """Per configuration, an (n, 2) array of (TTFT, E2E); ``configs`` maps a name to the URLs it cycles."""
    out = {name: np.zeros((n, 2)) for name in configs}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for name, urls in configs.items():  # warm up connections and code paths
            for i in range(20):
                await one(session, urls[i % len(urls)], data)
        for i in range(n):
            for name, urls in configs.items():
                out[name][i] = await one(session, urls[i % len(urls)], data)
    return out


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process and its reaped children so far (0 for None)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def throughput(urls: list[str], concurrency: int, seconds: float, data: bytes) -> tuple[float, int]:
    """Completed streamed requests per second with ``concurrency`` closed-loop clients, and how many requests
    were sent in all (warm-up pass included: what the proxy's CPU time is divided by)."""
    done = 0
    stop = time.perf_counter() + min(1.0, seconds)  # the warm-up pass

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            await one(session, urls[i % len(urls)], data)
            done += 1
            i += concurrency
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(k, session) for k in range(concurrency)))  # warm-up pass
        warm = done
        done = 0
        start = time.perf_counter()
        stop = start + seconds
        await asyncio.gather(*(client(k, session) for k in range(concurrency)))
        return done / (time.perf_counter() - start), warm + done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", choices=("emulator", "testserver"), default="emulator")
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16, help="output tokens per request (default 16)")
    parser.add_argument("--latency-requests", type=int, default=400)
    parser.add_argument("--concurrency", default="32,128", help="closed-loop clients, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    parser.add_argument("--router", default="jsq_load", help="a second balanceroute policy to measure")
    parser.add_argument("--compare-stacks", action="store_true", help="also measure minimal aiohttp.web and "
                                                                     "FastAPI+uvicorn pass-through proxies")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench_proxy_"))
    started: list[ManagedServer] = []
    try:
        upstream, targets = start_upstream(args.upstream, args.backends, logs)
        started += upstream
        model = "tiny" if args.upstream == "emulator" else "test-model"
        data = body(model, args.tokens)
        configs = {"direct": [t + "/v1/completions" for t in targets]}
        pids: dict[str, int] = {}
        kinds = ["balanceroute"] + (["vllm-router"] if shutil.which("vllm-router") else [])
        if args.compare_stacks:
            kinds += ["aiohttp.web", "fastapi+uvicorn"]
        for kind in kinds:
            server = start_proxy(kind, targets, logs)
            started.append(server)
            configs[kind] = [server.url + "/v1/completions"]
            pids[kind] = server.process.pid
        if args.router != "round_robin":
            server = start_proxy("balanceroute", targets, logs, router=args.router)
            started.append(server)
            configs[f"balanceroute {args.router}"] = [server.url + "/v1/completions"]
            pids[f"balanceroute {args.router}"] = server.process.pid
        if "vllm-router" not in kinds:
            print("vllm-router is not installed (pip install vllm-router): its rows are missing")
        print(f"upstream: {args.upstream} x{args.backends}, {args.tokens} output tokens per request; logs in {logs}")
        lat = asyncio.run(latency(configs, args.latency_requests, data))
        base = lat["direct"]
        print(f"\nlatency over {args.latency_requests} sequential streamed requests (ms)")
        print(f"{'configuration':<26}{'TTFT p50':>10}{'TTFT p99':>10}{'E2E p50':>10}{'E2E p99':>10}"
              f"{'+E2E p50':>10}{'+E2E p99':>10}{'+TTFT p50':>11}")
        for name, values in lat.items():
            p = np.percentile(values, [50, 99], axis=0) * 1000
            b = np.percentile(base, [50, 99], axis=0) * 1000
            print(f"{name:<26}{p[0, 0]:>10.3f}{p[1, 0]:>10.3f}{p[0, 1]:>10.3f}{p[1, 1]:>10.3f}"
                  f"{p[0, 1] - b[0, 1]:>10.3f}{p[1, 1] - b[1, 1]:>10.3f}{p[0, 0] - b[0, 0]:>11.3f}")
        levels = [int(c) for c in args.concurrency.split(",")]
        print(f"\nstreamed requests/s, closed loop, {args.seconds:g} s per level; proxy CPU ms per request "
              f"(its process's user+system time / requests) and the rate one core of it would serve")
        print(f"{'configuration':<26}" + "".join(f"{'c=' + str(c):>10}" for c in levels)
              + f"{'best':>10}{'CPU ms/req':>12}{'req/s/core':>12}")
        best, per_core = {}, {}
        for name, urls in configs.items():
            cpu0 = cpu_seconds(pids.get(name))
            rates, counts = zip(*(asyncio.run(throughput(urls, c, args.seconds, data)) for c in levels))
            cpu = (cpu_seconds(pids.get(name)) - cpu0) / sum(counts) * 1000 if name in pids else float("nan")
            best[name] = max(rates)
            per_core[name] = 1000 / cpu if name in pids else float("nan")
            print(f"{name:<26}" + "".join(f"{r:>10.0f}" for r in rates) + f"{best[name]:>10.0f}{cpu:>12.3f}"
                  f"{per_core[name]:>12.0f}")
        if "vllm-router" in best:
            print(f"\nbalanceroute / vllm-router: measured req/s {best['balanceroute'] / best['vllm-router']:.0%}, "
                  f"req/s per core of proxy CPU {per_core['balanceroute'] / per_core['vllm-router']:.0%} "
                  f"(goal >= 50%); direct (no proxy) {best['direct']:.0f} req/s bounds what any proxy can show here")
        b50 = np.percentile(lat["balanceroute"][:, 1], 50) - np.percentile(base[:, 1], 50)
        print(f"balanceroute added E2E p50: {b50 * 1000:.3f} ms (goal <= 1 ms)")
    finally:
        for server in reversed(started):
            server.stop()


if __name__ == "__main__":
    main()
