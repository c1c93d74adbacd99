"""``balanceroute calibrate``: fit the simulator's step model to live vLLM runs and write a model config.

    balanceroute calibrate outputs/live/run1 outputs/live/run2 --out conf/model/my_deployment.yaml
    python run.py model=my_deployment backend=sim ...     # the simulator, priced like the measured engines

Each run folder is a ``backend=vllm`` run (result.json, requests.parquet and the engines' step logs in steps/,
:mod:`balanceroute.vllm_plugin.step_log`); all must be of one deployment (same model, DP size, engine limits).
Prints the fitted coefficients and how well they explain the measured step periods, overall and per run, and
the front-end latency (:mod:`balanceroute.calibration.frontend`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from balanceroute.calibration.fit import StepFit, fit_steps
from balanceroute.calibration.frontend import fit_frontend
from balanceroute.calibration.preset import calibrated_model, fitted_preset, header, write_model_config
from balanceroute.calibration.steps import StepLogError, StepTable, read_steps
from balanceroute.results import read_result

EXAMPLES = """examples:
  balanceroute calibrate outputs/sweep/0 outputs/sweep/1 --out conf/model/tiny_moe_cpu.yaml
  balanceroute calibrate RUN... --out FILE --json     # the fit as JSON on stdout
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


def _per_run(fit: StepFit, tables: list[StepTable], run_dirs: list[Path]) -> list[dict]:
    rows = []
    for run_dir, table in zip(run_dirs, tables):
        predicted = fit.predict(table)
        rows.append({"run_dir": str(run_dir), "steps": table.num_steps,
                     "measured_mean_ms": float(table.period.mean() * 1e3),
                     "predicted_mean_ms": float(predicted.mean() * 1e3)})
    return rows


def run(args: argparse.Namespace) -> int:
    try:
        results = _live_results(args.run_dirs)
        model = results[0]["config"]["model"]
        tables = [read_steps(d) for d in args.run_dirs]
        steps = StepTable.concat(tables)
        fit = fit_steps(steps)
        preset = fitted_preset(model, fit, steps.engines)
        frontend = fit_frontend(list(zip(args.run_dirs, results)), preset)
    except (StepLogError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    calibrated = calibrated_model(model, preset, frontend)
    write_model_config(args.out, calibrated, header(fit, frontend, [str(d) for d in args.run_dirs],
                                                    steps.num_ranks))
    per_run = _per_run(fit, tables, args.run_dirs)
    if args.json:
        keys = ("a", "b", "c0", "cw", "p", "frontend_latency_s", "kv_capacity_tokens", "block_size",
                "max_num_seqs", "max_num_batched_tokens")
        print(json.dumps({"out": str(args.out), "model": {k: calibrated[k] for k in keys}, "steps": fit.num_steps,
                          "r2": fit.r2, "mean_abs_error": fit.mean_abs_error, "runs": per_run}))
        return 0
    print(f"fitted {fit.num_steps} lock-steps of {steps.num_ranks} DP rank(s) from {len(args.run_dirs)} run(s):")
    print(f"  c0+cw {fit.constant * 1e3:.3f} ms, a {fit.a:.3e} s/KV token, b {fit.b:.3e} s/mean KV token, "
          f"p {fit.p:.3e} s/prefill token")
    print(f"  R^2 {fit.r2:.3f}, mean |error| {fit.mean_abs_error:.1%} of the mean step period "
          f"({fit.mean_period_s * 1e3:.2f} ms)")
    print(f"  front-end latency {frontend.latency_s * 1e3:.2f} ms (mean TTFT live "
          + ", ".join(f"{a * 1e3:.1f}" for a in frontend.live_ttft_s) + " ms; step model alone "
          + ", ".join(f"{b * 1e3:.1f}" for b in frontend.step_model_ttft_s) + " ms)")
    for row in per_run:
        print(f"  {row['run_dir']}: {row['steps']} steps, mean period measured {row['measured_mean_ms']:.2f} ms, "
              f"fitted {row['predicted_mean_ms']:.2f} ms")
    print(f"wrote {args.out} (model={args.out.stem}; limits: max_num_seqs {calibrated['max_num_seqs']}, "
          f"max_num_batched_tokens {calibrated['max_num_batched_tokens']}, KV {calibrated['kv_capacity_tokens']} "
          "tokens per engine)")
    return 0
