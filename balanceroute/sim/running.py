"""The running requests of a step group, as a columnar table.

Every step touches every running request (each computes at least one token), so the hot counters live in one
int64 array with a row per field and a column per request, and a step advances them all with one vectorised add
instead of a loop over requests. The per-request state (:class:`~balanceroute.sim.state.RequestState`) is written
back when a request leaves the table (finished, preempted, failed).

Fields (rows): ``RID`` request index; ``W`` worker, local to the group (0 .. G-1); ``SLOT`` the load tracker's
slot; ``S`` prompt tokens; ``J`` generated tokens; ``C`` computed tokens (KV held); ``NREM`` generated minus
target output (minus the tokens remaining: 0 when done), kept next to ``J`` and ``C`` so one add to the slice
``J:NREM + 1`` advances all three; ``SEQ`` admission number (preemption takes the highest); ``PF`` still
prefilling (1) or decoding (0); ``CHUNK`` the prefill tokens it computes in the step being scheduled.
"""
from __future__ import annotations

import numpy as np

RID, W, SLOT, S, J, C, NREM, SEQ, PF, CHUNK = range(10)
FIELDS = 10


class RunningTable:
    """The running requests of ``num_workers`` workers: ``fields[:, :count]`` plus counts kept incrementally."""

    def __init__(self, num_workers: int, capacity: int = 64) -> None:
        self.fields = np.zeros((FIELDS, capacity), dtype=np.int64)
        self.count = 0
        self.per_worker = np.zeros(num_workers, dtype=np.int64)  # running requests of each worker
        self.prefilling = 0             # requests with PF set (0: every step is a pure decode step)
        self.without_first_token = 0    # requests that have not sampled an output token yet (J == 0)
        self.admissions = 0             # requests ever admitted: the next one's SEQ

    def add(self, columns: np.ndarray) -> None:
        """Append admitted requests, given as a (FIELDS x k) block; the caller counts them per worker."""
        k = columns.shape[1]
        end = self.count + k
        if end > self.fields.shape[1]:
            grown = np.zeros((FIELDS, max(2 * self.fields.shape[1], end)), dtype=np.int64)
            grown[:, :self.count] = self.fields[:, :self.count]
            self.fields = grown
        self.fields[:, self.count:end] = columns
        self.count = end

    def remove_completed(self, columns: np.ndarray, mask: np.ndarray) -> None:
        """Remove finished requests (``columns``; ``mask`` the same as a mask over the used columns). They have
        sampled tokens and are not prefilling, so only the per-worker counts change."""
        self.per_worker -= np.bincount(self.fields[W, columns], minlength=self.per_worker.size)
        self._drop(columns, mask)

    def remove(self, columns: np.ndarray, mask: np.ndarray) -> None:
        """Remove requests that leave unfinished (preempted, failed, aborted), as :meth:`remove_completed` but
        also out of the prefilling and first-token counts."""
        fields = self.fields
        self.prefilling -= int(fields[PF, columns].sum())
        self.without_first_token -= int((fields[J, columns] == 0).sum())
        self.remove_completed(columns, mask)

    def _drop(self, columns: np.ndarray, mask: np.ndarray) -> None:
        """Close the gaps the ``columns`` leave, keeping the order of the others (a single column, the common
        case, by shifting the ones after it)."""
        fields, n = self.fields, self.count
        if len(columns) == 1:
            c = int(columns[0])
            fields[:, c:n - 1] = fields[:, c + 1:n]
        elif len(columns):
            fields[:, :n - len(columns)] = fields[:, :n][:, ~mask]
        self.count = n - len(columns)
