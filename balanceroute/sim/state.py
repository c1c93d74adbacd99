"""Per-request state of a simulation, columnar, and the small growable buffers the engine records into.

Requests are numbered internally in the order they reach the DP router: client arrival order (in a disaggregated
deployment too, as the prefill pool is FIFO: :mod:`balanceroute.sim.prefill`). A request that is running lives in
its step group's running table (:mod:`balanceroute.sim.running`), which holds the hot counters; they are written back
here when it leaves the table (finished, preempted, failed).
"""
from __future__ import annotations

import numpy as np

# request status codes
PENDING, POOLED, QUEUED, RUNNING, COMPLETED, FAILED = range(6)
STATUS_NAMES = {PENDING: "unfinished", POOLED: "unfinished", QUEUED: "unfinished", RUNNING: "unfinished",
                COMPLETED: "completed", FAILED: "failed"}
# error codes
NO_ERROR, TIMEOUT, KV_CAPACITY, ABORTED = range(4)
ERROR_NAMES = ("", "timeout", "kv_capacity", "aborted")


#: Per-request columns that start at a constant, as (dtype, initial value); ``computed`` and ``needs_prefill``
#: depend on the deployment shape (:meth:`RequestState._initial_progress`).
_CONSTANT_COLUMNS = {
    "status": (np.int8, PENDING), "error": (np.int8, NO_ERROR), "worker": (np.int64, -1), "slot": (np.int64, -1),
    "generated": (np.int64, 0), "first_token": (np.float64, np.nan), "last_token": (np.float64, np.nan),
    "finish": (np.float64, np.nan), "preemptions": (np.int64, 0),
}
#: Columns given per request when it is added.
_GIVEN_COLUMNS = ("request_id", "arrival", "client_arrival", "prompt", "output", "prompt_hash")


class RequestState:
    """Columnar state of every request (index = internal request number).

    - ``arrival``: when the request reaches the DP router (when disaggregated: when its prefill ends,
      :func:`balanceroute.sim.prefill.prefill_completion`); ``client_arrival``: when the client sent it
      (latencies are measured from it).
    - ``generated`` j and ``computed`` c: output tokens so far and tokens whose KV is computed; a request's
      tokens are its prompt plus its generated tokens, and a step that computes its last uncomputed token samples
      the next one (vLLM V1's unified prefill/decode view).
    - ``needs_prefill``: the request's next admission computes more than one token (a colocated prompt or a
      recompute after preemption), so its tokens are charged at the prefill rate p.

    A simulation knows its requests up front and builds the state from arrays; a live engine
    (:mod:`balanceroute.emulate`) learns of requests one at a time: it starts from :meth:`empty` and calls
    :meth:`append`, and the columns double their capacity when full (``n`` counts the requests; the columns may
    be longer).
    """

    def __init__(self, order: np.ndarray, arrival: np.ndarray, client_arrival: np.ndarray, prompt: np.ndarray,
                 output: np.ndarray, prompt_hash: np.ndarray, *, disaggregated: bool) -> None:
        n = len(order)
        self.n = n
        self.disaggregated = disaggregated
        self.request_id = order
        self.arrival = arrival
        self.client_arrival = client_arrival
        self.prompt = prompt
        self.output = output
        self.prompt_hash = prompt_hash
        for name, (dtype, value) in _CONSTANT_COLUMNS.items():
            setattr(self, name, np.full(n, value, dtype=dtype))
        self.computed, self.needs_prefill = self._initial_progress(prompt)

    def _initial_progress(self, prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``computed`` and ``needs_prefill`` of new requests with these prompt lengths.

        Disaggregated: the prompt's KV arrives computed except its last token, which the decode worker computes to
        sample the first output token (vLLM recomputes the last token of a full prefix hit to get logits).
        """
        if self.disaggregated:
            return prompt - 1, np.zeros(prompt.shape, dtype=bool)
        return np.zeros(prompt.shape, dtype=np.int64), np.ones(prompt.shape, dtype=bool)

    @classmethod
    def empty(cls, capacity: int = 1024, *, disaggregated: bool = False) -> RequestState:
        """No requests yet, room for ``capacity`` before the first doubling."""
        state = cls(*(np.zeros(capacity, dtype=np.float64 if name.endswith("arrival") else np.int64)
                      for name in _GIVEN_COLUMNS), disaggregated=disaggregated)
        state.n = 0
        return state

    def append(self, arrival: float, prompt: int, output: int, prompt_hash: int = 0,
               client_arrival: float | None = None) -> int:
        """Add one request (its id is its index, which it returns); doubles the columns when they are full."""
        r = self.n
        if r == len(self.status):
            self._grow()
        self.request_id[r] = r
        self.arrival[r] = arrival
        self.client_arrival[r] = arrival if client_arrival is None else client_arrival
        self.prompt[r] = prompt
        self.output[r] = output
        self.prompt_hash[r] = prompt_hash
        for name, (_, value) in _CONSTANT_COLUMNS.items():
            getattr(self, name)[r] = value
        computed, needs_prefill = self._initial_progress(np.array([prompt], dtype=np.int64))
        self.computed[r], self.needs_prefill[r] = computed[0], needs_prefill[0]
        self.n = r + 1
        return r

    def _grow(self) -> None:
        size = max(16, 2 * len(self.status))
        for name in (*_GIVEN_COLUMNS, *_CONSTANT_COLUMNS, "computed", "needs_prefill"):
            old = getattr(self, name)
            new = np.zeros(size, dtype=old.dtype)
            new[:old.size] = old
            setattr(self, name, new)


class WeightedSamples:
    """A (value, weight) sample list: inter-token gaps, each standing for ``weight`` equal gaps.

    Samples come a few at a time (a stretch's step lengths, once per request decoding in them), so they are kept
    as the arrays given and joined ``batch`` additions at a time: adding costs a list append, not array copies, and
    the arrays given (views of plans' step lengths) are let go once joined.
    """

    def __init__(self, batch: int = 4096) -> None:
        self.batch = batch
        self._values: list[np.ndarray] = []  # added since the last join
        self._weights: list[int] = []
        self._joined: list[tuple[np.ndarray, np.ndarray]] = []  # (values, weights) of each join

    def add(self, values: np.ndarray, weight: int) -> None:
        """Samples ``values`` (not modified afterwards: they are kept as given), each of weight ``weight``."""
        self._values.append(values)
        self._weights.append(weight)
        if len(self._values) >= self.batch:
            self._join()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        self._join()
        if not self._joined:
            return np.empty(0), np.empty(0, dtype=np.int64)
        self._joined = [(np.concatenate([v for v, _ in self._joined]), np.concatenate([w for _, w in self._joined]))]
        return self._joined[0]

    def _join(self) -> None:
        if self._values:
            counts = [len(v) for v in self._values]
            self._joined.append((np.concatenate(self._values),
                                 np.repeat(np.array(self._weights, dtype=np.int64), counts)))
            self._values, self._weights = [], []
