"""``balanceroute bench``: load-test an OpenAI-compatible endpoint and write vLLM-compatible result files.

The command builds the workload with :mod:`balanceroute.workload` (the same loaders experiments use), runs
:func:`balanceroute.bench.run_benchmark` with a progress bar on stderr, writes result.json and
requests.parquet into ``--output`` and prints the summary (a table, or one JSON object with ``--json``).
Exit status: 0 when the run finished (failed requests are results, not errors), 1 when no request completed,
2 for bad arguments, 130 when interrupted with Ctrl-C (the partial result is still written).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from balanceroute.bench.result import BenchResult, write_result
from balanceroute.bench.runner import run_benchmark
from balanceroute.cli_args import int_at_least, positive_number
from balanceroute.metrics import SLO_METRICS
from balanceroute.protocol.tokenizer import TextTokenizer, load_tokenizer
from balanceroute.results import jsonable
from balanceroute.workload import DISTRIBUTIONS, Workload, load_azure_trace, load_sharegpt, synthetic

log = logging.getLogger(__name__)

DATASETS = ("synthetic", "sharegpt", "azure")
DEFAULT_NUM_REQUESTS = 1000  # as vllm bench serve --num-prompts
EXAMPLES = """\
examples:
  balanceroute bench --target http://127.0.0.1:8000/v1/completions --model m --num-requests 500 \\
      --request-rate 3 --dataset sharegpt --dataset-path ShareGPT_V3_unfiltered_cleaned_split.json
  balanceroute bench --target http://127.0.0.1:8000/v1/chat/completions --model m --dataset azure \\
      --dataset-path azure_llm_2023_conv.csv --time-scale 0.5 --max-concurrency 64 --json
