"""A minimal OpenAI client for the proxy tests: one request, and what came back (status, worker, SSE events)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from balanceroute.protocol.headers import WORKER_HEADER


@dataclass
class Reply:
    status: int
    worker: int
    headers: Mapping = field(default_factory=dict)  # case-insensitive (CIMultiDict)
    events: list = field(default_factory=list)  # parsed JSON of every data event except [DONE]
    done: bool = False  # saw data: [DONE]
    body: bytes = b""

    @property
    def error_events(self) -> list:
        return [e for e in self.events if isinstance(e, dict) and e.get("error") is not None]

    @property
    def usage_chunks(self) -> list:
        return [e for e in self.events if isinstance(e, dict) and e.get("usage") and not e.get("choices")]

    @property
    def completed(self) -> bool:
        return self.status == 200 and self.done and not self.error_events


def completion_body(prompt: str = "hello there", max_tokens: int = 8, *, stream: bool = True,
                    usage: bool | None = None, **extra) -> dict:
    body = {"model": "test-model", "prompt": prompt, "max_tokens": max_tokens, "stream": stream, **extra}
    if usage is not None:
        body["stream_options"] = {"include_usage": usage}
    return body


async def post(session: aiohttp.ClientSession, url: str, body: dict | bytes, *, path: str = "/v1/completions",
               headers: dict | None = None) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}
                            ) as resp:
        reply = Reply(resp.status, int(resp.headers.get(WORKER_HEADER, -1)), resp.headers.copy())
        if resp.status != 200 or not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            reply.body = await resp.read()
            return reply
        async for line in resp.content:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                reply.done = True
            else:
                reply.events.append(json.loads(data))
        return reply
