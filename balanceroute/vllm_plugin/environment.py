"""Where vLLM is, and whether the plugin is installed beside it.

vLLM often lives in its own virtualenv (the CPU build for tests, a CUDA build on a GPU node) while balanceroute
runs from another. The plugin only takes effect if the environment *vLLM runs in* has balanceroute installed with
its ``vllm.general_plugins`` entry point; otherwise ``BALANCEROUTE_DP_ROUTER`` is silently ignored and vLLM routes
with its own rule. So every launcher checks that first (:func:`check_plugin`), before a server starts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from balanceroute.vllm_plugin.config import ROUTER_ENV

ENTRY_POINT = "balanceroute_dp_router"
ENTRY_POINT_GROUP = "vllm.general_plugins"
_REPO = Path(__file__).resolve().parents[2]

_PROBE = (
    "import importlib.metadata as m, json\n"
    f"eps = [e.value for e in m.entry_points(group={ENTRY_POINT_GROUP!r}) if e.name == {ENTRY_POINT!r}]\n"
    "print(json.dumps(eps))\n")


class VllmNotFoundError(FileNotFoundError):
    """No vLLM executable where we looked."""


class PluginNotInstalledError(RuntimeError):
    """The environment vLLM runs in lacks balanceroute's entry point."""


def find_vllm(explicit: str | os.PathLike | None = None, *, venv: str | os.PathLike | None = None) -> Path:
    """The ``vllm`` executable: ``explicit``, else ``$VLLM_BIN``, else ``<venv>/bin/vllm``, else ``vllm`` on PATH.

    The first of these that is given decides: if it is not an executable file, that is an error
    (:class:`VllmNotFoundError`), not a reason to fall back to another vLLM.
    """
    for given, what in ((explicit, "the vllm executable given"), (os.environ.get("VLLM_BIN"), "VLLM_BIN"),
                        (Path(venv) / "bin" / "vllm" if venv else None, "the vLLM virtualenv's")):
        if given:
            path = Path(given).expanduser()
            if path.is_file() and os.access(path, os.X_OK):
                return path.absolute()
            raise VllmNotFoundError(f"{what} ({path}) is not an executable file")
    found = shutil.which("vllm")
    if found is None:
        raise VllmNotFoundError("no vllm executable on PATH; install vLLM (pip install vllm) or name it with "
                                "--vllm-bin / VLLM_BIN / backend.vllm_bin")
    return Path(found)


def python_of(executable: Path) -> Path | None:
    """The Python interpreter a console script such as ``bin/vllm`` runs with (its ``#!`` line), if any."""
    try:
        with open(executable, "rb") as fh:
            first = fh.readline(4096).decode(errors="replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    interpreter = first[2:].split()[0] if first[2:].split() else ""
    return Path(interpreter) if interpreter and Path(interpreter).is_file() else None


def check_plugin(python: str | os.PathLike) -> None:
    """Raise :class:`PluginNotInstalledError` unless ``python``'s environment has balanceroute's entry point
    (it is run from a neutral folder: a checkout in the working directory would shadow the installed metadata)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as neutral:
        out = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, cwd=neutral, env=env,
                             timeout=120, check=False)
    if out.returncode == 0 and json.loads(out.stdout or "[]"):
        return
    raise PluginNotInstalledError(
        f"{ROUTER_ENV} would be ignored: the vLLM environment ({python}) does not have balanceroute's "
        f"{ENTRY_POINT_GROUP} entry point. Install it there: {Path(python).parent / 'pip'} install -e {_REPO} "
        "--no-deps")
