"""Prompt length of an OpenAI request, at routing time (before the server has said anything).

The router must charge a request's prompt to a backend's KV load the moment it routes it; the server's exact count
(``usage.prompt_tokens``) arrives only with the response and then corrects the charge (:mod:`.accounting`).

- With a tokenizer (``--tokenizer``: a folder holding tokenizer.json or a ``transformers`` name, loaded by
  :func:`balanceroute.protocol.tokenizer.load_tokenizer`): the token count of the prompt text. Chat messages are counted
  as their concatenated text contents, without the chat template (a template adds a few tokens per message,
  which the usage correction then adds).
- Without one, the estimate is ``ceil(UTF-8 bytes / 4)`` of that text: the usual rule of thumb for BPE
  vocabularies on English text (about 4 characters per token), and for non-Latin scripts, where a character
  takes 2-3 bytes and often a token of its own, closer than counting characters.
- A completions prompt given as token ids (a list of ints, or a list of such lists) is counted exactly.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from balanceroute.protocol.tokenizer import TextTokenizer

#: UTF-8 bytes per token of the estimate.
BYTES_PER_TOKEN = 4


def prompt_parts(body: dict[str, Any], chat: bool) -> tuple[str, list[int]]:
    """The prompt's text and the tokens given directly as ids (completions with token-id prompts), one of them
    empty; the prompt is keyed by whichever it is (:func:`balanceroute.protocol.prompt_key.prompt_hash`)."""
    if chat:
        texts = []
        for message in body.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):  # multi-part content: the text parts count
                texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        return "\n".join(texts), []
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt, []
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt), []
        if isinstance(prompt[0], int):
            return "", prompt
        if all(isinstance(p, list) for p in prompt):
            return "", [t for p in prompt for t in p]
    return "", []


class PromptCounter:
    """Prompt tokens of a request body: tokenizer count where there is a tokenizer, else the estimate."""

    def __init__(self, tokenizer: TextTokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str, token_ids: Sequence[int] = ()) -> int:
        if not text:
            return max(1, len(token_ids))
        if self.tokenizer is not None:
            return max(1, len(token_ids) + len(self.tokenizer.encode(text)))
        return max(1, len(token_ids) + -(-len(text.encode()) // BYTES_PER_TOKEN))
