"""The OpenAI API as vLLM serves it, for the emulator: request parsing, prompt token counts, response bodies.

Prompt token count. A prompt given as token ids (``prompt: [1, 2, 3]``) counts exactly. Text counts with the
tokenizer given by ``--tokenizer``, else by a fixed rule: **one token per whitespace-separated word**, which is
exactly how the benchmark client writes synthetic prompts when it has no tokenizer
(:mod:`balanceroute.protocol.synthetic`), so a bench -> emulator run agrees on every prompt length. Chat requests count the words (or tokens) of
every message's text content; no chat template is added.

Output length. The emulator has no model, so no request ends early: a request generates ``max_tokens`` tokens
(chat: ``max_completion_tokens``, else ``max_tokens``), ``ignore_eos`` or not, with ``finish_reason: "length"``.
Missing, it defaults as in vLLM: 16 for completions, the rest of the context (max model length - prompt) for chat.

Errors use vLLM's body ``{"error": {"message", "type", "param", "code"}}``: malformed JSON or a bad field is a 400
``BadRequestError``, an unknown model a 404 ``NotFoundError``, a prompt plus max_tokens beyond the max model
length or a rank's KV cache a 400.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from balanceroute.policies.checks import int_problem
from balanceroute.protocol.prompt_key import prompt_hash
from balanceroute.protocol.synthetic import WORDS
from balanceroute.protocol.tokenizer import TextTokenizer

#: Default ``max_tokens`` of a completions request (vLLM's CompletionRequest default).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: Text of generated token k is ``VOCABULARY[k % len]``: a word of synthetic text with a leading space, so
#: generated text counts back to the same number of tokens under the word rule.
VOCABULARY = tuple(f" {w}" for w in WORDS)


_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


class ApiError(Exception):
    """An error response: HTTP ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": _ERROR_TYPES.get(self.status, "Error"),
                                       "param": self.param, "code": self.status}})


@dataclass(frozen=True)
class CompletionRequest:
    """What the emulator needs of one request."""

    chat: bool
    prompt_len: int
    max_tokens: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    prompt_hash: int


def _count_text(text: str, tokenizer: TextTokenizer | None) -> int:
    return len(tokenizer.encode(text)) if tokenizer is not None else len(text.split())


def _completion_prompt(body: dict, tokenizer: TextTokenizer | None) -> tuple[int, int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return _count_text(prompt, tokenizer), prompt_hash(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return len(prompt), prompt_hash(prompt)
    raise ApiError(400, "prompt must be a string or a list of token ids (one prompt per request: the emulator "
                        f"serves no batched prompts), got {type(prompt).__name__}", "prompt")


def _chat_prompt(body: dict, tokenizer: TextTokenizer | None) -> tuple[int, int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    texts = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):  # content parts: only the text ones carry tokens here
            texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        elif content is not None:
            raise ApiError(400, f"message content must be a string or a list of parts, got {type(content).__name__}",
                           "messages")
    return sum(_count_text(t, tokenizer) for t in texts), prompt_hash(texts)


def _int_field(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    problem = int_problem(value, 1)
    if problem:
        raise ApiError(400, f"{key} {problem}", key)
    return value


def parse_request(raw: bytes, *, chat: bool, served_model: str, max_model_len: int,
                  tokenizer: TextTokenizer | None = None) -> CompletionRequest:
    """Check one request body and count its prompt; raises :class:`ApiError` (400 or 404) naming the problem."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if model is not None and model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, f"n must be 1 (the emulator generates one choice per request), got {n!r}", "n")
    prompt_len, digest = (_chat_prompt if chat else _completion_prompt)(body, tokenizer)
    if prompt_len < 1:
        raise ApiError(400, "the prompt is empty (0 tokens)", "messages" if chat else "prompt")
    if chat:
        max_tokens = _int_field(body, "max_completion_tokens") or _int_field(body, "max_tokens")
        if max_tokens is None:
            max_tokens = max(max_model_len - prompt_len, 1)
    else:
        max_tokens = _int_field(body, "max_tokens") or COMPLETIONS_DEFAULT_MAX_TOKENS
    if prompt_len + max_tokens > max_model_len:
        raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                            f"{prompt_len + max_tokens} tokens ({prompt_len} in the "
                            f"{'messages' if chat else 'prompt'}, {max_tokens} in the completion). Please reduce the "
                            "length of the prompt or completion.")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, f"stream_options must be an object, got {options!r}", "stream_options")
    include_usage = bool(options.get("include_usage")) and stream
    return CompletionRequest(chat=chat, prompt_len=prompt_len, max_tokens=max_tokens, stream=stream,
                             include_usage=include_usage,
                             continuous_usage=include_usage and bool(options.get("continuous_usage_stats")),
                             prompt_hash=digest)


def token_text(start: int, stop: int) -> str:
    """The text of generated tokens ``start .. stop - 1``."""
    v = VOCABULARY
    return "".join(v[k % len(v)] for k in range(start, stop))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens}


class ResponseWriter:
    """Builds the JSON bodies and SSE events of one response (vLLM's field order and object names)."""

    def __init__(self, request: CompletionRequest, request_id: str, model: str) -> None:
        self.request = request
        self.chat = request.chat
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{request_id}"
        self.model = model
        self.created = int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def chunk(self, start: int, stop: int, finished: bool) -> bytes:
        """The SSE event carrying tokens ``start .. stop - 1`` (the last one when ``finished``)."""
        reason = "length" if finished else None
        text = token_text(start, stop)
        if self.chat:
            choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": reason}
            out = self._head("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason, "stop_reason": None}
            out = self._head("text_completion")
        out["choices"] = [choice]
        if self.request.continuous_usage:
            out["usage"] = usage(self.request.prompt_len, stop)
        return event(out)

    def role_chunk(self) -> bytes:
        """A chat stream's first event: the assistant role, no token."""
        out = self._head("chat.completion.chunk")
        out["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                           "finish_reason": None}]
        if self.request.continuous_usage:
            out["usage"] = usage(self.request.prompt_len, 0)
        return event(out)

    def usage_chunk(self, completion_tokens: int) -> bytes:
        """The final usage event (``stream_options.include_usage``): no choices."""
        out = self._head("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = []
        out["usage"] = usage(self.request.prompt_len, completion_tokens)
        return event(out)

    def whole(self, completion_tokens: int) -> bytes:
        """A non-streamed response body."""
        text = token_text(0, completion_tokens)
        if self.chat:
            out = self._head("chat.completion")
            out["choices"] = [{"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                               "logprobs": None, "finish_reason": "length", "stop_reason": None}]
        else:
            out = self._head("text_completion")
            out["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                               "stop_reason": None}]
        out["usage"] = usage(self.request.prompt_len, completion_tokens)
        return orjson.dumps(out)


DONE = b"data: [DONE]\n\n"


def event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
