"""Request streams: what arrives, when, and how long it is.

A :class:`Workload` is columnar (numpy arrays, one row per request, sorted by arrival) so that a million
synthetic requests cost a few arrays rather than a million objects. The simulator, the benchmark client and the
experiments all take their requests from here, so a study can swap a real trace for a synthetic stream (or
re-time a trace to a different rate) without touching the backend.

One module per job, as vLLM's benchmark datasets are organised; this package's namespace is the interface
(Hydra configs name loaders as ``balanceroute.workload.<loader>``):

- :mod:`~balanceroute.workload.base`: the :class:`Workload` type, :class:`WorkloadError` and the argument
  checks every source shares.
- :mod:`~balanceroute.workload.arrivals`: :func:`arrival_times`, Poisson / gamma-burstiness / all-at-once
  arrivals, as ``vllm bench serve`` draws them.
- :mod:`~balanceroute.workload.azure`: :func:`load_azure_trace`, Azure-style CSV traces
  (``TIMESTAMP, ContextTokens, GeneratedTokens``), replayed on their own timestamps or re-timed to a rate.
- :mod:`~balanceroute.workload.sharegpt`: :func:`load_sharegpt`, ShareGPT JSON conversations (prompt texts
  kept for live backends).
- :mod:`~balanceroute.workload.generated`: :func:`synthetic`, heavy-tailed lengths whose defaults match the
  Azure 2023 conversation trace.

Conventions shared by every source:

- **Length caps drop, never clip.** A request whose prompt is longer than ``max_prompt_len`` or whose output is
  longer than ``max_output_len`` is left out (trace rows and conversations are skipped; synthetic lengths are
  drawn from the distribution truncated at the cap). Dropping keeps every request's prompt text and length in
  agreement, which clipping could not do for real prompts.
- ``num_requests`` counts requests *after* the caps; asking for more than the source holds is an error.
- **Everything is seeded.** Randomness comes from ``np.random.default_rng`` streams derived from ``seed``;
  arrivals and lengths use separate streams, so changing the rate of a synthetic workload keeps its lengths.
- Bad input raises one :class:`WorkloadError` (a ``ValueError``) naming the file, the row and what is valid.
"""
from balanceroute.workload.arrivals import arrival_times
from balanceroute.workload.azure import CONTEXT_TOKENS, GENERATED_TOKENS, TIMESTAMP, load_azure_trace
from balanceroute.workload.base import Workload, WorkloadError
from balanceroute.workload.generated import (
    AZURE_CONV_OUTPUT_MEAN,
    AZURE_CONV_OUTPUT_SIGMA,
    AZURE_CONV_PROMPT_MEAN,
    AZURE_CONV_PROMPT_SIGMA,
    DISTRIBUTIONS,
    synthetic,
)
from balanceroute.workload.sharegpt import CHARS_PER_TOKEN, Tokenizer, load_sharegpt

__all__ = [
    "AZURE_CONV_OUTPUT_MEAN", "AZURE_CONV_OUTPUT_SIGMA", "AZURE_CONV_PROMPT_MEAN", "AZURE_CONV_PROMPT_SIGMA",
    "CHARS_PER_TOKEN", "CONTEXT_TOKENS", "DISTRIBUTIONS", "GENERATED_TOKENS", "TIMESTAMP", "Tokenizer", "Workload",
    "WorkloadError", "arrival_times", "load_azure_trace", "load_sharegpt", "synthetic",
]
