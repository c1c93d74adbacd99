"""From request outcomes to the records frame, the summary and the run files.

The metrics themselves come from :mod:`balanceroute.metrics` (one definition for simulated and real runs);
this module only turns client observations into its inputs and adds what only a client knows: run settings
under ``vllm bench serve --save-result`` key names (``date``, ``backend``, ``model_id``, ``request_rate``,
``burstiness``, ``max_concurrency``, ...), the error classes, how output tokens were counted, the client's
own scheduling error (``*_arrival_error_ms``) and, with ``max_concurrency``, the client queue time
(``*_client_queue_time_ms``, as vLLM reports it).
"""
from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from balanceroute.bench.endpoint import Outcome, token_times
from balanceroute.metrics import DEFAULT_PERCENTILES, itl_from_token_times, records_frame, summarize
from balanceroute.results import write_run_files
from balanceroute.workload import Workload

#: Columns the client adds to :data:`balanceroute.metrics.REQUEST_COLUMNS` in requests.parquet.
EXTRA_COLUMNS = ("scheduled_s", "queue_s", "lateness_s", "token_count_source", "num_chunks", "error_detail")


@dataclass(frozen=True)
class RunInfo:
    """Settings and clock of one run, as the runner knew them."""

    target_url: str
    endpoint_type: str
    model: str
    stream: bool
    ignore_eos: bool
    max_concurrency: int | None
    warmup: int
    seed: int
    t0: float
    duration_s: float
    interrupted: bool
    workload_name: str = ""
    goodput_slo_ms: Mapping[str, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    request_id_prefix: str = ""
    stalled: bool = False  # ended by the stall watchdog (balanceroute.bench.progress)


@dataclass
class BenchResult:
    """A finished (or interrupted) run: ``summary`` (result.json content), ``requests`` (one row per request
    sent, :data:`balanceroute.metrics.REQUEST_COLUMNS` then :data:`EXTRA_COLUMNS`), ``token_times`` (per row,
    the run-clock time of each output token; empty unless completed and streamed) and ``texts`` (generated
    text per row, when kept)."""

    summary: dict[str, Any]
    requests: pd.DataFrame
    token_times: list[np.ndarray]
    texts: list[str] | None = None

    @property
    def interrupted(self) -> bool:
        return bool(self.summary.get("interrupted"))


def _ms_stats(name: str, seconds: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES
              ) -> dict[str, float]:
    """mean/median/std/pXX in ms of a client-side quantity (not a serving metric), NaN when empty."""
    if seconds.size == 0:
        keys = ["mean", "median", "std", *(f"p{p}" for p in percentiles), "max"]
        return {f"{k}_{name}_ms": math.nan for k in keys}
    ms = seconds * 1000
    out = {f"mean_{name}_ms": float(ms.mean()), f"median_{name}_ms": float(np.median(ms)),
           f"std_{name}_ms": float(ms.std())}
    out.update({f"p{p}_{name}_ms": float(v) for p, v in zip(percentiles, np.percentile(ms, percentiles))})
    out[f"max_{name}_ms"] = float(ms.max())
    return out


def _count_source(frame: pd.DataFrame) -> str:
    sources = set(frame.loc[frame["status"] == "completed", "token_count_source"])
    return sources.pop() if len(sources) == 1 else ("mixed" if sources else "none")


def build_result(outcomes: Sequence[Outcome | None], workload: Workload, prompt_lens: np.ndarray,
                 due: np.ndarray, release: np.ndarray, info: RunInfo) -> BenchResult:
    """Records, token times and summary of the requests that were sent (``outcomes[i]`` for request i; None or
    never sent when the run stopped before it). ``due``/``release`` are perf_counter times."""
    sent = [i for i, o in enumerate(outcomes) if o is not None and math.isfinite(o.sent)]
    outs = [outcomes[i] for i in sent]
    ids = np.asarray(sent, dtype=np.int64)
    t0 = info.t0
    sent_t = np.array([o.sent for o in outs], dtype=np.float64)
    finish = np.array([o.finish for o in outs], dtype=np.float64)
    first = np.array([o.chunk_times[0] if info.stream and o.chunk_times else math.nan for o in outs],
                     dtype=np.float64)
    output_len = np.array([o.output_len for o in outs], dtype=np.int64)
    prompt_len = np.array([o.prompt_tokens if o.prompt_tokens is not None else prompt_lens[i]
                           for i, o in zip(sent, outs)], dtype=np.int64)
    frame = records_frame(
        request_id=ids, worker=np.array([o.worker for o in outs], dtype=np.int64), arrival_s=sent_t - t0,
        first_token_s=first - t0, finish_s=finish - t0, prompt_len=prompt_len, output_len=output_len,
        target_output_len=workload.output_len[ids], status=[o.status for o in outs],
        error=[o.error for o in outs])
    frame["scheduled_s"] = due[ids] - t0
    frame["queue_s"] = release[ids] - due[ids]
    frame["lateness_s"] = sent_t - release[ids]
    frame["token_count_source"] = [o.token_count_source for o in outs]
    frame["num_chunks"] = np.array([len(o.chunk_times) for o in outs], dtype=np.int64)
    frame["error_detail"] = [o.error_detail for o in outs]

    completed = frame["status"].to_numpy() == "completed"
    times = [token_times(np.asarray(o.chunk_times) - t0, o.chunk_tokens or None, o.output_len)
             if ok and info.stream else np.zeros(0) for o, ok in zip(outs, completed)]
    summary = summarize(frame, duration_s=info.duration_s,
                        itl_s=itl_from_token_times([t for t, ok in zip(times, completed) if ok]),
                        goodput_slo_ms=info.goodput_slo_ms).as_dict()
    summary.update(_client_keys(frame, info, len(workload)))
    texts = ["".join(o.text_parts) for o in outs] if outs and outs[0].text_parts is not None else None
    return BenchResult(summary, frame, times, texts)


def _client_keys(frame: pd.DataFrame, info: RunInfo, num_prompts: int) -> dict[str, Any]:
    meta = dict(info.metadata)
    keys: dict[str, Any] = {
        "date": dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": info.endpoint_type,
        "backend": info.endpoint_type,
        "label": meta.pop("label", None),
        "model_id": info.model,
        "tokenizer_id": meta.pop("tokenizer_id", None),
        "num_prompts": num_prompts,
        "request_rate": meta.pop("request_rate", None),
        "burstiness": meta.pop("burstiness", None),
        "max_concurrency": info.max_concurrency,
        "target_url": info.target_url,
        "workload": info.workload_name,
        "stream": info.stream,
        "ignore_eos": info.ignore_eos,
        "seed": info.seed,
        "num_warmups": info.warmup,
        "interrupted": info.interrupted,
        "stalled": info.stalled,
        "request_id_prefix": info.request_id_prefix,
        "num_sent": len(frame),
        "token_count_source": _count_source(frame),
        "error_counts": dict(sorted(Counter(e for e in frame["error"] if e).items())),
    }
    if isinstance(keys["request_rate"], float) and math.isinf(keys["request_rate"]):
        keys["request_rate"] = "inf"  # as vLLM writes it
    keys.update(_ms_stats("arrival_error", frame["lateness_s"].to_numpy(dtype=np.float64)))
    if info.max_concurrency is not None:
        done = frame["status"].to_numpy() == "completed"
        keys.update(_ms_stats("client_queue_time", frame["queue_s"].to_numpy(dtype=np.float64)[done]))
    keys.update(meta)
    return keys


def detailed(result: BenchResult) -> dict[str, list]:
    """Per-request lists that ``vllm bench serve --save-detailed`` adds to its result file (seconds)."""
    req = result.requests
    arrival = req["arrival_s"].to_numpy(dtype=np.float64)
    done = (req["status"] == "completed").to_numpy()
    ttft = req["first_token_s"].to_numpy(dtype=np.float64) - arrival
    e2el = req["finish_s"].to_numpy(dtype=np.float64) - arrival
    return {
        "input_lens": req["prompt_len"].tolist(),
        "output_lens": np.where(done, req["output_len"], 0).tolist(),
        "ttfts": np.where(done, ttft, 0.0).tolist(),
        "itls": [np.diff(t).tolist() for t in result.token_times],
        "latencies": np.where(done, e2el, 0.0).tolist(),
        "start_times": arrival.tolist(),
        "generated_texts": result.texts if result.texts is not None else [""] * len(req),
        "errors": req["error"].tolist(),
    }


def write_result(run_dir: str | Path, result: BenchResult, *, save_detailed: bool = False) -> Path:
    """Write result.json (summary, plus the detailed lists when asked) and requests.parquet into ``run_dir``
    (atomically, result.json last: :func:`balanceroute.results.write_run_files`)."""
    summary = {**result.summary, **(detailed(result) if save_detailed else {})}
    return write_run_files(run_dir, summary, result.requests, None)
