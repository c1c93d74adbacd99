"""analysis.report on a small real sweep (run.py -m with the report callback, as the studies run it), and the
table marking and figure choices by hand."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.collect import collect_runs
from analysis.compare import compare
from analysis.report import build_report, main
from analysis.tables import render

SMALL = ["model=tiny", "parallel.dp=2", "workload.num_requests=40", "workload.prompt_mean=200",
         "workload.output_mean=40"]
FIGURES = {"metrics.png", "delta.png", "imbalance.png", "worker_load.png", "gantt.png", "cdf.png"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """3 study arms (one of them BR-0 in pool dispatch) x 2 rates x 2 seeds through run.py -m, with the report
    written by the Hydra callback at the end, as conf/experiment/ studies do."""
    root = tmp_path_factory.mktemp("report")
    sweep_dir = root / "sweep"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "run.py"), "-m", "+arm=jsq,jsq_load,br0_pool",
         "rate=1,3", "seed=0,1", *SMALL, f"hydra.sweep.dir={sweep_dir}",
         "+hydra.callbacks.report._target_=analysis.report.ReportCallback", "+hydra.callbacks.report.baseline=jsq"],
        cwd=root, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"report: {sweep_dir / 'report' / 'report.md'}" in proc.stdout
    return sweep_dir


def figures_of(report: Path) -> list[str]:
    return re.findall(r"!\[[^]]*\]\(([^)]+)\)", report.read_text())


def test_the_report_has_its_table_and_every_figure(sweep):
    report = sweep / "report" / "report.md"
    text = report.read_text()
    assert "python run.py -m +arm=jsq,jsq_load,br0_pool rate=1,3 seed=0,1" in text  # how to rerun it
    assert "| rate | router | n | output_throughput | p95_ttft_ms | p95_tpot_ms | mean_imbalance |" in text
    rows = [line for line in text.splitlines() if re.match(r"\| [13] \| ", line)]
    assert [r.split(" | ")[1] for r in rows] == ["jsq", "br0_pool", "jsq_load"] * 2  # baseline first
    assert all(r.split(" | ")[2] == "2" for r in rows)  # two seeds per row
    assert "its interval clear of every other row's" in text  # what bold means
    assert set(figures_of(report)) == FIGURES
    for name in FIGURES:
        data = (report.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name


def test_labels_keep_router_variants_apart_and_comparable(sweep):
    table = pd.read_csv(sweep / "report" / "table.csv")
    assert set(table["router"]) == {"jsq", "jsq_load", "br0_pool"}  # br0 in pool mode has its own label
    assert "backend.dispatch" not in table.columns  # the label says it; the Δ% stays against jsq at each rate
    assert table.loc[table.router == "br0_pool", "output_throughput_delta_pct"].notna().all()
    assert (table.groupby("rate")["mean_imbalance_best"].sum() <= 1).all()
    for _, rows in table.groupby("rate"):  # marked: the lowest, clear of the others' intervals
        for _, row in rows[rows.mean_imbalance_best].iterrows():
            others = rows.drop(row.name)
            assert row.mean_imbalance == rows.mean_imbalance.min()
            assert ((others.mean_imbalance - row.mean_imbalance) > others.mean_imbalance_ci95
                    + row.mean_imbalance_ci95).all()
    result = json.loads(next(sweep.glob("+arm=br0_pool,*,rate=1,seed=0,*/result.json")).read_text())
    assert (result["label"], result["router"], result["config"]["backend"]["dispatch"]) == ("br0_pool", "br0", "pool")


def test_a_single_setup_gets_bars_and_a_chosen_output_folder(sweep, tmp_path):
    one_rate = tmp_path / "rate1"
    for run in sweep.glob("*rate=1,*"):
        shutil.copytree(run, one_rate / run.name)
    report = build_report(one_rate, out=tmp_path / "out", title="one rate")
    text = report.read_text()
    assert text.startswith("# one rate") and "per router" in text and "rate=1" in text
    assert set(figures_of(report)) == FIGURES
    assert report.parent == tmp_path / "out"


def test_result_files_alone_give_the_table_and_the_metrics_figure(sweep, tmp_path):
    """Runs without their parquet files (copied result.json only, or collected elsewhere) still get a report."""
    for result in sweep.glob("*/result.json"):
        (tmp_path / result.parent.name).mkdir()
        shutil.copy(result, tmp_path / result.parent.name / "result.json")
    report = build_report(tmp_path)
    assert figures_of(report) == ["metrics.png", "delta.png"] and "| rate | router |" in report.read_text()


def test_cli_errors_name_the_valid_choices(sweep, capsys):
    assert main([str(sweep), "--focus", "parallel.dp=4"]) == 2
    assert capsys.readouterr().err == ("error: focus key(s) parallel.dp are not setup axes of this sweep; setup "
                                       "axes: rate\n")
    assert main([str(sweep), "--focus", "rate=7"]) == 2
    assert "focus rate=7: no runs; values present: 1, 3" in capsys.readouterr().err
    assert main([str(sweep), "--baseline", "nope"]) == 0  # the rule falls back, and the report says so
    assert "baseline: jsq (nope, vllm_default not in this sweep)" in (sweep / "report" / "report.md").read_text()


def write_result(root: Path, router: str, rate: int, seed: int, **metrics) -> None:
    run = root / f"{router}-{rate}-{seed}"
    run.mkdir(parents=True)
    config = {"rate": rate, "seed": seed, "router": {"name": router}}
    (run / "result.json").write_text(json.dumps({"router": router, "rate": rate, "seed": seed, "config": config,
                                                 "config_hash": run.name, **metrics}))


def test_the_best_value_is_marked_only_where_its_interval_is_clear_of_the_others(tmp_path):
    # three seeds, spread ±0.1: intervals ±0.25. Rate 1: jsq clearly best in both metrics. Rate 3: throughput
    # 30 vs 29.8 (intervals overlap: nothing marked), TPOT 7 clearly lowest.
    for seed, noise in enumerate((-0.1, 0.0, 0.1)):
        for rate, tput, tpot in ((1, (10, 12, 11), (5, 4, 6)), (3, (30, 29.8, 28), (9, 9, 7))):
            for router, t, p in zip(("vllm_default", "jsq", "jsq_load"), tput, tpot):
                write_result(tmp_path, router, rate, seed, output_throughput=t + noise, p95_tpot_ms=p + noise)
    metrics = ["output_throughput", "p95_tpot_ms"]
    table = compare(collect_runs(tmp_path), metrics=metrics)
    md = render(table, "md", metrics, "vllm_default", mark_best=True).splitlines()
    assert md[2] == "| 1 | vllm_default | 3 | 10.00 ± 0.25 | 5.00 ± 0.25 |"
    assert md[3] == "| 1 | jsq | 3 | **12.00 ± 0.25 (+20.0%)** | **4.00 ± 0.25 (-20.0%)** |"  # more tok/s, less TPOT
    assert md[5] == "| 3 | vllm_default | 3 | 30.00 ± 0.25 | 9.00 ± 0.25 |"  # best by 0.2, inside the intervals
    assert md[7].endswith("| **7.00 ± 0.25 (-22.2%)** |")
    assert "its interval clear of every other row's" in md[-1]
    flags = pd.read_csv(io.StringIO(render(table, "csv", metrics, "vllm_default", mark_best=True)))
    assert flags["output_throughput_best"].tolist() == [False, True, False, False, False, False]
    assert "**" not in render(table, "md", metrics, "vllm_default")  # compare's own output is unchanged


def test_rows_of_one_run_are_never_marked(tmp_path):
    for router, t in (("vllm_default", 10), ("jsq", 50)):
        write_result(tmp_path, router, 1, 0, output_throughput=t)
    metrics = ["output_throughput"]
    table = compare(collect_runs(tmp_path), metrics=metrics)
    assert "**" not in render(table, "md", metrics, "vllm_default", mark_best=True)


ARMS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "arm").glob("*.yaml"))


@pytest.mark.parametrize("arm", ARMS)
def test_every_study_arm_builds_its_router_under_its_label(arm, compose):
    from balanceroute.experiment import build_policy, check_config, run_label

    cfg = compose([f"+arm={arm}"])
    policy = build_policy(check_config(cfg))
    assert run_label(check_config(cfg)) == arm and policy.name == cfg.router.name
    assert arm.startswith(policy.name) or (arm, policy.name) == ("fcfs_pool", "round_robin")
    pool_policy = arm.startswith(("br0", "br_h", "bf_io"))  # Bu et al.'s and Chen et al.'s: pool policies
    assert cfg.backend.dispatch == ("pool" if pool_policy or arm.endswith("_pool") else "on_arrival")
    if arm.startswith("fast_phi_k"):
        assert policy.K == int(arm.removeprefix("fast_phi_k"))
    if arm.startswith("br_h_"):
        assert cfg.router.predictor == arm.removeprefix("br_h_")
