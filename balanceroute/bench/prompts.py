"""Prompt texts for live runs: the workload's own texts, or synthetic text of a requested token length.

Traces such as Azure's carry only lengths, so the client writes a prompt of the requested number of tokens.
With the model's tokenizer the length is exact (text is encoded, cut to length, decoded and re-checked); without
one it is approximate: one common English word per token, which most BPE vocabularies hold as one token each.
Either way the prompt length recorded for a request is the server's own count whenever the response carries
usage. Requests that share a non-zero ``prompt_hash`` get the same text, so prefix caching and KV-aware routing
see the sharing the workload describes. A tokenizer is optional: ``tokenizers`` (a directory holding
``tokenizer.json``) or ``transformers`` (any name ``AutoTokenizer`` resolves).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from balanceroute.workload import Workload

log = logging.getLogger(__name__)

_WORDS = np.array((
    "the of and to in is that for it as with was on be by at this from have or are not but an they which one "
    "you were all we her she there would their will when who him been has more if no out do so can what up "
    "said about other into than its time only could new them man some these then two first may any like now "
    "my such make over our even most me after also made many did must before back see through way where get "
    "much go well your know should down work year because come people just say each those take day good how "
    "long very").split())
_FIT_ROUNDS = 6  # encode/decode rounds to hit an exact token length


class TextTokenizer(Protocol):
    """Encodes without special tokens and decodes; what :func:`load_tokenizer` returns."""

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class _FastTokenizer:
    """A ``tokenizers.Tokenizer`` (from ``tokenizer.json``) behind :class:`TextTokenizer`."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer
        self._tok = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


class _HFTokenizer:
    """A ``transformers`` tokenizer behind :class:`TextTokenizer`."""

    def __init__(self, name: str) -> None:
        from transformers import AutoTokenizer
        self._tok = AutoTokenizer.from_pretrained(name)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


def load_tokenizer(name_or_path: str | Path) -> TextTokenizer:
    """The tokenizer in a local directory (``tokenizer.json``, via ``tokenizers``) or by ``transformers`` name.

    Raises ValueError naming what is missing when neither library can load it.
    """
    path = Path(name_or_path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.name == "tokenizer.json" and file.is_file():
        try:
            return _FastTokenizer(file)
        except ImportError:
            pass
    try:
        return _HFTokenizer(str(name_or_path))
    except ImportError:
        raise ValueError(f"cannot load tokenizer {str(name_or_path)!r}: install 'transformers', or 'tokenizers' "
                         f"for a directory holding tokenizer.json") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load tokenizer {str(name_or_path)!r}: {exc}") from None


def synthetic_text(num_tokens: int, rng: np.random.Generator, tokenizer: TextTokenizer | None = None
                   ) -> tuple[str, int]:
    """Text of ``num_tokens`` tokens (exact with a tokenizer when reachable, else approximate) and its length
    as counted by the tokenizer (``num_tokens`` without one)."""
    text = " ".join(_WORDS[rng.integers(len(_WORDS), size=num_tokens)])
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
            more = " ".join(_WORDS[rng.integers(len(_WORDS), size=num_tokens - n)])
            ids += list(tokenizer.encode(" " + more))[: num_tokens - n]
    return text, n


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
