"""One request against an OpenAI-compatible endpoint: the body to send, and what came back, when.

Token counting. The exact number of generated tokens is the server's own count: with ``stream_options:
{include_usage: true}`` the stream ends with a usage chunk (``completion_tokens``); with
``continuous_usage_stats: true`` (a vLLM extension) every chunk carries the running count, which also says how
many tokens each chunk holds. A server that sends no usage falls back to counting the chunks that carry
tokens, recorded per request as ``token_count_source = 'chunks'`` instead of ``'usage'`` (a chunk can hold
several tokens, so this undercounts where servers bundle tokens).

Token times (see :func:`token_times`): each chunk's arrival is stamped on the client clock. The tokens of the
first chunk all count as arriving with it (that is the TTFT); the k tokens of a later chunk are spread evenly
over the interval since the previous chunk, the last landing on the chunk's arrival, so that the gaps between
token times are per-token decode intervals and the last token time (E2EL) is the last chunk's arrival. When the
per-chunk counts are unknown (usage only at the end), the total is spread evenly over the token-carrying
chunks. With one token per chunk, which is what vLLM normally sends, all of this reduces to one token per
chunk arrival, the same samples ``vllm bench serve`` takes.

Failures are classified, never raised: :data:`ERROR_CLASSES`.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from yarl import URL

#: Endpoint kinds by URL path suffix; the value is vLLM's ``--backend`` name for the same API.
ENDPOINTS = {"/v1/completions": "openai", "/v1/chat/completions": "openai-chat"}

#: Error classes a failed request is counted under (``http_<status>`` for any HTTP status other than 200).
ERROR_CLASSES = ("connection_refused", "connection_error", "timeout", "http_<status>", "malformed_sse",
                 "malformed_response", "disconnected", "server_error", "empty_response", "client_error")

_MAX_ERROR_BODY = 300  # characters of an error response kept as detail


def endpoint_kind(url: str) -> str:
    """``'openai'`` (completions) or ``'openai-chat'`` for a full endpoint URL; ValueError otherwise."""
    path = URL(url).path.rstrip("/")
    for suffix, kind in ENDPOINTS.items():
        if path.endswith(suffix):
            return kind
    raise ValueError(f"target URL {url!r} is not an OpenAI endpoint; valid: a full URL ending in "
                     f"{' or '.join(ENDPOINTS)} (e.g. http://127.0.0.1:8000/v1/completions)")


def build_payload(kind: str, model: str, prompt: str, max_tokens: int, *, stream: bool, ignore_eos: bool,
                  continuous_usage: bool, extra_body: dict[str, Any] | None = None) -> bytes:
    """The JSON body of one request (bytes, ready to send)."""
    if kind == "openai-chat":
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                                "max_completion_tokens": int(max_tokens)}
    else:
        body = {"model": model, "prompt": prompt, "max_tokens": int(max_tokens)}
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
        if continuous_usage:
            body["stream_options"]["continuous_usage_stats"] = True
    if ignore_eos:
        body["ignore_eos"] = True
    if extra_body:
        body.update(extra_body)
    return json.dumps(body).encode()


@dataclass
class Outcome:
    """What happened to one request; filled in while it runs, so a cancelled request keeps its progress.

    Times are ``time.perf_counter()`` values; the runner converts them to the run clock.
    """

    sent: float = float("nan")
    finish: float = float("nan")
    status: str = "unfinished"
    error: str = ""
    error_detail: str = ""
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)  # per token chunk, from continuous usage
    completion_tokens: int | None = None  # server's count (usage)
    prompt_tokens: int | None = None
    text_parts: list[str] | None = None
    worker: int = -1

    @property
    def output_len(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunk_times)

    @property
    def token_count_source(self) -> str:
        """'usage' (the server's count), 'chunks' (token-carrying chunks counted) or 'none' (no count)."""
        if self.completion_tokens is not None:
            return "usage"
        return "chunks" if self.chunk_times else "none"

    def fail(self, error: str, detail: str = "") -> None:
        self.status, self.error, self.error_detail = "failed", error, detail[:_MAX_ERROR_BODY]
        self.finish = time.perf_counter()


def _choice_text(choice: dict, chat: bool) -> str:
    """The generated text of a choice (chat: content plus reasoning content); '' for anything else."""
    if chat:
        delta = choice.get("delta") or choice.get("message") or {}
        parts = (delta.get("content"), delta.get("reasoning_content")) if isinstance(delta, dict) else ()
    else:
        parts = (choice.get("text"),)
    return "".join(p for p in parts if isinstance(p, str))


class _Stream:
    """Parses SSE lines of one response into ``Outcome`` fields."""

    def __init__(self, out: Outcome, chat: bool) -> None:
        self.out, self.chat = out, chat
        self.seen = 0  # running completion_tokens from continuous usage
        self.continuous = False

    def line(self, raw: bytes, now: float) -> bool | str:
        """Handle one line; True at ``[DONE]``, an error class for a bad event, else False."""
        line = raw.strip()
        if not line or line.startswith(b":"):
            return False
        if not line.startswith(b"data:"):
            return False if line.startswith((b"event:", b"id:", b"retry:")) else "malformed_sse"
        data = line[5:].strip()
        if data == b"[DONE]":
            return True
        try:
            obj = json.loads(data)
        except ValueError:
            return "malformed_sse"
        if not isinstance(obj, dict):
            return "malformed_sse"
        choices = obj.get("choices")
        if obj.get("error") is not None and not choices:
            self.out.error_detail = json.dumps(obj["error"])[:_MAX_ERROR_BODY]
            return "server_error"
        usage = obj.get("usage")
        counted = isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int)
        if counted:
            self.out.completion_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.out.prompt_tokens = usage["prompt_tokens"]
        if not choices:
            return False
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            return "malformed_sse"
        text = _choice_text(choices[0], self.chat)
        if self.out.text_parts is not None:
            self.out.text_parts.append(text)
        if counted:  # continuous usage: the running count says how many tokens this chunk holds
            self.continuous = True
            new = self.out.completion_tokens - self.seen
            self.seen = self.out.completion_tokens
            if new > 0:
                self.out.chunk_times.append(now)
                self.out.chunk_tokens.append(new)
        elif text or choices[0].get("finish_reason") is not None:
            self.out.chunk_times.append(now)
        return False


