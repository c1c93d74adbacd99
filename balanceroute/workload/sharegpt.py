"""ShareGPT JSON conversations: one request per conversation, prompt texts kept for live backends.

The only source with real prompt texts: each is keyed by :func:`balanceroute.protocol.prompt_key.prompt_hash`
(the key the proxy and the emulator compute for the same text), which exact-match predictors read from
``Workload.prompt_hash``.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from balanceroute.protocol.prompt_key import prompt_hash
from balanceroute.workload.arrivals import arrival_times, check_rate
from balanceroute.workload.base import SAMPLE_STREAM, Workload, WorkloadError, check_count, random_stream, take_first

log = logging.getLogger(__name__)

#: ShareGPT fallback token estimate when no tokenizer is given: about 4 characters per token (English text
#: with GPT/Llama-style BPE tokenizers). Approximate: real counts differ by tens of percent for code or
#: non-English text, so pass a tokenizer for live runs where prompt lengths must be exact.
CHARS_PER_TOKEN = 4


class Tokenizer(Protocol):
    """Anything with ``encode(text) -> list`` (a Hugging Face tokenizer qualifies)."""

    def encode(self, text: str) -> Sequence[Any]: ...


def _first_exchange(entry: Any, index: int, path: Path) -> tuple[str, str] | None:
    """(first human turn, first gpt reply after it) of one ShareGPT entry, None when it has no such pair."""
    conv = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(conv, list) or not all(isinstance(t, dict) for t in conv):
        raise WorkloadError(f"{path}: entry [{index}] (0-based) is not a ShareGPT conversation; valid: "
                            f'{{"conversations": [{{"from": "human", "value": "..."}}, '
                            f'{{"from": "gpt", "value": "..."}}, ...]}}')
    prompt = None
    for turn in conv:
        value = turn.get("value")
        if not isinstance(value, str):
            continue
        if prompt is None and turn.get("from") == "human":
            prompt = value
        elif prompt is not None and turn.get("from") == "gpt":
            return prompt, value
    return None


def _token_counter(tokenizer: Tokenizer | None) -> Callable[[str], int]:
    if tokenizer is None:
        return lambda text: -(-len(text) // CHARS_PER_TOKEN)  # ceil(chars / 4), see CHARS_PER_TOKEN
    if not callable(getattr(tokenizer, "encode", None)):
        raise WorkloadError(f"tokenizer must have an encode(text) -> list method, got {type(tokenizer).__name__}")
    return lambda text: len(tokenizer.encode(text))


def load_sharegpt(path: str | Path, *, num_requests: int | None = None, tokenizer: Tokenizer | None = None,
                  rate: float = math.inf, burstiness: float = 1.0, seed: int = 0, shuffle: bool = True,
                  max_prompt_len: int | None = None, max_output_len: int | None = None) -> Workload:
    """Requests from a ShareGPT JSON file: a list of ``{"conversations": [{"from", "value"}, ...]}``.

    Each conversation gives one request: its first ``human`` turn is the prompt, the first ``gpt`` reply after
    it sets the output length. Conversations without such a pair, or whose prompt or reply is empty, are
    skipped; so are those over the length caps. Like ``vllm bench serve``, conversations are shuffled with
    ``seed`` before the first ``num_requests`` usable ones are taken (``shuffle=False`` keeps file order);
    only those are tokenized.

    Token lengths come from ``tokenizer.encode(text)`` (special tokens as the tokenizer adds them by default)
    or, without a tokenizer, from the approximate estimate ``ceil(characters / 4)`` (:data:`CHARS_PER_TOKEN`).
    Prompt texts are kept in ``Workload.prompts``; ``prompt_hash`` is :func:`prompt_hash` of the text.
    Arrivals: :func:`arrival_times` with ``rate``, ``burstiness`` and ``seed`` (default rate inf: all at t=0).
    """
    path = Path(path)
    num_requests = check_count("num_requests", num_requests, minimum=1)
    max_prompt_len = check_count("max_prompt_len", max_prompt_len, minimum=1)
    max_output_len = check_count("max_output_len", max_output_len, minimum=1)
    check_rate(rate, burstiness)
    count_tokens = _token_counter(tokenizer)
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkloadError(f"{path}: cannot read ShareGPT JSON ({type(exc).__name__}: {exc}); expected a JSON "
                            f"list of conversations") from None
    if not isinstance(data, list):
        raise WorkloadError(f"{path}: top level is {type(data).__name__}; valid: a JSON list of conversations")

    order = random_stream(seed, SAMPLE_STREAM).permutation(len(data)) if shuffle else np.arange(len(data))
    prompts: list[str] = []
    prompt_lens: list[int] = []
    output_lens: list[int] = []
    skipped = 0
    for i in order:
        if num_requests is not None and len(prompts) == num_requests:
            break
        pair = _first_exchange(data[i], int(i), path)
        if pair is None or not pair[0] or not pair[1]:
            skipped += 1
            continue
        p_len, o_len = count_tokens(pair[0]), count_tokens(pair[1])
        if (p_len < 1 or o_len < 1 or (max_prompt_len is not None and p_len > max_prompt_len)
                or (max_output_len is not None and o_len > max_output_len)):
            skipped += 1
            continue
        prompts.append(pair[0])
        prompt_lens.append(p_len)
        output_lens.append(o_len)
    n = take_first(len(prompts), num_requests, str(path))
    if n == 0:
        raise WorkloadError(f"{path}: no usable conversation (a human turn followed by a gpt reply, both "
                            f"non-empty and within the length caps) among {len(data)} entries")
    log.info("loaded %d ShareGPT requests from %s (%d conversations skipped)", n, path, skipped)
    hashes = np.fromiter((prompt_hash(p) for p in prompts), dtype=np.int64, count=n)
    return Workload(arrival_times(n, rate, burstiness=burstiness, seed=seed), np.asarray(prompt_lens),
                    np.asarray(output_lens), hashes, prompts, path.stem)
