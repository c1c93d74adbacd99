"""Synthetic text of a requested token length, for prompts of traces that carry only lengths (Azure's).

The text is common English words, which most BPE vocabularies hold as one token each. Without a tokenizer it is
one word per token, and that is the rule the emulator counts text by and writes its generated tokens in
(:data:`WORDS`), so a benchmark run against the emulator agrees on every length. With a tokenizer the length is
exact: the text is encoded, cut to length, decoded and re-checked.
"""
from __future__ import annotations

import numpy as np

from balanceroute.protocol.tokenizer import TextTokenizer

#: The words synthetic text is drawn from, one token each under the word rule.
WORDS = np.array([
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by", "at", "this",
    "from", "have", "or", "are", "not", "but", "an", "they", "which", "one", "you", "were", "all", "we", "her", "she",
    "there", "would", "their", "will", "when", "who", "him", "been", "has", "more", "if", "no", "out", "do", "so",
    "can", "what", "up", "said", "about", "other", "into", "than", "its", "time", "only", "could", "new", "them",
    "man", "some", "these", "then", "two", "first", "may", "any", "like", "now", "my", "such", "make", "over", "our",
    "even", "most", "me", "after", "also", "made", "many", "did", "must", "before", "back", "see", "through", "way",
    "where", "get", "much", "go", "well", "your", "know", "should", "down", "work", "year", "because", "come",
    "people", "just", "say", "each", "those", "take", "day", "good", "how", "long", "very",
])
_FIT_ROUNDS = 6  # encode/decode rounds to hit an exact token length


def synthetic_text(num_tokens: int, rng: np.random.Generator, tokenizer: TextTokenizer | None = None
                   ) -> tuple[str, int]:
    """Text of ``num_tokens`` tokens (exact with a tokenizer when reachable, else approximate) and its length
    as counted by the tokenizer (``num_tokens`` without one)."""
    text = " ".join(WORDS[rng.integers(len(WORDS), size=num_tokens)])
    if tokenizer is None:
        return text, num_tokens
    ids = list(tokenizer.encode(text))[:num_tokens]
    n = len(ids)
    for _ in range(_FIT_ROUNDS):
        text = tokenizer.decode(ids)
        n = len(tokenizer.encode(text))
        if n == num_tokens:
            break
        if n > num_tokens:
            ids = ids[: len(ids) - (n - num_tokens)]
        else:
            more = " ".join(WORDS[rng.integers(len(WORDS), size=num_tokens - n)])
            ids += list(tokenizer.encode(" " + more))[: num_tokens - n]
    return text, n
