"""When each request's prompt KV is ready in a prefill-decode disaggregated deployment.

The prefill instances are modelled as one FIFO pool. Request i (client arrival c_i, prompt s_i tokens, requests in
client-arrival order) finishes its prefill at

    done_i = max(c_i + s_i / min(r, R), done_{i-1} + s_i / R)        (done_{-1} = -inf)

- ``r`` (``external_prefill_tokens_per_s``): the speed one request's prefill runs at, so no prompt is ready before
  ``c_i + s_i / r``; capped at R, as one request cannot be prefilled faster than the whole pool;
- ``R`` (``prefill_pool_tokens_per_s``): the pool's total throughput; a request cannot finish less than its own
  work ``s_i / R`` after the one before it, so a busy period drains at most R tokens/s (with the cap, the requests
  k..i of a busy period take at least ``sum s / R`` from ``c_k``). ``None`` (or ``inf``) = an ample pool:
  ``done_i = max(c_i + s_i / r, done_{i-1})``.

Why FIFO: an earlier model released each request at ``c_i + s_i / r`` independently and sorted by that time, so
inside any short window the decode router saw requests in order of prompt length (at an infinite request rate the
whole run became sorted by prompt length, which flatters JSQ-like policies). Prefill servers schedule first come,
first served, and with chunked prefill a long prompt being chunked takes the step's token budget first, so
completions roughly keep the client order; the model keeps it exactly: requests reach the decode side in client
order and a short prompt behind a long one waits for it (head-of-line blocking). Reordering across several prefill
instances is deliberately not modelled.

Vectorised form: with cumulative work W_i = sum_{k<=i} s_k / R, the recurrence becomes
``done_i - W_i = max(c_i + s_i / r' - W_i, done_{i-1} - W_{i-1})`` (r' = min(r, R)), so
``done = W + cummax(c + s / r' - W)``.
"""
from __future__ import annotations

import math

import numpy as np


def prefill_completion(client_s: np.ndarray, prompt_len: np.ndarray, request_rate: float,
                       pool_rate: float | None = None) -> np.ndarray:
    """Prefill completion time of each request (seconds; non-decreasing), requests given in client-arrival order.

    ``request_rate`` is r and ``pool_rate`` R of the module docstring (tokens/s; ``None`` or ``inf``: ample pool).
    """
    client = np.asarray(client_s, dtype=np.float64)
    tokens = np.asarray(prompt_len, dtype=np.float64)
    if client.shape != tokens.shape or client.ndim != 1:
        raise ValueError(f"client_s and prompt_len must be 1-D arrays of one length; got shapes {client.shape} "
                         f"and {tokens.shape}")
    if pool_rate is None or pool_rate == math.inf:
        return np.maximum.accumulate(client + tokens / request_rate)
    alone = client + tokens / min(request_rate, pool_rate)
    work = np.cumsum(tokens / pool_rate)
    return work + np.maximum.accumulate(alone - work)
