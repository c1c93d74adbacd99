"""The one definition of run metrics, shared by the simulator and the live benchmark client.

Every backend reduces a run to a per-request record frame (:data:`REQUEST_COLUMNS`, built with
:func:`records_frame`) plus, where it has them, inter-token gaps and per-step balance figures; :func:`summarize`
turns those into a :class:`Summary`, whose ``as_dict()`` is the result record. Keeping this in one package is
what makes a simulated run and a real one comparable: same definitions, same key names as
``vllm bench serve --save-result`` wherever the concept is the same (``completed``, ``output_throughput``,
``mean_ttft_ms``, ``p99_tpot_ms``, ...), so results can be compared with vLLM's own tool directly. Definitions
(ALGORITHMS.md section 4):

- TTFT = first token - arrival; E2EL = finish (last token) - arrival;
- TPOT = (E2EL - TTFT) / (output_len - 1), only for requests with output_len > 1;
- ITL = gaps between consecutive tokens of a request (given as samples, optionally weighted);
- latency statistics, token totals and throughputs count **completed requests only**, as vLLM does;
- balance: imbalance I(k) = G*max_g L_g - sum_g L_g and the max-min spread averaged over steps, barrier idle
  fraction = sum_k sum_g (T_k - t_g) / (G * sum_k T_k) (:class:`BalanceAccumulator`), preemptions, per-worker
  request and token counts.

One module per job; this package's namespace is the interface:

- :mod:`~balanceroute.metrics.records`: the per-request record schema and :func:`records_frame`;
- :mod:`~balanceroute.metrics.latency`: :class:`LatencyStats`, :func:`weighted_percentiles`,
  :func:`itl_from_token_times`;
- :mod:`~balanceroute.metrics.balance`: :func:`per_worker_counts` and :class:`BalanceAccumulator`;
- :mod:`~balanceroute.metrics.summary`: :class:`Summary` and :func:`summarize`.
"""
from balanceroute.metrics.balance import BalanceAccumulator, per_worker_counts
from balanceroute.metrics.latency import (
    DEFAULT_PERCENTILES,
    LATENCY_METRICS,
    LatencyStats,
    itl_from_token_times,
    weighted_percentiles,
)
from balanceroute.metrics.records import (
    REQUEST_COLUMNS,
    REQUEST_DEFAULTS,
    REQUEST_DTYPES,
    STATUS_DTYPE,
    STATUSES,
    records_frame,
)
from balanceroute.metrics.summary import SLO_METRICS, Summary, summarize

__all__ = [
    "DEFAULT_PERCENTILES", "LATENCY_METRICS", "REQUEST_COLUMNS", "REQUEST_DEFAULTS", "REQUEST_DTYPES", "SLO_METRICS",
    "STATUSES", "STATUS_DTYPE", "BalanceAccumulator", "LatencyStats", "Summary", "itl_from_token_times",
    "per_worker_counts", "records_frame", "summarize", "weighted_percentiles",
]
