"""HTTP side of the emulated fleet: one aiohttp application per port, all on one event loop and one engine.

Port P is the DP front end (requests routed inside by the engine's router, like vLLM's internal DP load
balancer); port P+1+g is rank g's own endpoint (vLLM's external-LB DP mode, where a proxy routes among ranks).
Every port serves:

- ``POST /v1/completions``, ``POST /v1/chat/completions``: streamed (SSE, ``data: [DONE]`` last) or not; the
  response header ``X-Balanceroute-Worker`` names the rank that served it; ``X-Request-Id`` is echoed (and used
  in the response id).
- ``GET /v1/models``, ``GET /health``.
- ``GET /metrics``: Prometheus text with vLLM's names, labelled ``engine`` and ``model_name``: gauges
  ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (a fraction, as
  vLLM reports it) and counters ``vllm:request_success_total`` (also labelled ``finished_reason="length"``),
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``. The front end lists every rank, a rank's port
  only itself.
- ``GET /stats``: the engine's JSON statistics (steps, step lateness; :meth:`LiveEngine.stats`).

A client that disconnects cancels its request in the engine (aiohttp's handler cancellation is on).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

import orjson
from aiohttp import web

from balanceroute.emulate.engine import LiveEngine, RequestRejected, TokenStream
from balanceroute.emulate.protocol import DONE, ApiError, CompletionRequest, ResponseWriter, parse_request
from balanceroute.policies.checks import int_problem
from balanceroute.protocol.headers import REQUEST_ID_HEADER, WORKER_HEADER
from balanceroute.protocol.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

_JSON = "application/json"


@dataclass(frozen=True)
class FleetUrls:
    """Base URLs of the front end and of each rank."""

    front: str
    ranks: tuple[str, ...]


class _Port:
    """The handlers of one port: the front end (``worker`` None) or rank ``worker``."""

    def __init__(self, fleet: EmulatedFleet, worker: int | None) -> None:
        self.fleet = fleet
        self.engine = fleet.engine
        self.worker = worker
        self.ranks = range(fleet.engine.num_workers) if worker is None else (worker,)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/stats", self.stats)
        return app

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        fleet = self.fleet
        request_id = request.headers.get(REQUEST_ID_HEADER) or f"{next(fleet.ids):x}"
        headers = {REQUEST_ID_HEADER: request_id}
        try:
            parsed = parse_request(await request.read(), chat=chat, served_model=fleet.served_model_name,
                                   max_model_len=fleet.max_model_len, tokenizer=fleet.tokenizer)
            stream = self.engine.submit(parsed.prompt_len, parsed.max_tokens, worker=self.worker,
                                        prompt_hash=parsed.prompt_hash)
        except RequestRejected as exc:
            return _error(ApiError(400, str(exc)), headers)
        except ApiError as exc:
            return _error(exc, headers)
        headers[WORKER_HEADER] = str(stream.worker)
        writer = ResponseWriter(parsed, request_id, fleet.served_model_name)
        try:
            if parsed.stream:
                return await self._stream(request, parsed, stream, writer, headers)
            while not stream.finished:
                await stream.wait()
            return web.Response(body=writer.whole(stream.tokens), content_type=_JSON, headers=headers)
        finally:
            self.engine.cancel(stream)  # no-op once finished; frees the request if the client went away

    async def _stream(self, request: web.Request, parsed: CompletionRequest, stream: TokenStream,
                      writer: ResponseWriter, headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if parsed.chat:
            await resp.write(writer.role_chunk())
        sent = 0
        while True:
            await stream.wait()
            tokens, finished = stream.tokens, stream.finished
            if tokens > sent:
                await resp.write(writer.chunk(sent, tokens, finished))
                sent = tokens
            if finished:
                break
        if parsed.include_usage:
            await resp.write(writer.usage_chunk(sent))
        await resp.write(DONE)
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        name = self.fleet.served_model_name
        card = {"id": name, "object": "model", "created": self.fleet.created, "owned_by": "vllm", "root": name,
                "parent": None, "max_model_len": self.fleet.max_model_len}
        return web.Response(body=orjson.dumps({"object": "list", "data": [card]}), content_type=_JSON)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.fleet.metrics_text(self.ranks), content_type="text/plain")

    async def stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.engine.stats()), content_type=_JSON)


def _error(exc: ApiError, headers: dict[str, str]) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), content_type=_JSON, headers=headers)


#: (metric, type, help, engine attribute or rank-state key)
_METRICS = (
    ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", "running"),
    ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", "waiting"),
    ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", "kv_cache_usage"),
    ("vllm:request_success_total", "counter", "Count of successfully processed requests.", "requests_finished"),
    ("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", "prompt_tokens"),
    ("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", "generation_tokens"),
)


class EmulatedFleet:
    """The engine behind G+1 ports. ``await start(host, port)``, then ``await stop()``.

    ``port`` 0 lets the OS choose every port (tests); otherwise the front end gets ``port`` and rank g
    ``port + 1 + g``.
    """

    def __init__(self, engine: LiveEngine, *, served_model_name: str, max_model_len: int | None = None,
                 tokenizer: TextTokenizer | None = None) -> None:
        self.engine = engine
        self.served_model_name = served_model_name
        capacity = engine.model.kv_capacity_blocks * engine.model.block_size
        self.max_model_len = capacity if max_model_len is None else max_model_len
        if problem := int_problem(self.max_model_len, 2, also=" (tokens)"):
            raise ValueError(f"max_model_len {problem}")
        self.tokenizer = tokenizer
        self.ids = itertools.count()
        self.created = int(time.time())
        self._runners: list[web.AppRunner] = []

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FleetUrls:
        self.engine.start()
        urls = []
        try:
            for k, worker in enumerate([None, *range(self.engine.num_workers)]):
                runner = web.AppRunner(_Port(self, worker).app(), handler_cancellation=True, access_log=None)
                await runner.setup()
                self._runners.append(runner)
                site = web.TCPSite(runner, host, port + k if port else 0, reuse_address=True)
                await site.start()
                bound = runner.addresses[0][1]
                urls.append(f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{bound}")
        except BaseException:
            await self.stop()
            raise
        return FleetUrls(front=urls[0], ranks=tuple(urls[1:]))

    async def stop(self) -> None:
        """Close every port (open requests are cancelled, freeing their KV) and stop the engine's clock."""
        runners, self._runners = self._runners, []
        await asyncio.gather(*(runner.cleanup() for runner in runners), return_exceptions=True)
        self.engine.stop()

    def metrics_text(self, ranks) -> str:
        engine = self.engine
        state = engine.rank_state()
        model = self.served_model_name.replace("\\", "\\\\").replace('"', '\\"')
        lines = []
        for name, kind, text, key in _METRICS:
            values = state[key] if key in state else getattr(engine, key)
            base = name[:-len("_total")] if kind == "counter" else name
            lines += [f"# HELP {base} {text}", f"# TYPE {base} {kind}"]
            extra = ',finished_reason="length"' if name == "vllm:request_success_total" else ""
            for g in ranks:
                lines.append(f'{name}{{engine="{g}"{extra},model_name="{model}"}} {float(values[g])!r}')
        return "\n".join(lines) + "\n"
