"""``balanceroute plan``: what ``hydra/launcher=slurm`` would request for a run or a sweep, before submitting.

    balanceroute plan -- backend=vllm model=qwen3_30b_a3b parallel.dp=16
    balanceroute plan -- router=br0,jsq_load rate=1,3          # a sweep: one entry per allocation shape
    balanceroute plan --json -- backend=vllm parallel.dp=8,16

Takes run.py's overrides (``hydra/launcher=slurm`` is implied; ``-m`` is ignored), composes each run of the sweep
as the launcher will, and prints per allocation shape: the runs, the resources, the ``#SBATCH`` lines submitit
will write and, for runs that serve a model, the node layout and the command on each node. A value that cannot
become a request ends with one error line naming its key (exit status 2). Nothing is submitted.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from balanceroute.config import register_schemas
from balanceroute.serving.multinode import NodeLayout, check_mode, head_args, headless_args, headless_command
from balanceroute.serving.slurm import srun_on
from balanceroute.serving.vllm import serve_command as vllm_serve_command
from launchers.resources import JobResources, ResourceError, job_resources

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
LAUNCHER = "slurm"
#: Placeholders for what is only known inside the allocation.
HEAD_IP, RPC_PORT = "$HEAD_IP", "$RPC_PORT"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="print what hydra/launcher=slurm would request for a run or sweep (nothing is submitted)",
        description="Compose each run of run.py's overrides as hydra/launcher=slurm will and print the SLURM "
                    "request (nodes, GPUs, CPUs, memory, time, #SBATCH lines) and, for model servers, the node "
                    "layout and the command on each node.")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="run.py overrides, after -- (e.g. -- backend=vllm model=qwen3_30b_a3b parallel.dp=16)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--config-dir", default=str(CONF_DIR), help=f"Hydra config folder (default {CONF_DIR})")
    p.set_defaults(func=run)


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The runs of a sweep: the cartesian product of the comma-separated values, as Hydra's basic sweeper does."""
    parsed = OverridesParser.create().parse_overrides([o for o in overrides if o not in ("-m", "--multirun")])
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(run) for run in itertools.product(*choices)]


def _with_launcher(overrides: list[str]) -> list[str]:
    given = [o for o in overrides if o.split("=", 1)[0] == "hydra/launcher"]
    if not given:
        return [f"hydra/launcher={LAUNCHER}", *overrides]
    if given[-1] != f"hydra/launcher={LAUNCHER}":
        raise ResourceError(f"hydra/launcher: plan describes SLURM submissions (hydra/launcher={LAUNCHER}), "
                            f"got {given[-1]}")
    return overrides


def compose_run(overrides: list[str], config_dir: str) -> DictConfig:
    GlobalHydra.instance().clear()
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=config_dir, job_name="run"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def serve_command(cfg: DictConfig) -> list[str] | None:
    """The deployment's ``vllm serve`` command, built by :func:`balanceroute.serving.vllm.serve_command` from the
    model's ``vllm`` section and the backend settings (None for a model without one); ``$PORT`` where the port
    is chosen at run time."""
    if cfg.model.get("vllm") is None:
        return None
    backend = OmegaConf.to_container(cfg.backend, resolve=True)
    model = OmegaConf.to_container(cfg.model.vllm, resolve=True)
    return vllm_serve_command(backend.get("vllm_bin") or "vllm", model, dp=cfg.parallel.dp, tp=cfg.parallel.tp,
                              ep=cfg.parallel.ep, host=backend.get("host", "0.0.0.0"),
                              port=backend.get("port") or "$PORT", api_server_count=backend.get("api_server_count"),
                              extra_args=backend.get("args") or ())


def multinode_mode(cfg: DictConfig) -> str:
    """``backend.multinode`` (``ray`` unless the backend config says otherwise)."""
    mode = cfg.backend.get("multinode", "ray")
    check_mode(mode)
    return mode


def node_commands(cfg: DictConfig, layout: NodeLayout) -> dict[str, Any]:
    """The command on each node of a model server's layout (placeholders for the head's IP and RPC port)."""
    base = serve_command(cfg)
    if base is None:
        return {"note": f"model {cfg.model.name} has no vllm section: no server command to show"}
    mode = multinode_mode(cfg)
    if layout.nodes == 1:
        return {"mode": "single node", "head": base}
    out: dict[str, Any] = {"mode": mode, "head": [*base, *head_args(layout, mode, HEAD_IP, RPC_PORT)]}
    if mode == "ray":
        out["before"] = [("ray start --head on the first node; ray start --address=$HEAD_IP:<port> through srun "
                          f"on each of the other {layout.nodes - 1} node(s); RAY_ADDRESS set for vllm serve")]
    else:
        out["workers"] = [srun_on(f"<node {i}>", [*headless_command(base),
                                                  *headless_args(layout, i, HEAD_IP, RPC_PORT)])
                          for i in range(1, layout.nodes)]
    return out


def sbatch_lines(res: JobResources, folder: str) -> list[str]:
    """The ``#SBATCH`` lines of the job script submitit will write for ``res``.

    Rendered by submitit's own script writer (a private function, ``_make_sbatch_string``), so the plan cannot
    drift from what is submitted; it needs neither a cluster nor ``srun``.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="<job>", folder=folder, **res.submitit_parameters())
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def build_plan(overrides: list[str], config_dir: str = str(CONF_DIR)) -> dict[str, Any]:
    """The plan as data: ``{"runs": n, "allocations": [{runs, resources, sbatch, layout, commands}, ...]}``."""
    shapes: dict[tuple, dict[str, Any]] = {}
    runs = expand_sweep(_with_launcher(overrides))
    try:
        for run in runs:
            cfg = compose_run(run, config_dir)
            launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
            res = job_resources(launcher, cfg)
            entry = shapes.get(res.key())
            if entry is None:
                entry = shapes[res.key()] = {
                    "runs": [], "resources": res.describe(), "submitit": res.submitit_parameters(),
                    "sbatch": sbatch_lines(res, launcher["submitit_folder"]),
                    "layout": None if res.layout is None else {**vars(res.layout),
                                                               "gpus_used_per_node": res.layout.gpus_used_per_node},
                    "commands": None if res.layout is None else node_commands(cfg, res.layout)}
            entry["runs"].append(" ".join(o for o in run if not o.startswith("hydra/launcher=")) or "(defaults)")
    finally:
        GlobalHydra.instance().clear()
    return {"runs": len(runs), "allocations": list(shapes.values())}


def _print_plan(plan: dict[str, Any]) -> None:
    shapes = plan["allocations"]
    print(f"{plan['runs']} run(s) -> {len(shapes)} allocation shape(s) (one SLURM job per run)")
    for i, shape in enumerate(shapes, start=1):
        print(f"\n[{i}] {shape['resources']}")
        print(f"    runs ({len(shape['runs'])}): " + "; ".join(shape["runs"]))
        print("    " + "\n    ".join(shape["sbatch"]))
        commands = shape["commands"]
        if commands is None:
            continue
        if "note" in commands:
            print(f"    {commands['note']}")
            continue
        print(f"    multi-node mode: {commands['mode']}")
        for step in commands.get("before", []):
            print(f"    {step}")
        print(f"    first node: {shlex.join(commands['head'])}")
        for argv in commands.get("workers", []):
            print(f"    other node: {shlex.join(argv)}")


def run(args: argparse.Namespace) -> int:
    try:
        plan = build_plan(list(args.overrides), args.config_dir)
    except (ResourceError, HydraException, ValueError) as exc:
        print(f"balanceroute plan: error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        _print_plan(plan)
    return 0
