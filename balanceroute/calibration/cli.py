"""``balanceroute calibrate``: fit the simulator's step model to live vLLM runs and write a model config.

    balanceroute calibrate outputs/live/run1 outputs/live/run2 --out conf/model/my_deployment.yaml
    python run.py model=my_deployment backend=sim ...     # the simulator, priced like the measured engines

Each run folder is a ``backend=vllm`` run (result.json, requests.parquet and, where the plugin wrote them, the
engines' step logs in steps/, :mod:`balanceroute.vllm_plugin.step_log`); all must be of one deployment (same
model, DP size, engine limits). The fit uses the step logs when every run has them, else the requests' token
timings (:mod:`balanceroute.calibration.evidence`). Prints the fitted coefficients and how well they explain
the measured step periods (or TPOTs), overall and per run, and the front-end latency
(:mod:`balanceroute.calibration.frontend`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from balanceroute.calibration.evidence import SOURCES, calibrate_runs
from balanceroute.calibration.frontend import fit_frontend
from balanceroute.calibration.preset import calibrated_model, fitted_preset, header, write_model_config
from balanceroute.calibration.steps import StepLogError
from balanceroute.results import read_result

EXAMPLES = """examples:
  balanceroute calibrate outputs/sweep/0 outputs/sweep/1 --out conf/model/tiny_moe_cpu.yaml
  balanceroute calibrate RUN... --out FILE --json     # the fit as JSON on stdout
  balanceroute calibrate RUN... --out FILE --from timings   # per-request token timings even where step logs exist
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "calibrate", help="fit the simulator's step model to live vLLM runs",
        description="Fit the step model's coefficients (a, b, c0+cw, p) to the engine steps of live backend=vllm "
                    "runs and write a model config for the simulator with them and the engines' limits.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="live run folders")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="model config to write, e.g. conf/model/<name>.yaml (then: model=<name>)")
    parser.add_argument("--from", dest="source", choices=SOURCES, default="auto",
                        help="fit to the engines' step logs or to the requests' token timings (auto: step logs "
                             "when every run has them; default)")
    parser.add_argument("--json", action="store_true", help="print the fit as JSON instead of a summary")
    parser.set_defaults(func=run)
    return parser


def _live_results(run_dirs: list[Path]) -> list[dict]:
    """The runs' result.json (StepLogError naming a run that is unfinished, not a vLLM run, or serves another
    model than the first)."""
    results = []
    for run_dir in run_dirs:
        result = read_result(run_dir)
        if result is None:
            raise StepLogError(f"{run_dir}: no result.json (not a finished run folder)")
        if result.get("backend") != "vllm":
            raise StepLogError(f"{run_dir}: a backend={result.get('backend')} run; calibrate needs backend=vllm "
                               "runs")
        if results and result["config"]["model"].get("vllm") != results[0]["config"]["model"].get("vllm"):
            raise StepLogError(f"{run_dir} served another model.vllm than {run_dirs[0]}; calibrate runs of one "
                               "deployment at a time")
        results.append(result)
    return results


def run(args: argparse.Namespace) -> int:
    try:
        results = _live_results(args.run_dirs)
        model = results[0]["config"]["model"]
        calibration = calibrate_runs(args.run_dirs, results, args.source)
        preset = fitted_preset(model, calibration.fit, calibration.limits)
        frontend = fit_frontend(list(zip(args.run_dirs, results)), preset)
    except (StepLogError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    calibrated = calibrated_model(model, preset, frontend)
    write_model_config(args.out, calibrated, header(calibration.quality, calibration.limits_measured, frontend,
                                                    [str(d) for d in args.run_dirs]))
    if args.json:
        keys = ("a", "b", "c0", "cw", "p", "frontend_latency_s", "kv_capacity_tokens", "block_size",
                "max_num_seqs", "max_num_batched_tokens")
        print(json.dumps({"out": str(args.out), "model": {k: calibrated[k] for k in keys},
                          "source": calibration.source, "quality": calibration.quality,
                          "samples": calibration.fit.num_samples,
                          "r2": calibration.fit.r2, "mean_abs_error": calibration.fit.mean_abs_error,
                          "limits_measured": calibration.limits_measured, "runs": calibration.per_run}))
        return 0
    costs, quantity = calibration.fit, "step period" if calibration.source == "steps" else "TPOT"
    print(f"fitted {len(args.run_dirs)} run(s) to {calibration.quality}:")
    print(f"  c0+cw {costs.constant * 1e3:.3f} ms, a {costs.a:.3e} s/KV token, b {costs.b:.3e} s/mean KV token, "
          f"p {costs.p:.3e} s/prefill token")
    print(f"  front-end latency {frontend.latency_s * 1e3:.2f} ms (mean TTFT live "
          + ", ".join(f"{a * 1e3:.1f}" for a in frontend.live_ttft_s) + " ms; step model alone "
          + ", ".join(f"{b * 1e3:.1f}" for b in frontend.step_model_ttft_s) + " ms)")
    for row in calibration.per_run:
        print(f"  {row['run_dir']}: {row['samples']} samples, mean {quantity} measured "
              f"{row['measured_mean_ms']:.2f} ms, fitted {row['predicted_mean_ms']:.2f} ms")
    origin = "as vLLM sized the engines" if calibration.limits_measured else "as configured, not measured"
    print(f"wrote {args.out} (model={args.out.stem}; limits {origin}: max_num_seqs {calibrated['max_num_seqs']}, "
          f"max_num_batched_tokens {calibrated['max_num_batched_tokens']}, KV {calibrated['kv_capacity_tokens']} "
          "tokens per engine)")
    return 0
