"""Keep secrets out of what a run writes: the values of secret-looking environment variables, and values stored
under secret-looking keys, are replaced by a placeholder before a result or a tracker config leaves the process.

Why a scrubber and not just care: a configuration may pull values from the environment (``${oc.env:HF_TOKEN}`` in
a live backend's config), and the resolved configuration is copied into result.json and the W&B run config. The
environment names its secrets by convention (``WANDB_API_KEY``, ``HF_TOKEN``, ``OPENAI_API_KEY``, ...), so their
values are known and can be searched for wherever a string is about to be written.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"

#: Environment variables whose values are treated as secrets (WANDB_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...).
SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_?KEY|AUTH)", re.IGNORECASE)
#: Config keys whose string values are secrets: the name must *end* in the secret word, so ``hf_token`` and
#: ``api_key`` match while ``tokenizer`` and ``max_num_batched_tokens`` do not.
SECRET_KEY = re.compile(r"(^|[_.-])(api_?key|token|secret|password|passwd|credentials?|private_?key)$",
                        re.IGNORECASE)

#: Shorter values are not searched for: "1" or "true" in a TOKEN variable would otherwise blank half a config.
MIN_SECRET_LEN = 8


def secret_values(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The values of the secret-named variables of ``environ`` (default: ``os.environ``), longest first so that a
    secret containing another is replaced whole."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LEN}
    return tuple(sorted(found, key=len, reverse=True))


def redact(value: Any, secrets: tuple[str, ...] | None = None) -> Any:
    """``value`` (JSON-like data: mappings, lists, scalars) with every occurrence of a secret in a string replaced
    by :data:`REDACTED`, and every non-empty value under a secret-named key replaced whole.

    ``secrets`` defaults to :func:`secret_values` of the current environment. Non-string scalars are returned as
    they are; mappings and sequences are copied.
    """
    secrets = secret_values() if secrets is None else secrets
    return _redact(value, secrets)


def _redact(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, Mapping):
        return {k: REDACTED if _secret_key(k, v) else _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v, secrets) for v in value]
    return value


def _secret_key(key: Any, value: Any) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY.search(key)) and isinstance(value, str) and value != ""
