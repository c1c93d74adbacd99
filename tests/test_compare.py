"""analysis.compare on hand-made run folders (the result-file contract), so every number is known in advance."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from analysis.collect import collect_runs
from analysis.compare import choose_baseline, compare, comparison_axes, identical_routers, main, render


def write_run(root: Path, *, router: str, rate, seed: int = 0, dp: int = 8, K: int | None = None,
              **metrics) -> Path:
    """A run folder as run.py leaves it, reduced to what analysis reads: result.json."""
    router_cfg = {"name": router} | ({"K": K} if K is not None else {})
    config = {"rate": rate, "seed": seed, "router": router_cfg, "parallel": {"dp": dp, "tp": 1},
              "workload": {"name": "synthetic", "rate": rate, "seed": seed, "num_requests": 100}}
    digest = f"{router}-{rate}-{seed}-{dp}-{K}"
    run_dir = root / digest
    run_dir.mkdir(parents=True)
    result = {"router": router, "rate": rate, "seed": seed, "dp": dp, "tp": 1, "config_hash": digest,
              "config": config, "worker_requests": [1, 2], "date": "2026-01-01T00:00:00+00:00", **metrics}
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 routers x 2 rates x 3 seeds with chosen throughputs."""
    for rate, base in ((1, 100.0), (3, 300.0)):
        for seed, noise in enumerate((-1.0, 0.0, 1.0)):
            write_run(tmp_path, router="vllm_default", rate=rate, seed=seed, output_throughput=base + noise,
                      p95_tpot_ms=50.0 + seed)
            write_run(tmp_path, router="jsq_load", rate=rate, seed=seed, output_throughput=1.1 * base + 2 * noise,
                      p95_tpot_ms=40.0 + seed)
    return tmp_path


def test_collect_flattens_config_and_drops_lists(sweep):
    runs = collect_runs(sweep)
    assert len(runs) == 12
    assert {"config.router.name", "config.parallel.dp", "config.workload.rate", "run_dir"} <= set(runs.columns)
    assert "worker_requests" not in runs.columns


