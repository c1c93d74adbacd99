"""``balanceroute sim``: simulate one routing policy on a DP+EP deployment from the command line.

    balanceroute sim --num-workers 8 --num-requests 5000 --router jsq_load --rate 40
    balanceroute sim --trace ../shared/traces/azure_llm_2023_conv.csv --router br0 --dispatch pool --json
    balanceroute sim --router br_h --router-param predictor=oracle --prefill disaggregated --output runs/x

It prints a summary table (``--json``: the summary as one JSON object on stdout; logs go to stderr) and, with
``--output``, writes result.json, requests.parquet and timeline.parquet. A bad value ends with one error line
naming it and the valid choices, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from typing import Any

from balanceroute.cli_args import int_at_least, key_value, positive_number
from balanceroute.policies import Policy, make_policy
from balanceroute.policies.dispatch import DISPATCH_MODES
from balanceroute.results import jsonable, write_run_files
from balanceroute.sim.presets import PRESETS, get_preset
from balanceroute.sim.simulator import PREFILL_MODES, SimConfig, simulate
from balanceroute.steady import steady_metrics
from balanceroute.workload import Workload, load_azure_trace, synthetic

log = logging.getLogger(__name__)

#: Synthetic requests when neither --num-requests nor --trace is given.
DEFAULT_REQUESTS = 1000
#: Show a progress bar from this many requests on.
PROGRESS_FROM = 10_000


class UsageError(ValueError):
    """A command-line value is invalid; the message names it and what is valid."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sim", help="simulate a routing policy on G DP workers (DP+EP step model)",
        description="Simulate a routing policy on a DP+EP deployment (ALGORITHMS.md section 3) and print the "
                    "vLLM-bench-style summary.")
    p.add_argument("--num-workers", default="8", metavar="G", help="DP workers (default 8)")
    p.add_argument("--num-requests", default=None, metavar="N",
                   help=f"requests (default: the whole trace, or {DEFAULT_REQUESTS} synthetic)")
    p.add_argument("--router", default="jsq_load", help="routing policy (default jsq_load)")
    p.add_argument("--router-param", action="append", default=[], metavar="K=V",
                   help="policy parameter, repeatable (values parsed as JSON where possible: 4, 0.9, true)")
    p.add_argument("--rate", default=None, metavar="R",
                   help="arrivals per second, or inf for all at t=0 (default: the trace's timestamps; "
                        "synthetic: inf)")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="Azure-style trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens); default: synthetic "
                        "requests with the Azure conversation trace's mean lengths")
    p.add_argument("--model", default="qwen3_30b_a3b", help=f"model preset: {', '.join(PRESETS)}")
    p.add_argument("--dispatch", default="on_arrival", help=f"{' | '.join(DISPATCH_MODES)}")
    p.add_argument("--prefill", default="colocated", help=f"{' | '.join(PREFILL_MODES)}")
    p.add_argument("--no-barrier", action="store_true",
                   help="workers step independently (dense model, no EP all-to-all)")
    p.add_argument("--timeout", default="600", metavar="S", help="per-request timeout in seconds (default 600)")
    p.add_argument("--seed", default="0", metavar="S", help="seed of the workload and the policy (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--output", default=None, metavar="DIR", help="write result.json and the parquet files here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        policy, workload, config = _build(args)
    except ValueError as exc:  # includes UsageError and WorkloadError
        print(f"balanceroute sim: error: {exc}", file=sys.stderr)
        return 2
    log.info("simulating %d requests on %d workers (%s, %s) with %s", len(workload), config.num_workers,
             config.model.name, config.prefill, policy.name)
    result = simulate(workload, policy, config, progress=len(workload) >= PROGRESS_FROM)
    summary = dict(result.summary, workload=workload.name, seed=config.seed, num_requests=len(workload),
                   model_preset=config.model.as_dict(), router_params=_router_params(args.router_param))
    summary.update(steady_metrics(result.requests, result.steps, num_workers=config.num_workers,
                                  slots_per_worker=config.model.max_num_seqs))
    if args.output:
        folder = write_run_files(args.output, summary, result.requests, result.timeline)
        log.info("wrote %s", folder)
    if args.json:
        print(json.dumps(jsonable(summary)))
    else:
        print(format_summary(summary))
    return 0


def _build(args: argparse.Namespace) -> tuple[Policy, Workload, SimConfig]:
    seed = _int("--seed", args.seed, 0)
    num_workers = _int("--num-workers", args.num_workers, 1)
    num_requests = None if args.num_requests is None else _int("--num-requests", args.num_requests, 1)
    rate = None if args.rate is None else _rate(args.rate)
    timeout = _positive("--timeout", args.timeout)
    model = get_preset(args.model)
    policy = make_policy(args.router, **{"seed": seed, **_router_params(args.router_param)})
    config = SimConfig(num_workers=num_workers, model=model, dispatch=args.dispatch, prefill=args.prefill,
                       barrier=not args.no_barrier, timeout_s=timeout, seed=seed)
    if args.trace:
        workload = load_azure_trace(args.trace, num_requests=num_requests, rate=rate, seed=seed)
    else:
        workload = synthetic(num_requests or DEFAULT_REQUESTS, rate=math.inf if rate is None else rate, seed=seed)
    return policy, workload, config


def _int(flag: str, text: str, minimum: int) -> int:
    return _parsed(flag, int_at_least(minimum), text)


def _positive(flag: str, text: str) -> float:
    return _parsed(flag, positive_number(finite=False), text)


def _parsed(flag: str, parse: Callable[[str], Any], text: str) -> Any:
    """``text`` parsed by a :mod:`balanceroute.cli_args` type, its complaint a UsageError naming ``flag``."""
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{flag} {exc}") from None


def _rate(text: str) -> float:
    try:
        return _positive("--rate", text)
    except UsageError:
        raise UsageError(f"--rate must be requests per second > 0 or inf, got {text!r}") from None


def _router_params(pairs: list[str]) -> dict[str, Any]:
    """``["k=4", "p=oracle"]`` -> ``{"k": 4, "p": "oracle"}`` (:func:`balanceroute.cli_args.key_value`)."""
    try:
        return dict(key_value(pair) for pair in pairs)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--router-param {exc}") from None


#: (summary key, label, format) of the printed table.
_ROWS = (
    ("completed", "Successful requests", "{}"), ("failed", "Failed requests", "{}"),
    ("unfinished", "Unfinished requests", "{}"), ("duration", "Duration (s)", "{:.2f}"),
    ("request_throughput", "Request throughput (req/s)", "{:.2f}"),
    ("output_throughput", "Output token throughput (tok/s)", "{:.1f}"),
    ("mean_ttft_ms", "Mean TTFT (ms)", "{:.2f}"), ("p95_ttft_ms", "P95 TTFT (ms)", "{:.2f}"),
    ("mean_tpot_ms", "Mean TPOT (ms)", "{:.2f}"), ("p95_tpot_ms", "P95 TPOT (ms)", "{:.2f}"),
    ("mean_itl_ms", "Mean ITL (ms)", "{:.2f}"), ("p99_itl_ms", "P99 ITL (ms)", "{:.2f}"),
    ("mean_imbalance", "Mean imbalance G*M - sum L (tokens)", "{:.0f}"),
    ("mean_spread", "Mean max-min spread (tokens)", "{:.0f}"),
    ("barrier_idle_fraction", "Barrier idle fraction", "{:.4f}"),
    ("steady_window", "Steady window (saturated | cut)", "{}"), ("steady_window_s", "Steady window (s)", "{:.2f}"),
    ("steady_mean_imbalance", "Steady mean imbalance (tokens)", "{:.0f}"),
    ("steady_output_throughput", "Steady output throughput (tok/s)", "{:.1f}"),
    ("steady_barrier_idle_fraction", "Steady barrier idle fraction", "{:.4f}"),
    ("steady_p95_tpot_ms", "Steady P95 TPOT (ms)", "{:.2f}"), ("preemptions", "Preemptions", "{}"),
    ("peak_kv_usage", "Peak KV usage", "{:.3f}"), ("num_steps", "Engine steps", "{}"),
    ("sim_wall_time_s", "Simulation wall time (s)", "{:.2f}"),
)


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable table (vLLM ``bench serve`` style)."""
    shape = f"{summary['num_workers']} workers, {summary['prefill']}, {summary['dispatch']}, " + (
        "barrier" if summary["barrier"] else "no barrier")
    lines = [" balanceroute sim ".center(60, "="), f"{'Router:':<42}{summary['router']}",
             f"{'Model:':<42}{summary['model']}", f"{'Deployment:':<42}{shape}"]
    for key, label, fmt in _ROWS:
        value = summary.get(key)
        shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
        lines.append(f"{label + ':':<42}{shown}")
    lines.append("=" * 60)
    return "\n".join(lines)
