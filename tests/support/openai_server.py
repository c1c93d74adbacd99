"""An OpenAI-compatible test server with known timing and injectable faults, for testing HTTP clients.

Serves ``POST /v1/completions`` and ``POST /v1/chat/completions`` (streaming and not), ``GET /v1/models``,
``GET /health`` and ``GET /stats`` on 127.0.0.1, either in-process (:func:`serve`, an async context manager) or
as a subprocess (``python -m tests.support.openai_server --port 0 ...``, which prints ``listening on URL``).

Timing is known so that a client's TTFT/TPOT can be asserted: the first chunk is written ``ttft_s`` after the
request was read and each later chunk ``tpot_s`` per token after the previous one, scheduled on absolute
deadlines so that delays do not accumulate. A request generates ``max_tokens`` tokens (chat:
``max_completion_tokens`` or ``max_tokens``; default 16), or ``eos_after`` tokens when that is smaller and the
request does not set ``ignore_eos`` (how a real model stops early). Usage is reported like vLLM: with
``stream_options.include_usage`` a last chunk with empty ``choices``; with ``continuous_usage_stats`` a usage
object in every chunk. ``tokens_per_chunk`` > 1 bundles tokens the way a server behind on streaming does.

Faults: a prompt (chat: any message) containing ``FAULT=<kind>`` makes that request fail:

- ``http_<code>``: answers with that HTTP status and an OpenAI-style error body;
- ``timeout``: never answers (the handler sleeps ``hang_s``);
- ``malformed``: one valid chunk, then a data line that is not JSON (non-streaming: a body that is not JSON);
- ``bad_choice``: like ``malformed`` with valid JSON of the wrong shape (``{"choices": ["oops"]}``);
- ``disconnect``: two chunks, then the connection is closed before the stream ends;
- ``error_event``: one chunk, then a ``data: {"error": ...}`` event, as vLLM sends for a failed generation.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

FAULT_RE = re.compile(r"FAULT=([a-z_0-9]+)")
DEFAULT_MAX_TOKENS = 16


@dataclass
class ServerConfig:
    """Behaviour of the test server (see the module docstring)."""

    ttft_s: float = 0.0
    tpot_s: float = 0.0
    tokens_per_chunk: int = 1
    usage: bool = True
    eos_after: int | None = None
    hang_s: float = 3600.0
    headers: dict[str, str] = field(default_factory=dict)
    record: bool = True


def _prompt_text(body: dict) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def _num_tokens(body: dict, config: ServerConfig) -> tuple[int, str]:
    """Tokens to generate and the finish reason: 'length' at max_tokens, 'stop' at an early end of sequence."""
    n = int(body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS)
    if config.eos_after is not None and not body.get("ignore_eos") and config.eos_after < n:
        return config.eos_after, "stop"
    return n, "length"


class _Handler:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.bodies: list[dict] = []
        self.request_ids: list[str | None] = []
        self.served = 0

    async def generate(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        body = await request.json()
        if self.config.record:
            self.bodies.append(body)
            self.request_ids.append(request.headers.get("X-Request-Id"))
        self.served += 1
        chat = request.path.endswith("/chat/completions")
        prompt = _prompt_text(body)
        fault = FAULT_RE.search(prompt)
        fault = fault.group(1) if fault else None
        if fault and fault.startswith("http_"):
            status = int(fault[5:])
            return web.json_response({"error": {"message": f"injected {fault}", "code": status}}, status=status,
                                     headers=self.config.headers)
        if fault == "timeout":
            await asyncio.sleep(self.config.hang_s)
        n, finish_reason = _num_tokens(body, self.config)
        prompt_tokens = len(prompt.split())
        stream_options = body.get("stream_options") or {}
        usage_final = self.config.usage and stream_options.get("include_usage")
        usage_each = usage_final and stream_options.get("continuous_usage_stats")
        kind = "chat.completion" if chat else "text_completion"

        def usage(done: int) -> dict:
            return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}

        def choice(text: str, finish: str | None) -> dict:
            if chat:
                return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish}

        if not body.get("stream"):
            if fault in ("malformed", "bad_choice"):
                return web.Response(text='{"choices": ["oops"]}' if fault == "bad_choice" else "{not json",
                                    content_type="application/json")
            await _sleep_until(start + self.config.ttft_s + (n - 1) * self.config.tpot_s)
            text = "".join(f" t{i}" for i in range(n))
            msg = {"index": 0, "finish_reason": finish_reason}
            msg.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            out = {"id": "cmpl-test", "object": kind, "model": body.get("model"), "choices": [msg]}
            if self.config.usage:
                out["usage"] = usage(n)
            return web.json_response(out, headers=self.config.headers)

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **self.config.headers})
        await resp.prepare(request)

        async def send(obj: dict | str) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        def chunk(choices: list, done: int | None) -> dict:
            out = {"id": "cmpl-test", "object": f"{kind}.chunk", "model": body.get("model"), "choices": choices}
            if usage_each and done is not None:
                out["usage"] = usage(done)
            return out

        if chat:  # OpenAI and vLLM open a chat stream with a role-only delta that carries no token
            await send(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                             0))
        done = chunks = 0
        per = max(1, self.config.tokens_per_chunk)
        while done < n:
            k = min(per, n - done)
            await _sleep_until(start + self.config.ttft_s + (done + k - 1) * self.config.tpot_s)
            done += k
            chunks += 1
            text = "".join(f" t{i}" for i in range(done - k, done))
            await send(chunk([choice(text, finish_reason if done == n else None)], done))
            if fault in ("malformed", "bad_choice"):
                await resp.write(b'data: {"choices": ["oops"]}\n\n' if fault == "bad_choice"
                                 else b"data: {this is not json\n\n")
                return resp
            if fault == "error_event":
                await send({"error": {"message": "injected error event", "code": 500}})
                return resp
            if fault == "disconnect" and chunks == 2:
                request.transport.close()
                return resp
        if usage_final:
            await send(chunk([], None) | {"usage": usage(n)})
        await send("[DONE]")
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "test-model", "object": "model"}]})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"served": self.served})


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def make_app(config: ServerConfig) -> tuple[web.Application, _Handler]:
    handler = _Handler(config)
    app = web.Application()
    app.router.add_post("/v1/completions", handler.generate)
    app.router.add_post("/v1/chat/completions", handler.generate)
    app.router.add_get("/v1/models", handler.models)
    app.router.add_get("/health", handler.health)
    app.router.add_get("/stats", handler.stats)
    return app, handler


@dataclass
class RunningServer:
    """A started server: ``url`` is its base (``http://127.0.0.1:PORT``); ``bodies`` the JSON bodies received."""

    url: str
    handler: _Handler

    @property
    def bodies(self) -> list[dict]:
        return self.handler.bodies


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@contextlib.asynccontextmanager
async def serve(config: ServerConfig | None = None, port: int = 0) -> AsyncIterator[RunningServer]:
    """Run the server in the current event loop for the duration of the ``async with`` block."""
    app, handler = make_app(config or ServerConfig())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    sock = _bind(port)
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield RunningServer(f"http://127.0.0.1:{sock.getsockname()[1]}", handler)
    finally:
        await runner.cleanup()


async def _main(args: argparse.Namespace) -> None:
    config = ServerConfig(ttft_s=args.ttft, tpot_s=args.tpot, tokens_per_chunk=args.tokens_per_chunk,
                          record=False)
    async with serve(config, args.port) as server:
        print(f"listening on {server.url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server with known timing")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds to the first chunk")
    parser.add_argument("--tpot", type=float, default=0.0, help="seconds per later token")
    parser.add_argument("--tokens-per-chunk", type=int, default=1)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))
