"""The SLURM tier: tests marked ``slurm`` run against a real SLURM cluster (``.ci/setup_slurm.sh`` starts a
single-node one on localhost) and skip, with the reason, when no controller answers or no node is free."""
from __future__ import annotations

import functools
import shutil
import subprocess

import pytest


@functools.lru_cache(maxsize=1)
def slurm_skip_reason() -> str | None:
    """Why the SLURM tier cannot run here, or None when a node is idle (or partly used) and can take jobs."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed (no sinfo/sbatch on PATH): run .ci/setup_slurm.sh as root"
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=30,
                              check=False)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s: is slurmctld running? (.ci/setup_slurm.sh starts it)"
    if proc.returncode != 0:
        return f"no SLURM controller answers (sinfo: {proc.stderr.strip()}): run .ci/setup_slurm.sh as root"
    states = proc.stdout.split()
    if not any(state.rstrip("*~#!%$@^-") in ("idle", "mix") for state in states):
        return f"no idle SLURM node (node states: {', '.join(states) or 'none'})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = slurm_skip_reason() if any(item.get_closest_marker("slurm") for item in items) else None
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.skip(reason=reason))