def _worker(resp: aiohttp.ClientResponse, header: str | None) -> int:
    if header is None:
        return -1
    try:
        return int(resp.headers.get(header, -1))
    except ValueError:
        return -1


async def send_request(session: aiohttp.ClientSession, url: str, body: bytes, out: Outcome, *, stream: bool,
                       chat: bool, timeout_s: float | None, headers: dict[str, str],
                       worker_header: str | None = None) -> None:
    """Send one request and record its progress and result in ``out`` (never raises, except cancellation)."""
    out.sent = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            out.worker = _worker(resp, worker_header)
            if resp.status != 200:
                detail = (await resp.text(errors="replace"))[:_MAX_ERROR_BODY]
                return out.fail(f"http_{resp.status}", detail)
            if stream:
                await _read_stream(resp, out, chat)
            else:
                await _read_whole(resp, out, chat)
    except asyncio.TimeoutError:  # also aiohttp's ServerTimeoutError
        out.fail("timeout", f"no complete response within {timeout_s} s")
    except aiohttp.ClientConnectorError as exc:
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        out.fail("connection_refused" if refused else "connection_error", str(exc))
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError,
            ConnectionResetError) as exc:
        out.fail("disconnected", f"{type(exc).__name__}: {exc}")
    except aiohttp.ClientError as exc:
        out.fail("client_error", f"{type(exc).__name__}: {exc}")
    except ValueError as exc:  # a line longer than aiohttp's read limit
        out.fail("malformed_sse", str(exc))


async def _read_stream(resp: aiohttp.ClientResponse, out: Outcome, chat: bool) -> None:
    parser = _Stream(out, chat)
    async for raw in resp.content:
        result = parser.line(raw, time.perf_counter())
        if result is True:
            await resp.content.read()  # drain to the end of the body so the connection goes back to the pool
            break
        if result:
            return out.fail(result, out.error_detail or raw[:_MAX_ERROR_BODY].decode(errors="replace"))
    else:
        return out.fail("disconnected", "stream ended before [DONE]")
    if not out.chunk_times:
        return out.fail("empty_response", "no chunk carried a token")
    if not parser.continuous:
        out.chunk_tokens = []
    out.finish = out.chunk_times[-1]
    out.status = "completed"


async def _read_whole(resp: aiohttp.ClientResponse, out: Outcome, chat: bool) -> None:
    raw = await resp.read()
    now = time.perf_counter()
    try:
        obj = json.loads(raw)
        text = _choice_text(obj["choices"][0], chat)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return out.fail("malformed_response", raw[:_MAX_ERROR_BODY].decode(errors="replace"))
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("completion_tokens"), int):
            out.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            out.prompt_tokens = usage["prompt_tokens"]
    if out.text_parts is not None:
        out.text_parts.append(text)
    out.finish = now
    out.status = "completed"


def token_times(chunk_times: np.ndarray, chunk_tokens: np.ndarray | None, total: int) -> np.ndarray:
    """Per-token times from the arrival times of the token-carrying chunks (see the module docstring).

    ``chunk_tokens`` gives each chunk's token count (continuous usage); None spreads ``total`` tokens evenly
    over the chunks (chunk i holds the tokens up to ``ceil((i+1) * total / C)``, so the first chunk holds at
    least one). Returns ``total`` non-decreasing times; empty when there are no chunks or no tokens.
    """
    times = np.asarray(chunk_times, dtype=np.float64)
    c = times.size
    if c == 0 or total <= 0:
        return np.zeros(0)
    if chunk_tokens is None or len(chunk_tokens) != c:
        cum = np.ceil(np.arange(1, c + 1) * total / c).astype(np.int64)
        counts = np.diff(cum, prepend=0)
    else:
        counts = np.asarray(chunk_tokens, dtype=np.int64)
    n = int(counts.sum())
    prev = np.concatenate((times[:1], times[:-1]))
    idx = np.repeat(np.arange(c), counts)
    pos = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    frac = pos / counts[idx]
    return prev[idx] + (times[idx] - prev[idx]) * frac
