"""Per-request load bookkeeping of the proxy: what a response says about the load its request puts on a backend.

A routed request is charged to its backend's tracked KV load (:class:`balanceroute.load.LoadTracker`) with its
estimated prompt length (:mod:`.prompt`). As the response streams, :class:`StreamAccount` reads every SSE event:

- generated tokens: one per event whose choices carry text (completions ``text``, chat ``delta.content`` or
  ``reasoning_content``), summed over choices; an event that carries ``usage`` (vLLM's continuous usage, or the
  final usage chunk) sets the count to the server's ``completion_tokens`` instead, which also corrects any
  miscount of bundled tokens;
- prompt tokens: the first ``usage.prompt_tokens`` replaces the estimate;
- the usage-only chunk (empty ``choices``) is removed from the client's stream when the proxy asked for it on
  the client's behalf (the client did not set ``stream_options.include_usage``);
- ``data: [DONE]`` marks a complete stream; a ``data: {"error": ...}`` event marks a failed one.

Each request's load is released exactly once (:meth:`Ticket.release`), whatever ends it: the end of the stream,
an upstream error, a client disconnect (the handler is cancelled) or a failed attempt before a retry.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import orjson

from balanceroute.load import LoadTracker

_DONE = b"data: [DONE]"
_SEP = b"\n\n"


class Ticket:
    """One routed attempt of a request: its id in the tracker, its backend, and the release owed for it.

    ``release(completed)`` calls ``on_release(request_id, completed)`` once; later calls do nothing.
    """

    __slots__ = ("_on_release", "prompt_len", "released", "request_id", "worker")

    def __init__(self, request_id: Hashable, worker: int, prompt_len: int,
                 on_release: Callable[[Hashable, bool], None]) -> None:
        self.request_id = request_id
        self.worker = worker
        self.prompt_len = prompt_len
        self.released = False
        self._on_release = on_release

    def release(self, completed: bool) -> None:
        if not self.released:
            self.released = True
            self._on_release(self.request_id, completed)


class StreamAccount:
    """Feeds one upstream SSE stream through the tracker; :meth:`feed` returns the bytes to forward."""

    __slots__ = (
        "_buffer",
        "done",
        "error",
        "generated",
        "prompt_corrected",
        "prompt_len",
        "request_id",
        "strip_usage",
        "tracker",
    )

    def __init__(self, tracker: LoadTracker, request_id: Hashable, prompt_len: int, *, strip_usage: bool) -> None:
        self.tracker = tracker
        self.request_id = request_id
        self.strip_usage = strip_usage
        self.prompt_len = prompt_len
        self.prompt_corrected = False
        self.generated = 0
        self.done = False
        self.error: Any = None
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        """Account for the complete events in ``chunk`` (plus what an earlier chunk left incomplete) and return
        them, less a stripped usage chunk; an incomplete trailing event is kept for the next call."""
        data = self._buffer + chunk if self._buffer else chunk
        end = data.rfind(_SEP)
        if end < 0:
            self._buffer = data
            return b""
        end += len(_SEP)
        self._buffer = data[end:]
        complete = data[:end]
        events = complete.split(_SEP)
        events.pop()  # the empty piece after the last separator
        if not self.strip_usage:
            for event in events:
                self._event(event)
            return complete
        return b"".join(event + _SEP for event in events if self._event(event))

    def usage(self, usage: Any) -> None:
        """Apply a ``usage`` object: exact prompt tokens (once) and the running count of generated tokens."""
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens")
        if not self.prompt_corrected and isinstance(prompt, int) and prompt > 0:
            self.prompt_corrected = True
            if prompt != self.prompt_len:
                self.tracker.set_prompt_len(self.request_id, prompt)
                self.prompt_len = prompt
        completion = usage.get("completion_tokens")
        if isinstance(completion, int) and completion != self.generated:
            self.tracker.tokens(self.request_id, completion - self.generated)
            self.generated = completion

    def _event(self, event: bytes) -> bool:
        """Account for one event; False if it is the usage chunk to strip."""
        if not event.startswith(b"data:"):
            return True  # comments, event:/id:/retry: fields
        if event.startswith(_DONE):
            self.done = True
            return True
        try:
            obj = orjson.loads(event[5:])
        except orjson.JSONDecodeError:
            return True  # the client judges a malformed event; the load is released when the stream ends
        if not isinstance(obj, dict):
            return True
        if obj.get("error") is not None:
            self.error = obj["error"]
            return True
        choices = obj.get("choices")
        usage = obj.get("usage")
        if usage is not None:
            self.usage(usage)
            return bool(choices) or not self.strip_usage
        if choices:
            n = _text_choices(choices)
            if n:
                self.tracker.tokens(self.request_id, n)
                self.generated += n
        return True


def _text_choices(choices: Any) -> int:
    """How many choices of a chunk carry generated text (each counts as one token when no usage says more)."""
    if not isinstance(choices, list):
        return 0
    n = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            n += 1
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content")):
            n += 1
    return n