def test_collect_counts_a_copied_run_once(sweep, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    first = min(sweep.glob("jsq_load-1-0-*"))
    (copy / "result.json").write_text((first / "result.json").read_text())
    assert len(collect_runs(sweep)) == 12


def test_one_row_per_rate_and_router_with_t_interval_and_delta(sweep):
    table = compare(collect_runs(sweep), metrics=["output_throughput", "p95_tpot_ms"])
    assert list(table[["rate", "router"]].itertuples(index=False, name=None)) == [
        (1, "vllm_default"), (1, "jsq_load"), (3, "vllm_default"), (3, "jsq_load")]
    assert (table["n"] == 3).all()
    row = table[(table.rate == 3) & (table.router == "jsq_load")].iloc[0]
    values = [330.0 - 2, 330.0, 330.0 + 2]
    sd = pd.Series(values).std(ddof=1)
    assert row["output_throughput"] == pytest.approx(330.0)
    assert row["output_throughput_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * sd / math.sqrt(3))
    assert row["output_throughput_delta_pct"] == pytest.approx(10.0)
    assert row["p95_tpot_ms_delta_pct"] == pytest.approx(100 * (41 - 51) / 51)
    base = table[(table.rate == 3) & (table.router == "vllm_default")].iloc[0]
    assert base["output_throughput_delta_pct"] == pytest.approx(0.0)


def test_single_seed_has_no_interval(tmp_path):
    write_run(tmp_path, router="vllm_default", rate=1, output_throughput=10.0)
    write_run(tmp_path, router="jsq", rate=1, output_throughput=12.0)
    table = compare(collect_runs(tmp_path), metrics=["output_throughput"])
    assert table["output_throughput_ci95"].isna().all()
    rows = render(table, "md", ["output_throughput"], "vllm_default").splitlines()[2:4]
    assert rows == ["| 1 | vllm_default | 1 | 10.00 |", "| 1 | jsq | 1 | 12.00 (+20.0%) |"]


def test_a_varying_setup_key_splits_rows_and_deltas_stay_within_it(tmp_path):
    for dp, tput in ((16, 160.0), (4, 40.0), (8, 80.0)):
        write_run(tmp_path, router="vllm_default", rate=1, dp=dp, output_throughput=tput)
        write_run(tmp_path, router="jsq_load", rate=1, dp=dp, output_throughput=tput * 1.5)
    runs = collect_runs(tmp_path)
    assert comparison_axes(runs) == ["rate", "router", "config.parallel.dp"]
    table = compare(runs, metrics=["output_throughput"])
    assert table["parallel.dp"].tolist() == [4, 4, 8, 8, 16, 16]  # numeric order, baseline first in each
    assert table["router"].tolist() == ["vllm_default", "jsq_load"] * 3
    assert table.loc[table.router == "jsq_load", "output_throughput_delta_pct"].tolist() == pytest.approx([50] * 3)


def test_a_varying_group_is_labelled_by_its_name(tmp_path):
    for workload in ("synthetic", "azure_conv"):
        run = write_run(tmp_path / workload, router="vllm_default", rate=1, output_throughput=1.0)
        result = json.loads((run / "result.json").read_text())
        result["config"]["workload"] |= {"name": workload, "_target_": f"loader.{workload}"}
        (run / "result.json").write_text(json.dumps(result | {"config_hash": workload}))
    assert comparison_axes(collect_runs(tmp_path)) == ["rate", "router", "config.workload.name"]


def test_router_parameter_variants_get_rows_but_a_parameter_of_one_router_does_not(tmp_path):
    write_run(tmp_path, router="vllm_default", rate=1, output_throughput=10.0)
    write_run(tmp_path, router="fast_phi", rate=1, K=5, output_throughput=11.0)
    assert comparison_axes(collect_runs(tmp_path)) == ["rate", "router"]
    write_run(tmp_path, router="fast_phi", rate=1, K=1, output_throughput=12.0)
    table = compare(collect_runs(tmp_path), metrics=["output_throughput"])
    assert "router.K" in table.columns
    assert sorted(table["output_throughput_delta_pct"].round(6)) == pytest.approx([0.0, 10.0, 20.0])


def test_rates_sort_numerically_inf_last_and_print_as_written(tmp_path):
    for rate in ("inf", 5, 1.5, 10):
        write_run(tmp_path, router="vllm_default", rate=rate, output_throughput=1.0)
    table = compare(collect_runs(tmp_path), metrics=["output_throughput"])
    md = render(table, "md", ["output_throughput"], "vllm_default")
    assert [line.split(" | ")[0] for line in md.splitlines()[2:6]] == ["| 1.5", "| 5", "| 10", "| inf"]


def test_formats(sweep):
    metrics = ["output_throughput", "p95_tpot_ms"]
    table = compare(collect_runs(sweep), metrics=metrics)
    md = render(table, "md", metrics, "vllm_default")
    header = md.splitlines()[0]
    assert header == "| rate | router | n | output_throughput | p95_tpot_ms |"
    assert "| 3 | jsq_load | 3 | 330.0 ± 5.0 (+10.0%) |" in md
    latex = render(table, "latex", metrics, "vllm_default")
    assert r"jsq\_load" in latex and r"$\pm$" in latex and r"(+10.0\%)" in latex and r"\bottomrule" in latex
    csv = pd.read_csv(io.StringIO(render(table, "csv", metrics, "vllm_default")))
    assert {"output_throughput", "output_throughput_ci95", "output_throughput_delta_pct"} <= set(csv.columns)


def test_cli_prints_table(sweep, capsys):
    assert main([str(sweep), "--metrics", "output_throughput,p95_tpot_ms", "--format", "csv"]) == 0
    assert len(pd.read_csv(io.StringIO(capsys.readouterr().out))) == 4


@pytest.mark.parametrize("args, message", [
    (["--metrics", "p95_nope_ms"],
     "unknown metric(s) p95_nope_ms; valid metrics: output_throughput, p95_tpot_ms\n"),
])
def test_cli_errors_name_the_valid_choices(sweep, capsys, args, message):
    assert main([str(sweep), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_cli_error_for_a_folder_without_results(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no result.json under" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


# ---- one baseline rule, said in the heading -----------------------------------------------------------------------
@pytest.mark.parametrize("routers, configured, heading", [
    (["jsq_load", "vllm_default"], None, "baseline: vllm_default"),
    (["br0", "fast_phi", "jsq_load"], None, "baseline: br0 (vllm_default, jsq not in this sweep)"),
    (["jsq", "jsq_load"], None, "baseline: jsq (vllm_default not in this sweep)"),
    (["jsq", "jsq_load", "vllm_default"], "jsq_load", "baseline: jsq_load"),
    (["jsq_load", "vllm_default"], "br0", "baseline: vllm_default (br0 not in this sweep)"),
])
def test_the_baseline_rule(routers, configured, heading):
    assert choose_baseline(routers, configured) == (heading.split()[1], heading)


def test_the_readme_sweep_tabulates_with_no_flags(tmp_path, capsys):
    """The README's headline sweep has neither vllm_default nor jsq: the table takes the first router and says so."""
    for router in ("br0", "jsq_load", "fast_phi"):
        for rate in (1, 3):
            write_run(tmp_path, router=router, rate=rate, output_throughput=100.0 + rate, p95_ttft_ms=10.0,
                      p95_tpot_ms=5.0, mean_imbalance=1000.0)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("baseline: br0 (vllm_default, jsq not in this sweep)\n\n| rate | router | n |")


# ---- tables never hide missing runs --------------------------------------------------------------------------------
def hydra_job(run_dir: Path, *overrides: str) -> Path:
    """Mark ``run_dir`` as a Hydra job folder (.hydra/overrides.yaml), as run.py -m leaves it before the result."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return run_dir


def test_missing_and_corrupt_results_are_listed_under_the_table(sweep, capsys):
    lost = hydra_job(min(sweep.glob("jsq_load-3-2-*")), "rate=3", "router=jsq_load", "seed=2")
    (lost / "result.json").unlink()
    corrupt = hydra_job(min(sweep.glob("jsq_load-1-1-*")), "rate=1", "router=jsq_load", "seed=1")
    (corrupt / "result.json").write_text('{"router": "jsq_lo')  # truncated mid-write by a killed job
    hydra_job(min(sweep.glob("vllm_default-1-0-*")), "rate=1", "router=vllm_default", "seed=0")  # complete
    assert main([str(sweep), "--metrics", "output_throughput"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-2:] == ["missing: rate=1 router=jsq_load seed=1 — unreadable result.json",
                                     "missing: rate=3 router=jsq_load seed=2 — no result.json"]
    assert "| 1 | jsq_load | 2 (of 3) |" in out and "| 3 | vllm_default | 3 |" in out


def test_routers_with_bit_identical_results_are_said_to_be_one_measurement(sweep, capsys):
    for rate, base in ((1, 100.0), (3, 300.0)):  # br0 on arrival: exactly jsq_load's numbers
        for seed, noise in enumerate((-1.0, 0.0, 1.0)):
            write_run(sweep, router="br0", rate=rate, seed=seed, output_throughput=1.1 * base + 2 * noise,
                      p95_tpot_ms=40.0 + seed)
    write_run(sweep, router="br0", rate=3, seed=9, output_throughput=1.0, p95_tpot_ms=1.0)  # an extra seed...
    assert identical_routers(collect_runs(sweep), ["output_throughput", "p95_tpot_ms"]) == []  # ...breaks it
    (min(sweep.glob("br0-3-9-*")) / "result.json").unlink()
    runs = collect_runs(sweep)
    assert identical_routers(runs, ["output_throughput", "p95_tpot_ms"]) == [("br0", "jsq_load")]
    assert main([str(sweep), "--metrics", "output_throughput", "p95_tpot_ms"]) == 0
    assert ("identical: br0 = jsq_load gave the same results in every run (one measurement, not 2)"
            in capsys.readouterr().out)