"""








def _slo(text: str) -> tuple[str, float]:
    key, _, ms = text.partition(":")
    try:
        value = float(ms)
    except ValueError:
        value = math.nan
    if key not in SLO_METRICS or not value > 0:
        raise argparse.ArgumentTypeError(f"invalid SLO {text!r}; valid: KEY:MS with KEY one of "
                                         f"{', '.join(SLO_METRICS)} and MS > 0, e.g. ttft:500")
    return key, value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="load-test an OpenAI-compatible endpoint (vLLM bench serve compatible results)",
        description="Send a workload to an OpenAI-compatible endpoint at a controlled rate, stream the answers "
                    "and report TTFT, TPOT, ITL, E2EL, throughput and failures.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, metavar="URL",
                   help="full endpoint URL, ending in /v1/completions or /v1/chat/completions")
    p.add_argument("--model", required=True, metavar="NAME", help="served model name sent in each request")
    load = p.add_argument_group("workload")
    load.add_argument("--dataset", choices=DATASETS, default="synthetic", help="request source (default: %(default)s)")
    load.add_argument("--dataset-path", type=Path, metavar="FILE", help="ShareGPT JSON or Azure-style CSV trace")
    load.add_argument("--num-requests", type=int_at_least(1), metavar="N",
                      help=f"requests to send (default: {DEFAULT_NUM_REQUESTS}; azure: the whole trace)")
    load.add_argument("--request-rate", type=positive_number(finite=False), metavar="R",
                      help="requests/s, Poisson or gamma arrivals; inf sends all at once (default: inf, or the "
                           "trace's own timestamps for --dataset azure)")
    load.add_argument("--burstiness", type=positive_number(), default=1.0, metavar="B",
                      help="gamma shape of the inter-arrival gaps: 1 Poisson, < 1 burstier (default: 1)")
    load.add_argument("--time-scale", type=positive_number(), metavar="F",
                      help="azure: multiply the trace's inter-arrival gaps by F (0.5 = twice the rate)")
    load.add_argument("--prompt-mean", type=positive_number(), default=1155, metavar="TOKENS",
                      help="synthetic: mean prompt length (default: %(default)s)")
    load.add_argument("--output-mean", type=positive_number(), default=211, metavar="TOKENS",
                      help="synthetic: mean output length (default: %(default)s)")
    load.add_argument("--length-distribution", choices=DISTRIBUTIONS, default="lognormal",
                      help="synthetic: length distribution (default: %(default)s)")
    load.add_argument("--max-prompt-len", type=int_at_least(1), metavar="TOKENS", help="drop longer prompts")
    load.add_argument("--max-output-len", type=int_at_least(1), metavar="TOKENS", help="drop longer outputs")
    load.add_argument("--tokenizer", metavar="PATH_OR_NAME",
                      help="tokenizer for ShareGPT lengths and exact synthetic prompt lengths (a directory with "
                           "tokenizer.json, or a transformers name); default: approximate lengths")
    load.add_argument("--seed", type=int_at_least(0), default=0, help="arrivals, sampling, prompt text")
    send = p.add_argument_group("sending")
    send.add_argument("--max-concurrency", type=int_at_least(1), metavar="N", help="at most N requests in flight")
    send.add_argument("--warmup", type=int_at_least(0), default=0, metavar="N",
                      help="unrecorded warm-up requests before the run (default: 0)")
    send.add_argument("--timeout", type=positive_number(finite=False), default=600.0, metavar="S",
                      help="per-request total timeout in seconds (default: %(default)s)")
    send.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                      help="do not send vLLM's ignore_eos (max_tokens then only caps the output)")
    send.add_argument("--no-continuous-usage", dest="continuous_usage", action="store_false",
                      help="do not ask for per-chunk usage (a vLLM extension)")
    send.add_argument("--no-stream", dest="stream", action="store_false",
                      help="non-streaming requests (E2EL only: no TTFT, TPOT or ITL)")
    send.add_argument("--worker-header", metavar="NAME",
                      help="response header holding the worker a routing proxy chose (recorded per request)")
    out = p.add_argument_group("output")
    out.add_argument("--goodput", type=_slo, nargs="+", metavar="KEY:MS",
                     help="SLOs for request_goodput, e.g. ttft:500 tpot:50")
    out.add_argument("--output", type=Path, metavar="DIR",
                     help="folder for result.json and requests.parquet (default: outputs/bench/<date>)")
    out.add_argument("--save-detailed", action="store_true",
                     help="add per-request lists (ttfts, itls, generated_texts, ...) to result.json")
    out.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)
    return p


def build_workload(args: argparse.Namespace, tokenizer: TextTokenizer | None) -> Workload:
    """The workload the arguments describe (raises ValueError naming a bad argument)."""
    caps = {"max_prompt_len": args.max_prompt_len, "max_output_len": args.max_output_len}
    if args.dataset != "azure" and args.time_scale is not None:
        raise ValueError(f"--time-scale re-times a trace; it needs --dataset azure, not {args.dataset}")
    if args.dataset == "synthetic":
        return synthetic(args.num_requests or DEFAULT_NUM_REQUESTS, rate=args.request_rate or math.inf, burstiness=args.burstiness,
                         prompt_mean=args.prompt_mean, output_mean=args.output_mean,
                         distribution=args.length_distribution, seed=args.seed, **caps)
    if args.dataset_path is None:
        raise ValueError(f"--dataset {args.dataset} needs --dataset-path FILE")
    if args.dataset == "sharegpt":
        return load_sharegpt(args.dataset_path, num_requests=args.num_requests or DEFAULT_NUM_REQUESTS, tokenizer=tokenizer,
                             rate=args.request_rate or math.inf, burstiness=args.burstiness, seed=args.seed, **caps)
    return load_azure_trace(args.dataset_path, num_requests=args.num_requests, rate=args.request_rate,
                            burstiness=args.burstiness, time_scale=args.time_scale, seed=args.seed, **caps)


def _metadata(args: argparse.Namespace) -> dict[str, Any]:
    rate = args.request_rate
    if rate is None:
        rate = "trace" if args.dataset == "azure" else math.inf
    return {"request_rate": rate, "burstiness": args.burstiness, "tokenizer_id": args.tokenizer,
            "dataset_name": args.dataset, "dataset_path": str(args.dataset_path) if args.dataset_path else None,
            "time_scale": args.time_scale}


def print_table(summary: dict[str, Any], file=sys.stdout) -> None:
    """The summary as ``vllm bench serve`` prints it (a subset of the keys)."""
    def row(label: str, key: str, fmt: str = "{:.2f}") -> None:
        value = summary.get(key)
        text = "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) \
            else fmt.format(value)
        print(f"{label:<40} {text}", file=file)

    print("{:=^50}".format(" Serving Benchmark Result "), file=file)
    row("Successful requests:", "completed", "{}")
    row("Failed requests:", "failed", "{}")
    if summary.get("interrupted"):
        row("Unfinished (interrupted) requests:", "unfinished", "{}")
    for error, count in summary.get("error_counts", {}).items():
        print(f"{'  ' + error + ':':<40} {count}", file=file)
    row("Benchmark duration (s):", "duration")
    row("Total input tokens:", "total_input_tokens", "{}")
    row("Total generated tokens:", "total_output_tokens", "{}")
    row("Request throughput (req/s):", "request_throughput")
    row("Output token throughput (tok/s):", "output_throughput")
    row("Total token throughput (tok/s):", "total_token_throughput")
    for metric, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                          ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):
        print(f"{title:-^50}", file=file)
        for stat in ("mean", "median", "p99"):
            row(f"{stat.capitalize() if stat != 'p99' else 'P99'} {metric.upper()} (ms):", f"{stat}_{metric}_ms")
    print("{:-^50}".format("Client"), file=file)
    row("Arrival error p99 (ms):", "p99_arrival_error_ms")
    row("Token counts from:", "token_count_source", "{}")
    print("=" * 50, file=file)


def run(args: argparse.Namespace) -> int:
    try:
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        workload = build_workload(args, tokenizer)
        run_dir = args.output or Path("outputs") / "bench" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        result: BenchResult = asyncio.run(run_benchmark(
            args.target, workload, model=args.model, stream=args.stream, ignore_eos=args.ignore_eos,
            continuous_usage=args.continuous_usage, max_concurrency=args.max_concurrency, warmup=args.warmup,
            timeout_s=args.timeout, seed=args.seed, tokenizer=tokenizer, worker_header=args.worker_header,
            goodput_slo_ms=dict(args.goodput) if args.goodput else None, metadata=_metadata(args),
            progress=args.progress, save_texts=args.save_detailed, handle_sigint=True))
    except ValueError as exc:
        print(f"balanceroute bench: error: {exc}", file=sys.stderr)
        return 2
    write_result(run_dir, result, save_detailed=args.save_detailed)
    summary = jsonable(result.summary)
    if args.json:
        print(json.dumps(summary))
    else:
        print_table(summary)
    log.info("results: %s", run_dir.resolve())
    if result.interrupted:
        return 130
    if summary["completed"] == 0 and summary["num_sent"] > 0:
        errors = ", ".join(f"{n} x {e}" for e, n in summary["error_counts"].items())
        print(f"balanceroute bench: no request completed ({errors}); is {args.target} serving model "
              f"{args.model!r}?", file=sys.stderr)
        return 1
    return 0
