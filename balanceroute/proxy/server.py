"""The routing proxy: an OpenAI-compatible aiohttp.web application in front of independent backends.

Request path (``POST /v1/completions`` and ``/v1/chat/completions``):

1. read and parse the body (orjson); malformed JSON or a non-object gets a 400 from the proxy itself;
2. streaming requests that did not ask for ``stream_options.include_usage`` get it added (the usage chunk
   corrects the load; it is removed again from what the client sees); otherwise the body goes out unchanged;
3. the prompt length is counted or estimated (:mod:`.prompt`) and the dispatcher picks a live backend
   (:mod:`.dispatch`: on arrival, or from the pool when slots free), charging the load there;
4. the request goes to the backend with the client's headers (Authorization included; never logged);
   ``X-Request-Id`` is the client's or a new one, echoed back, and ``X-Balanceroute-Worker`` names the backend;
5. the answer: a non-200 status passes through with its body; a stream is forwarded event by event through
   :class:`.accounting.StreamAccount` (generated tokens as they stream, corrected by usage);
6. the load is released exactly once, however the request ends (:class:`.accounting.Ticket`).

Failures. A connection failure before anything reached the client (refused, reset, the backend closed the stream
before its first event) is retried once on another live backend; a refused or timed-out connection also takes the
backend out until its health check passes again. A stream that breaks after it started ends, for the client, with
``data: {"error": ...}`` and ``data: [DONE]``; the request counts as failed. A client that disconnects cancels its
handler (aiohttp's handler cancellation), which closes the upstream connection (vLLM then aborts the request) and
releases the load.

Other endpoints: ``GET /v1/models`` (from the first live backend), ``GET /health`` (200 while at least one backend
is live, else 503), ``GET /metrics`` and ``GET /stats`` (:mod:`.telemetry`).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from balanceroute.load import LoadTracker
from balanceroute.policies import make_policy
from balanceroute.policies.checks import int_problem
from balanceroute.policies.dispatch import DISPATCH_MODES
from balanceroute.protocol.headers import REQUEST_ID_HEADER, WORKER_HEADER
from balanceroute.protocol.prompt_key import prompt_hash
from balanceroute.protocol.tokenizer import TextTokenizer
from balanceroute.proxy.accounting import StreamAccount, Ticket
from balanceroute.proxy.dispatch import LiveRouter, NoLiveBackendError, make_dispatcher
from balanceroute.proxy.prompt import PromptCounter, prompt_parts
from balanceroute.proxy.telemetry import Telemetry
from balanceroute.proxy.upstreams import HealthMonitor, Upstreams, check_targets

log = logging.getLogger(__name__)

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
#: Request headers not forwarded: hop-by-hop headers, and those the proxy's client sets itself.
_DROP_HEADERS = frozenset(h.lower() for h in (
    "Host", "Content-Length", "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "TE",
    "Trailer", "Upgrade", "Proxy-Authorization", "Accept-Encoding", REQUEST_ID_HEADER))
_BROKEN = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
           asyncio.TimeoutError)


@dataclass(frozen=True)
class ProxyConfig:
    """What the proxy routes to and how (``balanceroute proxy --help`` explains each option)."""

    targets: tuple[str, ...]
    router: str = "round_robin"
    router_params: Mapping[str, Any] = field(default_factory=dict)
    dispatch: str = "on_arrival"
    max_num_seqs: int | None = None
    seed: int = 0
    health_interval_s: float = 2.0
    health_timeout_s: float = 2.0
    connect_timeout_s: float = 5.0
    request_timeout_s: float | None = None
    max_body_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", check_targets(self.targets))
        if self.dispatch not in DISPATCH_MODES:
            raise ValueError(f"dispatch {self.dispatch!r} is not a dispatch mode; valid: {', '.join(DISPATCH_MODES)}")
        if self.max_num_seqs is not None and (problem := int_problem(self.max_num_seqs, 1)):
            raise ValueError(f"max_num_seqs {problem}")
        if self.dispatch == "pool" and self.max_num_seqs is None:
            raise ValueError("pool dispatch needs the slots per backend: give max_num_seqs (--max-num-seqs), "
                             "the backends' --max-num-seqs")
        for name in ("health_interval_s", "health_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if problem := int_problem(self.max_body_bytes, 1):
            raise ValueError(f"max_body_bytes {problem}")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0 seconds or None, got {self.request_timeout_s!r}")

    def make_policy(self):
        """The policy, seeded unless the parameters set a seed; ValueError naming valid names and parameters."""
        params = dict(self.router_params)
        params.setdefault("seed", self.seed)
        return make_policy(self.router, **params)


class _BeforeStream(Exception):
    """An attempt failed before anything reached the client: the request may go to another backend."""

    def __init__(self, cause: BaseException, *, backend_down: bool) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.backend_down = backend_down


class RoutingProxy:
    """The proxy's state (backends, router, load, counters) and its aiohttp application (:meth:`app`)."""

    def __init__(self, config: ProxyConfig, *, tokenizer: TextTokenizer | None = None) -> None:
        self.config = config
        policy = config.make_policy()
        g = len(config.targets)
        self.tracker = LoadTracker(g, max_num_seqs=config.max_num_seqs)
        self.upstreams = Upstreams(config.targets, on_change=self._backends_changed)
        self.router = LiveRouter(policy, self.tracker, self.upstreams.live)
        self.dispatcher = make_dispatcher(config.dispatch, self.router)
        self.telemetry = Telemetry(self.upstreams, self.tracker, self.dispatcher, router_name=config.router)
        self.dispatcher.on_decision = self.telemetry.decided
        self.count_prompt = PromptCounter(tokenizer)
        self.session: aiohttp.ClientSession | None = None
        self.health: HealthMonitor | None = None
        self._keys = itertools.count()
        # ids the proxy gives requests that came without one: a random prefix per proxy, so they are unique across
        # restarts and across proxies writing to the same logs
        self._id_prefix = f"br-{secrets.token_hex(4)}"
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout_s, sock_connect=config.connect_timeout_s)

    def _backends_changed(self) -> None:
        self.dispatcher.backends_changed()

    # ---- the application -----------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post(COMPLETIONS, self._completions)
        app.router.add_post(CHAT, self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/stats", self._stats)
        app.cleanup_ctx.append(self._lifetime)
        return app

    async def _lifetime(self, app: web.Application):
        """The upstream session and the health checks live as long as the application (first check before
        serving, so a backend that is down at start is never chosen)."""
        # keepalive below vLLM's (uvicorn's 5 s) so that an idle pooled connection is never reused just as the
        # backend closes it
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=True)
        self.health = HealthMonitor(self.upstreams, self.session, interval_s=self.config.health_interval_s,
                                    timeout_s=self.config.health_timeout_s)
        await self.health.check_all()
        log.info("routing with %s (%s) over %d backends, %d healthy", self.config.router, self.config.dispatch,
                 len(self.upstreams), int(self.upstreams.live.sum()))
        task = asyncio.create_task(self.health.run())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self.session.close()

    # ---- generation endpoints ------------------------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        start = time.perf_counter()
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.telemetry.error("bad_request")
            return _error(413, f"request body is larger than the proxy's limit of {self.config.max_body_bytes} "
                               "bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.telemetry.error("bad_request")
            return _error(400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            self.telemetry.error("bad_request")
            return _error(400, f"request body must be a JSON object, got {type(body).__name__}")
        stream = body.get("stream") is True
        strip_usage = False
        if stream:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage")):
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                raw = orjson.dumps(body)
                strip_usage = True
        text, token_ids = prompt_parts(body, chat)
        prompt_len = self.count_prompt(text, token_ids)
        prompt_key = prompt_hash(text or token_ids)  # keys exact-match length predictors as the simulator does
        request_id = request.headers.get(REQUEST_ID_HEADER) or f"{self._id_prefix}-{next(self._keys)}"
        headers = _forward_headers(request.headers, request_id)
        failure: _BeforeStream | None = None
        for _attempt in range(2):
            key = next(self._keys)
            try:
                worker = await self.dispatcher.acquire(key, prompt_len, prompt_key)
            except NoLiveBackendError:
                self.telemetry.error("no_backend")
                return _error(503, "no healthy backend to route to")
            ticket = Ticket(key, worker, prompt_len, self.dispatcher.release)
            try:
                return await self._attempt(request, ticket, raw, headers, request_id, stream=stream,
                                           strip_usage=strip_usage, start=start)
            except _BeforeStream as exc:
                self.telemetry.outcome(worker, "connect_failed")
                self.telemetry.error("connect")
                if exc.backend_down:
                    self.upstreams.mark(worker, False, str(exc))
                log.info("request %s: backend %d failed before streaming (%s)%s", request_id, worker, exc,
                         "; retrying on another backend" if _attempt == 0 else "")
                failure = exc
            except asyncio.CancelledError:  # the client disconnected (handler cancellation)
                self.telemetry.outcome(worker, "cancelled")
                raise
            finally:
                ticket.release(False)  # no-op when the attempt released it already
        self.telemetry.error("exhausted")
        return _error(502, f"backend unreachable: {failure}")

    async def _attempt(self, request: web.Request, ticket: Ticket, raw: bytes, headers: dict[str, str],
                       request_id: str, *, stream: bool, strip_usage: bool, start: float) -> web.StreamResponse:
        worker = ticket.worker
        url = self.upstreams.urls[worker] + request.path
        try:
            upstream = await self.session.post(url, data=raw, headers=headers)
        except (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError) as exc:
            raise _BeforeStream(exc, backend_down=True) from exc
        except _BROKEN as exc:
            raise _BeforeStream(exc, backend_down=False) from exc
        out_headers = {WORKER_HEADER: str(worker), REQUEST_ID_HEADER: request_id}
        content_type = upstream.headers.get("Content-Type")
        if content_type:
            out_headers["Content-Type"] = content_type
        try:
            if upstream.status != 200:
                data = await self._read(upstream)
                ticket.release(False)
                self.telemetry.outcome(worker, "upstream_status")
                self.telemetry.error("upstream_status")
                return web.Response(status=upstream.status, body=data, headers=out_headers)
            if stream:
                return await self._stream(request, upstream, ticket, out_headers, strip_usage, start)
            data = await self._read(upstream)
            account = StreamAccount(self.tracker, ticket.request_id, ticket.prompt_len, strip_usage=False)
            try:
                account.usage(orjson.loads(data).get("usage"))
            except (orjson.JSONDecodeError, AttributeError):
                pass  # not ours to judge: the client gets the body as it is
            self._completed(ticket, start)
            return web.Response(body=data, headers=out_headers)
        finally:
            upstream.close()  # a no-op once read to the end; else drops the connection, cancelling upstream

    @staticmethod
    async def _read(upstream: aiohttp.ClientResponse) -> bytes:
        try:
            return await upstream.read()
        except _BROKEN as exc:
            raise _BeforeStream(exc, backend_down=False) from exc

    async def _stream(self, request: web.Request, upstream: aiohttp.ClientResponse, ticket: Ticket,
                      headers: dict[str, str], strip_usage: bool, start: float) -> web.StreamResponse:
        account = StreamAccount(self.tracker, ticket.request_id, ticket.prompt_len, strip_usage=strip_usage)
        response: web.StreamResponse | None = None
        broken = ""
        try:
            try:
                async for chunk in upstream.content.iter_any():
                    data = account.feed(chunk)
                    if not data:
                        continue
                    if response is None:
                        response = web.StreamResponse(headers=headers)
                        await response.prepare(request)
                    await response.write(data)
            except _BROKEN as exc:
                if response is None:
                    raise _BeforeStream(exc, backend_down=False) from exc
                broken = f"the backend's stream broke off ({type(exc).__name__}: {exc})"
            if response is None:
                raise _BeforeStream(EOFError("the backend closed the stream before its first event"),
                                    backend_down=False)
            if not broken and not account.done:
                broken = "the backend's stream ended before [DONE]"
            if broken:
                log.info("request %s on backend %d failed: %s", headers[REQUEST_ID_HEADER], ticket.worker, broken)
                event = {"error": {"message": broken, "type": "upstream_error", "code": 502}}
                await response.write(b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:  # the client went away between two writes
            ticket.release(False)
            self.telemetry.outcome(ticket.worker, "cancelled")
            return response
        if broken or account.error is not None:
            ticket.release(False)
            self.telemetry.outcome(ticket.worker, "failed")
            self.telemetry.error("stream")
        else:
            self._completed(ticket, start)
        return response

    def _completed(self, ticket: Ticket, start: float) -> None:
        ticket.release(True)
        self.telemetry.outcome(ticket.worker, "completed")
        self.telemetry.latency[ticket.worker].observe(time.perf_counter() - start)

    # ---- other endpoints -----------------------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        headers = _forward_headers(request.headers, request.headers.get(REQUEST_ID_HEADER) or "models")
        for worker in self.upstreams.live.nonzero()[0].tolist():
            try:
                async with self.session.get(self.upstreams.urls[worker] + "/v1/models", headers=headers) as resp:
                    body = await resp.read()
                    return web.Response(status=resp.status, body=body, headers={
                        WORKER_HEADER: str(worker),
                        "Content-Type": resp.headers.get("Content-Type", "application/json")})
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.info("GET /v1/models from backend %d failed: %s", worker, exc)
        return _error(503, "no healthy backend answered /v1/models")

    async def _health(self, request: web.Request) -> web.Response:
        live = int(self.upstreams.live.sum())
        return web.json_response({"healthy_backends": live, "backends": len(self.upstreams)},
                                 status=200 if live else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.telemetry.prometheus(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.telemetry.stats()), content_type="application/json")


def _forward_headers(headers: CIMultiDictProxy[str], request_id: str) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() not in _DROP_HEADERS}
    out[REQUEST_ID_HEADER] = request_id
    return out


def _error(status: int, message: str) -> web.Response:
    """An OpenAI-style error body."""
    body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "proxy_error",
                      "code": status}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
