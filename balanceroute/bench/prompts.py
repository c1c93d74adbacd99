"""Prompt texts for live runs: the workload's own texts, or synthetic text of a requested token length.

Traces such as Azure's carry only lengths, so the client writes a prompt of the requested number of tokens
(:func:`balanceroute.protocol.synthetic.synthetic_text`: exact with the model's tokenizer, else one common English
word per token). Either way the prompt length recorded for a request is the server's own count whenever the
response carries usage. Requests that share a non-zero ``prompt_hash`` get the same text, so prefix caching and
KV-aware routing see the sharing the workload describes.
"""
from __future__ import annotations

import logging

import numpy as np

from balanceroute.protocol.synthetic import synthetic_text
from balanceroute.protocol.tokenizer import TextTokenizer
from balanceroute.workload import Workload

log = logging.getLogger(__name__)


def prompt_texts(workload: Workload, *, tokenizer: TextTokenizer | None = None, seed: int = 0
                 ) -> tuple[list[str], np.ndarray]:
    """One prompt per request and its token length (the best count available before sending).

    The workload's own texts are used when it has them (lengths from the workload); otherwise synthetic text
    of ``prompt_len`` tokens, seeded by ``seed`` and, for a non-zero ``prompt_hash``, by the hash.
    """
    if workload.prompts is not None:
        return list(workload.prompts), workload.prompt_len.copy()
    rng = np.random.default_rng(seed)
    cache: dict[tuple[int, int], tuple[str, int]] = {}
    texts: list[str] = []
    lens = np.empty(len(workload), dtype=np.int64)
    for i, (h, length) in enumerate(zip(workload.prompt_hash.tolist(), workload.prompt_len.tolist())):
        if h and (h, length) in cache:
            text, n = cache[(h, length)]
        else:
            text, n = synthetic_text(length, np.random.default_rng([seed, h]) if h else rng, tokenizer)
            if h:
                cache[(h, length)] = (text, n)
        texts.append(text)
        lens[i] = n
    if tokenizer is not None and np.any(lens != workload.prompt_len):
        log.info("%d synthetic prompts could not hit their exact token length", int(np.sum(lens != workload.prompt_len)))
    return texts, lens
