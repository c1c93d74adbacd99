"""Simulator speed and memory: the two figures issue 3 asks for, printed as a Markdown table.

    python benchmarks/bench_sim.py                 # both cases
    python benchmarks/bench_sim.py --case azure    # (a) only
    python benchmarks/bench_sim.py --trace PATH    # another location of the Azure conversation trace
    python benchmarks/bench_sim.py --repeat 5      # best of 5 runs per case (a shared machine is noisy)

Cases (targets: (a) <= 5 s, (b) <= 5 min):

- (a) ``azure``: the full Azure LLM 2023 conversation trace (19,366 requests) on its own timestamps, G = 8,
  qwen3_30b_a3b, colocated prefill, jsq_load.
- (b) ``synthetic``: 1,000,000 synthetic requests (Azure conversation mean lengths, Poisson arrivals) at G = 64,
  qwen3_30b_a3b, colocated, jsq_load, at 420 requests/s: about 90% of the 464 requests/s this deployment
  sustains when overloaded (measured with 50,000 requests offered at 3,000/s).

Each case runs in a fresh subprocess so that its peak resident memory (``ru_maxrss``) is its own; the table also
shows the resident memory right after the imports, so the simulator's own share is the difference. Wall time is
the ``simulate`` call alone (the workload is built before); CPU time is that of the process over the same span,
which is the steadier figure on a shared machine; with ``--repeat`` both are the best of the repetitions (the
standard way to time on a noisy machine: interference only ever adds time). Throughput is shown as engine steps
per second and events per second (an event: a request arriving or leaving, i.e. finishing or failing; between
events the simulator plans stretches of steps at once, so events, not steps, set its cost). The machine's load
average is printed with the table: figures taken on a busy machine are not comparable.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_llm_2023_conv.csv"
CASES = {
    "azure": {"label": "(a) Azure conv trace, trace timestamps", "num_workers": 8},
    "synthetic": {"label": "(b) 1M synthetic @ 420 req/s", "num_workers": 64, "num_requests": 1_000_000,
                  "rate": 420.0},
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_case(name: str, trace: Path, repeat: int) -> dict:
    """Run one case ``repeat`` times in this process; returns its figures (best wall and CPU time)."""
    from balanceroute.policies import make_policy
    from balanceroute.sim import SimConfig, simulate
    from balanceroute.workload import load_azure_trace, synthetic

    case = CASES[name]
    base_rss = _rss_mb()
    if name == "azure":
        workload = load_azure_trace(trace)
    else:
        workload = synthetic(case["num_requests"], rate=case["rate"], seed=0)
    config = SimConfig(num_workers=case["num_workers"], model="qwen3_30b_a3b")
    wall = cpu = float("inf")
    for _ in range(repeat):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = simulate(workload, make_policy("jsq_load"), config)
        wall, cpu = min(wall, time.perf_counter() - wall0), min(cpu, time.process_time() - cpu0)
    s = result.summary
    return {"case": case["label"], "requests": len(workload), "workers": case["num_workers"], "wall_s": wall,
            "cpu_s": cpu, "peak_rss_mb": _rss_mb(), "import_rss_mb": base_rss, "steps": s["num_steps"],
            "events": len(workload) + s["completed"] + s["failed"], "completed": s["completed"],
            "failed": s["failed"], "simulated_s": s["duration"], "output_tok_s": s["output_throughput"],
            "p95_tpot_ms": s["p95_tpot_ms"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--trace", type=Path, default=TRACE, help=f"Azure conversation trace (default {TRACE})")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the best time is reported")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.case, args.trace, args.repeat)))
        return 0
    names = list(CASES) if args.case == "all" else [args.case]
    if "azure" in names and not args.trace.is_file():
        print(f"bench_sim: trace {args.trace} not found; pass --trace PATH (README: Traces)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    rows = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--child", "--case", name, "--trace", str(args.trace),
                               "--repeat", str(args.repeat)], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print("load average before / after (1, 5, 15 min): " + " / ".join(" ".join(f"{x:.2f}" for x in load)
                                                                     for load in (load_before, os.getloadavg())))
    print("| case | requests | G | wall s | CPU s | peak RSS MB (after imports) | steps | steps/s | events/s "
          "| completed | failed | simulated s | output tok/s | TPOT p95 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['requests']:,} | {r['workers']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} "
              f"| {r['peak_rss_mb']:.0f} ({r['import_rss_mb']:.0f}) | {r['steps']:,} | {r['steps'] / r['wall_s']:,.0f} "
              f"| {r['events'] / r['wall_s']:,.0f} | {r['completed']:,} | {r['failed']} | {r['simulated_s']:.0f} "
              f"| {r['output_tok_s']:.0f} | {r['p95_tpot_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
