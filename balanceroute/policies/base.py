"""The contract between routing policies and the backends that run them.

A policy sees a :class:`ClusterSnapshot` (per-worker numpy arrays, plus per-request arrays for horizon
policies) and answers with a worker index. It never does I/O and never knows which backend asked: the
simulator, the HTTP proxy and the vLLM plugin all build snapshots through :mod:`balanceroute.load` and call
the same two methods, :meth:`Policy.choose` (on-arrival dispatch) and :meth:`Policy.assign` (pool mode).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

#: Free slots reported for a worker whose batch size is not limited (``from_loads`` default).
UNLIMITED_SLOTS = np.iinfo(np.int64).max // 4


@functools.cache
def _unlimited_slots(num_workers: int) -> np.ndarray:
    """The free slots of ``num_workers`` workers without a batch limit: built once per size rather than on every
    decision, and read-only, as snapshots share it (pool rounds work on copies, :meth:`ClusterSnapshot.copy`)."""
    slots = np.full(num_workers, UNLIMITED_SLOTS, dtype=np.int64)
    slots.flags.writeable = False
    return slots


@dataclass
class RequestTable:
    """Per-request arrays of the requests resident on the workers (routed and not finished).

    Horizon policies (br_h, phi, fast_phi, bf_io) project these forward; everything else ignores them.
    Row ``i`` is one request; all arrays have the same length N.

    - ``worker``: index of the worker holding the request.
    - ``prompt_len``: prompt tokens s_i.
    - ``generated``: output tokens produced so far j_i (the request's age in decode steps).
    - ``remaining``: true remaining output tokens where known (oracle predictor, simulator only), else NaN.
    - ``prompt_hash``: an integer key of the prompt (exact-match predictor), 0 where unknown.
    """

    worker: np.ndarray
    prompt_len: np.ndarray
    generated: np.ndarray
    remaining: np.ndarray | None = None
    prompt_hash: np.ndarray | None = None

    @property
    def load(self) -> np.ndarray:
        """KV load w_i = s_i + j_i of every request."""
        return self.prompt_len + self.generated

    def __len__(self) -> int:
        return len(self.worker)

    def appended(self, worker: int, prompt_len: float, prompt_hash: int = 0,
                 output_len: int | None = None) -> RequestTable:
        """A new table with one more request that has generated nothing yet."""
        n = len(self)
        remaining = np.full(n, np.nan) if self.remaining is None else self.remaining
        hashes = np.zeros(n, dtype=np.int64) if self.prompt_hash is None else self.prompt_hash
        return RequestTable(
            worker=np.append(self.worker, worker), prompt_len=np.append(self.prompt_len, prompt_len),
            generated=np.append(self.generated, 0),
            remaining=np.append(remaining, np.nan if output_len is None else output_len),
            prompt_hash=np.append(hashes, prompt_hash))

    def take(self, rows: np.ndarray) -> RequestTable:
        """The requests at ``rows``, in new arrays (a gather), so the table they came from may change after."""
        return RequestTable(
            worker=self.worker[rows], prompt_len=self.prompt_len[rows], generated=self.generated[rows],
            remaining=None if self.remaining is None else self.remaining[rows],
            prompt_hash=None if self.prompt_hash is None else self.prompt_hash[rows])

    @classmethod
    def empty(cls) -> RequestTable:
        z = np.zeros(0, dtype=np.int64)
        return cls(worker=z, prompt_len=z, generated=z, remaining=np.zeros(0), prompt_hash=z)


@dataclass
class ClusterSnapshot:
    """What a router knows about G workers at the moment of a decision.

    All per-worker arrays have length G. ``kv_load`` is in tokens (prompt plus generated tokens of every request
    the router sent there and that has not finished); ``kv_capacity`` is in tokens (``inf`` when unknown);
    ``kv_usage`` is the fraction of KV cache in use as the engine reports it (vLLM's ``kv_cache_usage``).

    ``eligible`` (optional boolean mask) restricts the choice, e.g. to workers with a free slot in pool mode.
    ``epoch`` identifies the statistics the snapshot was built from: a backend whose counts are refreshed
    periodically (vLLM's coordinator, every ~100 ms) keeps the same epoch between refreshes, so policies that
    bump counts optimistically (vllm_default) know when their bumps are superseded.
    """

    kv_load: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    inflight: np.ndarray
    free_slots: np.ndarray
    kv_capacity: np.ndarray
    kv_usage: np.ndarray
    requests: RequestTable | None = None
    eligible: np.ndarray | None = None
    epoch: int = 0
    #: Fields a policy may read, listed for users writing their own.
    FIELDS: ClassVar[tuple[str, ...]] = (
        "kv_load", "running", "waiting", "inflight", "free_slots", "kv_capacity", "kv_usage")

    @property
    def num_workers(self) -> int:
        return len(self.kv_load)

    @classmethod
    def from_loads(
        cls,
        kv_load: Sequence[float],
        *,
        running: Sequence[int] | None = None,
        waiting: Sequence[int] | None = None,
        inflight: Sequence[int] | None = None,
        free_slots: Sequence[int] | None = None,
        kv_capacity: Sequence[float] | float | None = None,
        kv_usage: Sequence[float] | None = None,
        requests: RequestTable | None = None,
        eligible: Sequence[bool] | None = None,
        epoch: int = 0,
    ) -> ClusterSnapshot:
        """Build a snapshot from per-worker loads; every other field gets a consistent default.

        running and waiting default to 0, inflight to running + waiting, free_slots to unlimited,
        kv_capacity to infinity, kv_usage to kv_load / kv_capacity (0 for infinite capacity).
        """
        load = np.asarray(kv_load, dtype=np.float64)
        if load.ndim != 1 or load.size == 0:
            raise ValueError(f"kv_load must be a non-empty 1-D sequence, got shape {load.shape}")
        if np.any(load < 0) or not np.all(np.isfinite(load)):
            raise ValueError(f"kv_load must be finite and >= 0, got {load.tolist()}")
        g = load.size

        def per_worker(name: str, value, default, dtype) -> np.ndarray:
            arr = np.full(g, default, dtype=dtype) if value is None else np.asarray(value, dtype=dtype)
            if arr.ndim == 0:
                arr = np.full(g, arr, dtype=dtype)
            if arr.shape != (g,):
                raise ValueError(f"{name} must have one value per worker ({g}), got shape {arr.shape}")
            return arr

        run = per_worker("running", running, 0, np.int64)
        wait = per_worker("waiting", waiting, 0, np.int64)
        infl = run + wait if inflight is None else per_worker("inflight", inflight, 0, np.int64)
        cap = per_worker("kv_capacity", kv_capacity, np.inf, np.float64)
        if kv_usage is None:
            usage = np.where(np.isfinite(cap), load / np.where(np.isfinite(cap), cap, 1.0), 0.0)
        else:
            usage = per_worker("kv_usage", kv_usage, 0.0, np.float64)
        return cls(
            kv_load=load,
            running=run,
            waiting=wait,
            inflight=infl,
            free_slots=per_worker("free_slots", free_slots, UNLIMITED_SLOTS, np.int64),
            kv_capacity=cap,
            kv_usage=usage,
            requests=requests,
            eligible=None if eligible is None else per_worker("eligible", eligible, True, bool),
            epoch=epoch,
        )

    @classmethod
    def from_counts(cls, kv_load: np.ndarray, running: np.ndarray, waiting: np.ndarray, *, kv_capacity: np.ndarray,
                    kv_usage: np.ndarray, max_num_seqs: int | None = None, requests: RequestTable | None = None,
                    epoch: int = 0) -> ClusterSnapshot:
        """A snapshot of a load tracker's per-worker arrays, as every routing decision takes one.

        On the decision's path, so cheap by design: nothing is checked or copied (the arrays are shared, read-only
        by convention), in-flight counts are running + waiting, and free slots ``max_num_seqs`` - in-flight
        (unlimited when None). :meth:`from_loads` is the checked way to build a snapshot by hand.
        """
        inflight = running + waiting
        if max_num_seqs is None:
            free = _unlimited_slots(len(kv_load))
        else:
            free = np.maximum(max_num_seqs - inflight, 0)
        return cls(kv_load=kv_load, running=running, waiting=waiting, inflight=inflight, free_slots=free,
                   kv_capacity=kv_capacity, kv_usage=kv_usage, requests=requests, epoch=epoch)

    def copy(self) -> ClusterSnapshot:
        """A deep copy whose arrays a pool-mode assignment may update in place."""
        return dataclasses.replace(
            self,
            **{name: getattr(self, name).copy() for name in self.FIELDS},
            eligible=None if self.eligible is None else self.eligible.copy(),
        )

    def open_workers(self) -> np.ndarray:
        """Workers a pool placement may use now: eligible ones with a free slot."""
        has_slot = self.free_slots > 0
        return has_slot if self.eligible is None else has_slot & self.eligible

    def place(self, worker: int, prompt_len: float, *, prompt_hash: int = 0, output_len: int | None = None) -> None:
        """Record in this snapshot that a request of ``prompt_len`` tokens was just sent to ``worker``.

        Pool-mode assignment calls it between placements so that later choices in the same round see the
        earlier ones (the request is counted as running, as it takes a free slot). With a request table the
        request is appended to it too (a new table: the snapshot it was copied from keeps its own), so horizon
        policies see it as well.
        """
        if self.requests is not None:
            self.requests = self.requests.appended(worker, prompt_len, prompt_hash, output_len)
        self.kv_load[worker] += prompt_len
        self.running[worker] += 1
        self.inflight[worker] += 1
        self.free_slots[worker] -= 1
        cap = self.kv_capacity[worker]
        if np.isfinite(cap):
            self.kv_usage[worker] = self.kv_load[worker] / cap


@dataclass(frozen=True)
class PendingRequests:
    """Requests waiting in the router's pool, oldest first (pool mode).

    ``prompt_len`` is required; ``prompt_hash`` and ``output_len`` (oracle, simulator only) are optional.
    """

    prompt_len: np.ndarray
    prompt_hash: np.ndarray | None = None
    output_len: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompt_len)


@dataclass
class Assignment:
    """Result of one pool-mode round: ``pending[index[k]]`` goes to worker ``worker[k]``, in that order."""

    index: list[int] = field(default_factory=list)
    worker: list[int] = field(default_factory=list)

    def add(self, index: int, worker: int) -> None:
        self.index.append(int(index))
        self.worker.append(int(worker))

    def __len__(self) -> int:
        return len(self.index)
