"""Async load generator for OpenAI-compatible servers, with ``vllm bench serve``-compatible results.

Entry points for live backends::

    result = await run_benchmark("http://127.0.0.1:8000/v1/completions", workload, model="m")
    result = benchmark("http://127.0.0.1:8000/v1/completions", workload, model="m")   # sync wrapper
    result.summary, result.requests          # -> result.json / requests.parquet (write_result)

Modules: :mod:`.endpoint` (one request: body, SSE parsing, token counts and times, error classes),
:mod:`.prompts` (prompt texts), :mod:`.runner` (arrival schedule, concurrency,
warm-up, interruption), :mod:`.result` (records, summary, files), :mod:`.cli` (``balanceroute bench``).
See docs/bench.md.
"""
from __future__ import annotations

import asyncio
from typing import Any

from balanceroute.bench.endpoint import ERROR_CLASSES, endpoint_kind
from balanceroute.bench.result import BenchResult, write_result
from balanceroute.bench.runner import run_benchmark
from balanceroute.workload import Workload

__all__ = ["ERROR_CLASSES", "BenchResult", "benchmark", "endpoint_kind", "run_benchmark", "write_result"]


def benchmark(target_url: str, workload: Workload, **kwargs: Any) -> BenchResult:
    """:func:`run_benchmark` in a fresh event loop, for synchronous callers (same arguments)."""
    return asyncio.run(run_benchmark(target_url, workload, **kwargs))
