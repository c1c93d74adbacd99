"""Issue 3's behaviour study: routing policies on the Azure conversation trace at G = 8, near saturation.

    python benchmarks/behaviour_study.py [--trace PATH] [--model qwen3_30b_a3b] [--load 0.9] [--max-num-seqs N]

For each deployment shape (colocated and disaggregated prefill) the study first finds the saturation rate:
the whole trace is offered at a rate far above what the cluster can serve (``OVERLOAD_RATE``) with jsq_load,
and the request throughput it sustains (completed / duration) is the capacity. The trace is then re-timed to
``--load`` x capacity (Poisson arrivals, seed 0) and every policy runs on the same requests. Printed: one Markdown
table per shape; imbalance is the mean per-step G*M - sum L (tokens), and its ratio to jsq's.

Measure and report; nothing here is tuned to the outcome. ``--max-num-seqs`` lowers the batch slots per worker
(the BR paper's decode-admission regime, where slots rather than KV bind and pool mode holds requests back).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from balanceroute.policies import make_policy
from balanceroute.sim import ModelPreset, SimConfig, get_preset, simulate
from balanceroute.workload import load_azure_trace

TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_llm_2023_conv.csv"
NUM_WORKERS = 8
#: Offered rate (requests/s) for the capacity measurement: several times any G = 8 preset's capacity.
OVERLOAD_RATE = 5000.0
#: (label, policy name, policy parameters, dispatch)
POLICIES = (
    ("vllm_default", "vllm_default", {}, "on_arrival"),
    ("jsq", "jsq", {}, "on_arrival"),
    ("jsq_load", "jsq_load", {}, "on_arrival"),
    ("br0", "br0", {}, "on_arrival"),
    ("br_h survival", "br_h", {"predictor": "survival"}, "on_arrival"),
    ("br_h oracle", "br_h", {"predictor": "oracle"}, "on_arrival"),
    ("fast_phi", "fast_phi", {}, "on_arrival"),
    ("jsq_load (pool)", "jsq_load", {}, "pool"),
    ("br0 (pool)", "br0", {}, "pool"),
    ("br_h survival (pool)", "br_h", {"predictor": "survival"}, "pool"),
    ("br_h oracle (pool)", "br_h", {"predictor": "oracle"}, "pool"),
)


def capacity(trace: Path, model: ModelPreset, prefill: str) -> float:
    """Requests/s the deployment sustains under overload (jsq_load, whole trace)."""
    workload = load_azure_trace(trace, rate=OVERLOAD_RATE, seed=0)
    result = simulate(workload, make_policy("jsq_load"),
                      SimConfig(num_workers=NUM_WORKERS, model=model, prefill=prefill))
    return result.summary["request_throughput"]


def study(trace: Path, model: ModelPreset, prefill: str, load: float) -> str:
    cap = capacity(trace, model, prefill)
    rate = round(load * cap)
    workload = load_azure_trace(trace, rate=rate, seed=0)
    rows, jsq_imbalance = [], None
    for label, name, params, dispatch in POLICIES:
        config = SimConfig(num_workers=NUM_WORKERS, model=model, prefill=prefill, dispatch=dispatch)
        wall = time.perf_counter()
        s = simulate(workload, make_policy(name, **params), config).summary
        wall = time.perf_counter() - wall
        if label == "jsq":
            jsq_imbalance = s["mean_imbalance"]
        rows.append((label, s, wall))
    out = [f"### {prefill} prefill: capacity {cap:.0f} req/s (jsq_load under overload), study rate {rate} req/s "
           f"({load:.0%}), {len(workload):,} requests, model {model.name} ({model.max_num_seqs} slots), "
           f"G = {NUM_WORKERS}", "",
           "| policy | dispatch | mean imbalance (tokens) | vs jsq | mean spread | barrier idle | TPOT p95 ms "
           "| TTFT p95 ms | output tok/s | failed | preemptions | sim s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (label, _, _, dispatch), (_, s, wall) in zip(POLICIES, rows, strict=True):
        ratio = s["mean_imbalance"] / jsq_imbalance if jsq_imbalance else float("nan")
        out.append(f"| {label} | {dispatch} | {s['mean_imbalance']:.0f} | {ratio:.2f} | {s['mean_spread']:.0f} "
                   f"| {s['barrier_idle_fraction']:.3f} | {s['p95_tpot_ms']:.1f} | {s['p95_ttft_ms']:.0f} "
                   f"| {s['output_throughput']:.0f} | {s['failed']} | {s['preemptions']} | {wall:.1f} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--model", default="qwen3_30b_a3b")
    parser.add_argument("--load", type=float, default=0.9, help="fraction of the measured capacity (default 0.9)")
    parser.add_argument("--prefill", choices=["colocated", "disaggregated", "both"], default="both")
    parser.add_argument("--max-num-seqs", type=int, default=None, help="override the preset's slots per worker")
    args = parser.parse_args()
    model = get_preset(args.model)
    if args.max_num_seqs is not None:
        model = model.with_overrides(max_num_seqs=args.max_num_seqs)
    if not args.trace.is_file():
        print(f"behaviour_study: trace {args.trace} not found; pass --trace PATH", file=sys.stderr)
        return 2
    shapes = ["colocated", "disaggregated"] if args.prefill == "both" else [args.prefill]
    print("\n\n".join(study(args.trace, model, shape, args.load) for shape in shapes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
