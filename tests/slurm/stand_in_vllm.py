"""A stand-in for ``vllm serve`` on the multi-node path, for testing how the vllm backend spreads a deployment over
an allocation without loading a model (the real ``vllm serve`` through SLURM is tests/slurm/test_vllm_slurm.py).

It does what vLLM's front end and engines need from their surroundings, for real:

- ``--headless`` (native mode, another node): connects to ``--data-parallel-address``:``--data-parallel-rpc-port``
  and announces its ranks (``--data-parallel-start-rank``, ``--data-parallel-size-local``), then stays up;
- the front end, native mode: listens on that address and port and becomes healthy only once the remote ranks
  (``--data-parallel-size`` minus its local ones) have announced themselves;
- the front end, ``--data-parallel-backend ray``: joins the Ray cluster at ``$RAY_ADDRESS`` and becomes healthy
  only once Ray reports a node for every node's ranks;
- then serves the OpenAI API (tests/support/openai_server.py) on ``--host``:``--port`` with vLLM's per-engine
  ``vllm:request_success_total`` counter in ``/metrics``, requests spread round-robin over the engines.

Each process writes ``<$STAND_IN_RECORD>/<role>.json`` (its argv and the SLURM/Ray variables it saw).
``STAND_IN_FAIL=headless`` makes a headless process exit with an error before it announces itself (a lost node:
the front end would wait for its ranks until the time-out).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

from aiohttp import web

from tests.support.openai_server import ServerConfig, make_app

ENV_KEYS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_JOB_NODELIST", "RAY_ADDRESS", "BALANCEROUTE_DP_ROUTER")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["serve"])
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-parallel-size", type=int, default=1)
    p.add_argument("--data-parallel-size-local", type=int, default=None)
    p.add_argument("--data-parallel-start-rank", type=int, default=0)
    p.add_argument("--data-parallel-address", default=None)
    p.add_argument("--data-parallel-rpc-port", type=int, default=None)
    p.add_argument("--data-parallel-backend", default="mp")
    p.add_argument("--headless", action="store_true")
    p.add_argument("--api-server-count", type=int, default=None)
    return p.parse_known_args(argv)[0]


def record(role: str, extra: dict | None = None) -> None:
    folder = Path(os.environ["STAND_IN_RECORD"])
    folder.mkdir(parents=True, exist_ok=True)
    data = {"argv": sys.argv[1:], "pid": os.getpid(), "env": {k: os.environ.get(k) for k in ENV_KEYS},
            **(extra or {})}
    (folder / f"{role}.json").write_text(json.dumps(data))


def headless(args: argparse.Namespace) -> None:
    role = f"headless_{args.data_parallel_start_rank}"
    record(role)
    if os.environ.get("STAND_IN_FAIL") == "headless":
        print("EngineCore failed: lost the node (injected)", flush=True)
        sys.exit(1)
    deadline = time.monotonic() + 120
    while True:
        try:
            conn = socket.create_connection((args.data_parallel_address, args.data_parallel_rpc_port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    ranks = list(range(args.data_parallel_start_rank, args.data_parallel_start_rank + args.data_parallel_size_local))
    conn.sendall((json.dumps({"ranks": ranks}) + "\n").encode())
    print(f"headless engines {ranks} registered with {args.data_parallel_address}:{args.data_parallel_rpc_port}",
          flush=True)
    while True:
        time.sleep(3600)


def wait_for_remote_ranks(args: argparse.Namespace, local: int) -> list[int]:
    """Native mode: the ranks the headless nodes announced at the RPC port (all of them, or a time-out)."""
    want = args.data_parallel_size - local
    server = socket.create_server((args.data_parallel_address, args.data_parallel_rpc_port))
    server.settimeout(120)
    ranks: list[int] = []
    while len(ranks) < want:
        conn, _ = server.accept()
        ranks += json.loads(conn.makefile().readline())["ranks"]
    return sorted(ranks)


def ray_nodes() -> int:
    import ray

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")
    try:
        return sum(1 for n in ray.nodes() if n["Alive"])
    finally:
        ray.shutdown()


def front_end(args: argparse.Namespace) -> None:
    dp = args.data_parallel_size
    local = args.data_parallel_size_local or dp
    extra: dict = {}
    if local < dp and args.data_parallel_backend == "ray":
        extra["ray_nodes_alive"] = ray_nodes()
    elif local < dp:
        extra["remote_ranks"] = wait_for_remote_ranks(args, local)
    record("head", extra)
    app, handler = make_app(ServerConfig(record=False))

    async def metrics(request: web.Request) -> web.Response:
        # handler.served counts finished requests; round-robin over the engines, as a DP front end might route
        counts = [handler.served // dp + (1 if e < handler.served % dp else 0) for e in range(dp)]
        lines = [f'vllm:request_success_total{{engine="{e}",finished_reason="length",model_name="m"}} {c}.0'
                 for e, c in enumerate(counts)]
        return web.Response(text="\n".join(lines) + "\n")

    app.router.add_get("/metrics", metrics)
    print(f"front end for {dp} ranks ({local} local) on {args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


def main() -> None:
    args = parse(sys.argv[1:])
    if args.headless:
        headless(args)
    else:
        front_end(args)


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
