"""The key of a prompt: one integer, equal wherever the same prompt is seen, that exact-match predictors learn by.

A learning policy remembers output lengths per prompt key (``prompt_hash``), so a key must name the same prompt
the same way in the simulator (the workload's texts), the routing proxy and the emulator (request bodies) and the
vLLM plugin (token ids); a hash that differed between them would make each see a different set of prompts. A
prompt is keyed by what carries it: its text (UTF-8), or its token ids (64-bit little-endian), through BLAKE2b,
which unlike Python's ``hash`` is the same in every process. Text and token ids of one prompt differ in key: a
router that sees only one of them cannot know the other without the model's tokenizer.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def prompt_hash(prompt: str | Sequence[str] | Sequence[int] | None) -> int:
    """A stable 63-bit key of a prompt (it fits int64 arrays), never 0 for a prompt: 0 means "no prompt".

    ``prompt`` is the text, its text parts (a chat's message contents; keyed as the text of those parts joined
    by newlines, which is how the routing proxy reads a chat), or its token ids.
    """
    if prompt is None or len(prompt) == 0:
        return 0
    if isinstance(prompt, str):
        data = prompt.encode("utf-8")
    elif isinstance(prompt[0], str):
        data = "\n".join(prompt).encode("utf-8")
    else:
        data = np.asarray(prompt, dtype="<i8").tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1 or 1
