"""How many more decode steps will each resident request stay? The predictors of the horizon policies.

A predictor answers, for every request in a :class:`RequestTable` and a cap K (= horizon + 1), an integer
k_i in [1, K]: the request is projected to be resident at the look-ahead steps h = 0 .. k_i - 1, i.e.
k_i = ceil(ĉ_i) with ĉ_i = E[min(R_i, K)], R_i the remaining output tokens. This is the paper's
ĉ = (1 - p_fin) * H + p_fin * μ_rem written as one expectation; it counts the current step (every resident
request is there at h = 0), which is what makes BR-H with H = 0 exactly BR-0.

- ``survival``: R from the online output-length distribution, conditioned on the request's age
  (:class:`SurvivalEstimator`): one gather from a per-age table.
- ``exact_match``: the lengths seen for the same ``prompt_hash`` (conditioned on the age the same way), falling
  back to ``survival`` for prompts never seen finishing, or whose every recorded length is already exceeded.
- ``oracle``: the true remaining length (``RequestTable.remaining``); the simulator only knows it.
"""
from __future__ import annotations

import numpy as np

from balanceroute.policies.base import RequestTable
from balanceroute.policies.survival import STEP_TOL, SurvivalEstimator

PREDICTORS = ("survival", "exact_match", "oracle")

_MASK64 = (1 << 64) - 1
_FIB64 = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: Fibonacci hashing spreads structured keys (1, 2, 3, ...)


class SurvivalPredictor:
    """ĉ from the output-length survival function conditioned on the age (tokens generated so far)."""

    name = "survival"

    def __init__(self, estimator: SurvivalEstimator, owner: str) -> None:
        self.estimator = estimator
        self.owner = owner

    def observe(self, output_len: int, prompt_hash: int = 0) -> None:
        self.estimator.observe(output_len)

    def steps(self, table: RequestTable, cap: int) -> np.ndarray:
        """k_i in [1, cap] for every resident request."""
        return self.estimator.steps_table(cap).take(table.generated, mode="clip")

    def new_steps(self, prompt_hash: np.ndarray | None, output_len: np.ndarray | None, count: int,
                  cap: int) -> np.ndarray:
        """k for ``count`` requests not yet started (age 0), e.g. the pool's waiting requests."""
        return np.full(count, self.estimator.steps_table(cap)[0], dtype=np.int64)

    def new_step(self, prompt_hash: int, output_len: int | None, cap: int) -> int:
        """k for one request arriving now: :meth:`new_steps` of one, without building arrays for it (it is on
        every on-arrival decision's path)."""
        return int(self.estimator.steps_table(cap)[0])

    def __repr__(self) -> str:
        return self.name


class ExactMatchPredictor(SurvivalPredictor):
    """ĉ from the output lengths recorded for the same prompt hash, else from the survival function."""

    name = "exact_match"

    def __init__(self, estimator: SurvivalEstimator, owner: str, table: PromptLengthTable | None = None) -> None:
        super().__init__(estimator, owner)
        self.table = PromptLengthTable() if table is None else table

    def observe(self, output_len: int, prompt_hash: int = 0) -> None:
        self.estimator.observe(output_len)
        self.table.observe(prompt_hash, output_len)

    def steps(self, table: RequestTable, cap: int) -> np.ndarray:
        base = super().steps(table, cap)
        if table.prompt_hash is None or len(table) == 0:
            return base
        matched, found = self.table.expected_steps(table.prompt_hash, table.generated, cap)
        return np.where(found, matched, base)

    def new_steps(self, prompt_hash, output_len, count, cap):
        base = super().new_steps(prompt_hash, output_len, count, cap)
        if prompt_hash is None or count == 0:
            return base
        matched, found = self.table.expected_steps(np.asarray(prompt_hash, dtype=np.int64),
                                                   np.zeros(count, dtype=np.int64), cap)
        return np.where(found, matched, base)

    def new_step(self, prompt_hash, output_len, cap):
        return int(self.new_steps(np.array([prompt_hash], dtype=np.int64), None, 1, cap)[0])


