"""How fast a request stream the emulated fleet keeps up with on this machine, printed as a Markdown table.

    python benchmarks/bench_emulator.py                         # G=8, qwen3_30b_a3b, time scale 1, rates 10..80
    python benchmarks/bench_emulator.py --rates 20,40 --seconds 30 --ranks 8 --time-scale 1

For each rate, a fresh fleet (``balanceroute emulate``, a subprocess) serves synthetic requests with the Azure
conversation trace's mean lengths (Poisson arrivals, streamed, exact output lengths) from the benchmark client
in this process. The figure that says whether the fleet keeps up is its **step lateness**: how long after a
modelled step's end the event loop got to hand out that step's tokens (p50/p99/max over the run, from the
fleet's /stats). Routing and step timing do not depend on it (they use the clock, not the loop), but tokens
reach clients that much later. The client's own scheduling error (p99) is shown too: when it grows, the client,
not the fleet, is the bottleneck. Both share this machine's cores (and with everything else running on it, so
the figures are noisy).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from balanceroute.backends.emulated import COMMAND, free_port_block
from balanceroute.bench import benchmark
from balanceroute.protocol.headers import WORKER_HEADER
from balanceroute.serving import ManagedServer
from balanceroute.workload import synthetic


def run_rate(rate: float, args: argparse.Namespace, folder: Path) -> dict:
    port = free_port_block("127.0.0.1", args.ranks + 1)
    cmd = [*COMMAND, "--ranks", str(args.ranks), "--model", args.model, "--port", str(port),
           "--time-scale", str(args.time_scale), "--router", "jsq_load"]
    workload = synthetic(int(rate * args.seconds), rate=rate, seed=0)
    with ManagedServer("balanceroute emulate", cmd, folder / f"fleet_{rate:g}.log", "127.0.0.1", port,
                       ready_timeout_s=60) as fleet:
        result = benchmark(fleet.url + "/v1/completions", workload, model=args.model, worker_header=WORKER_HEADER,
                           continuous_usage=False)
        stats = json.loads(fleet.fetch("/stats"))
    s = result.summary
    return {"rate": rate, "completed": s["completed"], "failed": s["failed"],
            "output_throughput": s["output_throughput"], "mean_tpot_ms": s["mean_tpot_ms"],
            "p99_itl_ms": s["p99_itl_ms"], "steps": stats["steps"], "late_p50": stats["step_lateness_p50_ms"],
            "late_p99": stats["step_lateness_p99_ms"], "late_max": stats["step_lateness_max_ms"],
            "client_p99": s["p99_arrival_error_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10,20,40,60,80", help="request rates to try, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="arrival span per rate (default 20)")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--model", default="qwen3_30b_a3b")
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in (float(r) for r in args.rates.split(",")):
            rows.append(run_rate(rate, args, Path(tmp)))
            print(f"rate {rate:g}: step lateness p99 {rows[-1]['late_p99']:.2f} ms", flush=True)
    print(f"\nG={args.ranks}, {args.model}, time scale {args.time_scale:g}, {args.seconds:g} s of arrivals per rate\n")
    print("| req/s | completed | failed | output tok/s | TPOT mean ms | ITL p99 ms | steps | step lateness p50 / p99 "
          "/ max ms | client send error p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rate']:g} | {r['completed']} | {r['failed']} | {r['output_throughput']:.0f} | "
              f"{r['mean_tpot_ms']:.2f} | {r['p99_itl_ms']:.2f} | {r['steps']} | {r['late_p50']:.2f} / "
              f"{r['late_p99']:.2f} / {r['late_max']:.1f} | {r['client_p99']:.2f} |")


if __name__ == "__main__":
    main()
