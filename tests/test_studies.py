"""The papers' studies end to end, shrunk: run.py -m with a study's own config and report callback, as a user runs
it, at a size that takes seconds (two workers with 8 slots each, short outputs, overloaded so the slots fill)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHRINK = ["parallel.dp=2", "model.max_num_seqs=8", "workload.num_requests=400", "workload.output_mean=150",
          "rate=30", "seed=0"]


def run_study(study: str, arms: str, root: Path, *extra: str) -> Path:
    sweep = root / study
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), "-m", f"+experiment={study}", f"+arm={arms}", *SHRINK, *extra,
         f"hydra.sweep.dir={sweep}"],
        cwd=root, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    return sweep


def results(sweep: Path) -> dict[str, dict]:
    return {r["label"]: r for r in (json.loads(p.read_text()) for p in sweep.glob("*/result.json"))}


@pytest.mark.slow
@pytest.mark.parametrize("study, arms, extra", [
    ("bu2026_g8", "jsq,br0_pool,br_h_survival", ["workload=bu2026_a"]),
    ("chen2026_bfio", "fcfs_pool,bf_io", []),
])
def test_a_paper_study_runs_to_its_report_in_the_saturated_window(study, arms, extra, tmp_path):
    sweep = run_study(study, arms, tmp_path, *extra)
    runs = results(sweep)
    assert sorted(runs) == sorted(arms.split(","))
    for label, result in runs.items():
        assert result["config"]["backend"]["dispatch"] == "pool", label  # every arm of a paper study
        assert result["steady_window"] == "saturated" and result["steady_window_s"] > 0, label
        assert result["steady_saturated_fraction"] > 0.5, label
    report = (sweep / "report" / "report.md").read_text()
    assert "steady_mean_imbalance" in report and "Regime: steady window: all slots busy in" in report
    assert "## Published figures, to compare with the table" in report and "et al. 2026" in report
