"""``balanceroute``'s subcommands: the library's own, plus those installed packages declare as entry points
(``balanceroute plan``, from launchers/), which the library finds without importing them by name."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from balanceroute import cli

REPO = Path(__file__).resolve().parents[1]


def declared_commands() -> list[EntryPoint]:
    """The ``balanceroute.commands`` entry points pyproject.toml declares (the installed metadata, after
    ``pip install -e .``, holds the same)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    group = project["entry-points"][cli.COMMAND_GROUP]
    return [EntryPoint(name, value, cli.COMMAND_GROUP) for name, value in group.items()]


def test_an_entry_point_adds_its_subcommand_after_the_librarys(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", {"sim": "balanceroute.sim.cli"})
    parser = cli.build_parser([EntryPoint("prepare-data", "balanceroute.data.cli:add_parser", cli.COMMAND_GROUP)])
    assert parser.format_help().index("sim") < parser.format_help().index("prepare-data")
    args = parser.parse_args(["prepare-data", "--offline"])
    assert args.command == "prepare-data" and args.offline


def test_installed_commands_are_listed_by_name(monkeypatch):
    found = [EntryPoint(name, f"m:{name}", cli.COMMAND_GROUP) for name in ("zeta", "alpha")]
    monkeypatch.setattr(cli, "entry_points", lambda group: found if group == cli.COMMAND_GROUP else [])
    assert [ep.name for ep in cli.installed_commands()] == ["alpha", "zeta"]


def test_a_declared_command_that_cannot_load_fails_loudly():
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        cli.build_parser([EntryPoint("gone", "no_such_module:add_parser", cli.COMMAND_GROUP)])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``balanceroute ARGS`` with pyproject.toml's declared commands, in a fresh interpreter whose path starts at
    this checkout (as an editable install of it would resolve ``launchers``)."""
    declared = [(ep.name, ep.value) for ep in declared_commands()]
    code = ("import sys; from importlib.metadata import EntryPoint; from balanceroute import cli; "
            f"cli.installed_commands = lambda: [EntryPoint(n, v, cli.COMMAND_GROUP) for n, v in {declared!r}]; "
            "sys.exit(cli.main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_pyproject_declares_plan_and_balanceroute_plan_runs_it():
    assert [(ep.name, ep.value) for ep in declared_commands()] == [("plan", "launchers.plan:add_parser")]
    helped = run_cli("--help")
    assert helped.returncode == 0 and "plan" in helped.stdout and "proxy" in helped.stdout
    planned = run_cli("plan", "--json", "--", "backend=vllm", "model=qwen3_30b_a3b", "parallel.dp=16")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["runs"] == 1 and [a["submitit"]["nodes"] for a in plan["allocations"]] == [2]


def test_a_command_line_naming_a_subcommand_imports_only_its_module():
    """``balanceroute sim`` starts without the HTTP stack and Hydra the other subcommands import."""
    code = ("import sys, balanceroute.cli as c; parser = c.build_parser(only='sim'); "
            "print(sorted(m for m in ('aiohttp', 'hydra', 'balanceroute.bench.cli') if m in sys.modules)); "
            "print(parser.parse_args(['sim', '--num-workers', '2']).command)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.split("\n")[:2] == ["[]", "sim"]
