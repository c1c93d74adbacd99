"""Per-request state of a simulation, columnar, and the small growable buffers the engine records into.

Requests are numbered internally in the order they reach the DP router (arrival order; in a disaggregated
deployment, the order their prefill finishes). A request that is running lives in its step group's running table
(:mod:`balanceroute.sim.group`), which holds the hot counters; they are written back here when it leaves the
table (finished, preempted, failed).
"""
from __future__ import annotations

import numpy as np

# request status codes
PENDING, POOLED, QUEUED, RUNNING, COMPLETED, FAILED = range(6)
STATUS_NAMES = {PENDING: "unfinished", POOLED: "unfinished", QUEUED: "unfinished", RUNNING: "unfinished",
                COMPLETED: "completed", FAILED: "failed"}
# error codes
NO_ERROR, TIMEOUT, KV_CAPACITY = range(3)
ERROR_NAMES = ("", "timeout", "kv_capacity")


class RequestState:
    """Columnar state of every request (index = internal request number).

    - ``arrival``: when the request reaches the DP router (client arrival plus external prefill time when
      disaggregated); ``client_arrival``: when the client sent it (latencies are measured from it).
    - ``generated`` j and ``computed`` c: output tokens so far and tokens whose KV is computed; a request's
      tokens are its prompt plus its generated tokens, and a step that computes its last uncomputed token samples
      the next one (vLLM V1's unified prefill/decode view).
    - ``needs_prefill``: the request's next admission computes more than one token (a colocated prompt or a
      recompute after preemption), so its tokens are charged at the prefill rate p.
    """

    def __init__(self, order: np.ndarray, arrival: np.ndarray, client_arrival: np.ndarray, prompt: np.ndarray,
                 output: np.ndarray, prompt_hash: np.ndarray, *, disaggregated: bool) -> None:
        n = len(order)
        self.n = n
        self.request_id = order
        self.arrival = arrival
        self.client_arrival = client_arrival
        self.prompt = prompt
        self.output = output
        self.prompt_hash = prompt_hash
        self.status = np.full(n, PENDING, dtype=np.int8)
        self.error = np.zeros(n, dtype=np.int8)
        self.worker = np.full(n, -1, dtype=np.int64)
        self.slot = np.full(n, -1, dtype=np.int64)
        self.generated = np.zeros(n, dtype=np.int64)
        # disaggregated: the prompt's KV arrives computed except its last token, which the decode worker computes
        # to sample the first output token (vLLM recomputes the last token of a full prefix hit to get logits)
        self.computed = prompt - 1 if disaggregated else np.zeros(n, dtype=np.int64)
        self.needs_prefill = np.full(n, not disaggregated)
        self.first_token = np.full(n, np.nan)
        self.last_token = np.full(n, np.nan)  # kept across a preemption: the next token's gap starts there
        self.finish = np.full(n, np.nan)
        self.preemptions = np.zeros(n, dtype=np.int64)


class WeightedSamples:
    """A growable (value, weight) sample list: inter-token gaps, each standing for ``weight`` equal gaps."""

    def __init__(self, capacity: int = 4096) -> None:
        self.values = np.empty(capacity)
        self.weights = np.empty(capacity, dtype=np.int64)
        self.n = 0

    def add(self, values: np.ndarray | float, weights: np.ndarray | int) -> None:
        k = values.size if isinstance(values, np.ndarray) else 1
        end = self.n + k
        if end > self.values.size:
            size = max(2 * self.values.size, end)
            self.values = np.resize(self.values, size)
            self.weights = np.resize(self.weights, size)
        self.values[self.n:end] = values
        self.weights[self.n:end] = weights
        self.n = end

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.values[:self.n], self.weights[:self.n]