class OraclePredictor(SurvivalPredictor):
    """ĉ from the true remaining length: an upper bound on what prediction can buy (simulator only)."""

    name = "oracle"

    def steps(self, table: RequestTable, cap: int) -> np.ndarray:
        remaining = table.remaining
        if remaining is None or np.isnan(remaining).any():
            missing = len(table) if remaining is None else int(np.isnan(remaining).sum())
            raise ValueError(
                f"{self.owner}: predictor 'oracle' needs the true remaining output length of every resident "
                f"request, which only the simulator knows; {missing} of {len(table)} requests have none "
                "(RequestTable.remaining is NaN). Use predictor='survival' or 'exact_match' on a live backend.")
        return np.clip(remaining, 1, cap).astype(np.int64)

    def new_steps(self, prompt_hash, output_len, count, cap):
        if output_len is None:
            raise ValueError(f"{self.owner}: predictor 'oracle' needs the true output length of new requests "
                             "(output_len), which only the simulator knows")
        return np.clip(np.asarray(output_len), 1, cap).astype(np.int64)

    def new_step(self, prompt_hash, output_len, cap):
        return int(self.new_steps(None, output_len, 1, cap))


def make_predictor(kind: str, estimator: SurvivalEstimator, owner: str) -> SurvivalPredictor:
    """The predictor named ``kind`` (one of :data:`PREDICTORS`) reading ``estimator``."""
    return {"survival": SurvivalPredictor, "exact_match": ExactMatchPredictor,
            "oracle": OraclePredictor}[kind](estimator, owner)


class PromptLengthTable:
    """The last ``samples`` output lengths of up to 2**``bits`` prompt hashes, for exact-match prediction.

    A direct-mapped table: a hash owns the entry it maps to until a different hash mapping there finishes
    (newer prompts evict older ones), so memory stays bounded however many distinct prompts pass, updates are
    O(1) and a lookup for N requests is a handful of vectorised passes. Hash 0 means "unknown" and is ignored.
    """

    def __init__(self, bits: int = 16, samples: int = 8) -> None:
        self.bits = bits
        self.samples = samples
        size = 1 << bits
        self._keys = np.zeros(size, dtype=np.int64)
        # (samples, size), 0 = no sample (a length of 0 never outlives any age, so it predicts nothing either).
        # A lookup gathers columns, so the per-request axis is the long inner one.
        self._lens = np.zeros((samples, size), dtype=np.int64)
        self._next = np.zeros(size, dtype=np.int64)

    def _slot(self, prompt_hash: int) -> int:
        return ((prompt_hash & _MASK64) * _FIB64 & _MASK64) >> (64 - self.bits)

    def _slots(self, hashes: np.ndarray) -> np.ndarray:
        mixed = hashes.astype(np.uint64) * np.uint64(_FIB64)  # wraps modulo 2^64, as _slot does
        return (mixed >> np.uint64(64 - self.bits)).astype(np.int64)

    def observe(self, prompt_hash: int, output_len: int) -> None:
        if prompt_hash == 0:
            return
        i = self._slot(int(prompt_hash))
        if self._keys[i] != prompt_hash:
            self._keys[i] = prompt_hash
            self._lens[:, i] = 0
            self._next[i] = 0
        self._lens[self._next[i] % self.samples, i] = output_len
        self._next[i] += 1

    def lengths(self, prompt_hash: int) -> np.ndarray:
        """Recorded (non-zero) output lengths of ``prompt_hash``, in no particular order."""
        i = self._slot(int(prompt_hash))
        if prompt_hash == 0 or self._keys[i] != prompt_hash:
            return np.zeros(0, dtype=np.int64)
        column = self._lens[:, i]
        return column[column > 0]

    def expected_steps(self, hashes: np.ndarray, ages: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """(k, found): k = ceil(mean over recorded lengths o > a of min(o - a, cap)), per request.

        ``found`` is False where the hash is unknown or no recorded length exceeds the age.
        """
        slots = self._slots(hashes)
        remaining = np.take(self._lens, slots, axis=1)
        remaining -= ages  # (samples, N); <= 0 for samples already outlived and for empty ones
        count = (remaining > 0).sum(axis=0)
        total = np.clip(remaining, 0, cap).sum(axis=0)
        steps = np.clip(np.ceil(total / np.maximum(count, 1) - STEP_TOL), 1, cap).astype(np.int64)
        found = (self._keys[slots] == hashes) & (hashes != 0) & (count > 0)
        return steps, found
