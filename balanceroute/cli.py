"""The ``balanceroute`` command: one subcommand per backend or tool.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` (which registers the subcommand and
sets ``func`` on it). The library's own are listed here; packages built on the library (``launchers``, for
``balanceroute plan``) add theirs through the entry point group :data:`COMMAND_GROUP` in their pyproject.toml, so
that the library never imports them: a dependency points from them to it, never back. ``balanceroute --help``
lists both.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

#: The library's subcommands and the modules that define them, in the order ``--help`` lists them. A command
#: line naming one imports only its module (``balanceroute sim`` needs neither aiohttp nor Hydra).
SUBCOMMAND_MODULES = {
    "sim": "balanceroute.sim.cli",
    "bench": "balanceroute.bench.cli",
    "prepare-data": "balanceroute.data.cli",
    "serve": "balanceroute.vllm_plugin.serve_cli",
    "emulate": "balanceroute.emulate.cli",
    "proxy": "balanceroute.proxy.cli",
    "calibrate": "balanceroute.calibration.cli",
}
#: Entry point group of subcommands defined outside the library: ``name = "module:add_parser"``.
COMMAND_GROUP = "balanceroute.commands"


def installed_commands() -> list[EntryPoint]:
    """The subcommands installed packages declare under :data:`COMMAND_GROUP`, by name."""
    return sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name)


def build_parser(commands: Iterable[EntryPoint] | None = None, *, only: str | None = None
                 ) -> argparse.ArgumentParser:
    """The parser of every subcommand: the library's, then ``commands`` (default: :func:`installed_commands`);
    with ``only`` (a key of :data:`SUBCOMMAND_MODULES`), of that subcommand alone.

    An entry point that cannot be loaded raises: a subcommand the installation declares should not vanish
    silently from ``--help``.
    """
    parser = argparse.ArgumentParser(
        prog="balanceroute", description="KV-aware data-parallel routing for MoE LLM serving.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if only is not None:
        importlib.import_module(SUBCOMMAND_MODULES[only]).add_parser(sub)
        return parser
    for module in SUBCOMMAND_MODULES.values():
        importlib.import_module(module).add_parser(sub)
    for command in installed_commands() if commands is None else commands:
        command.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(only=chosen if chosen in SUBCOMMAND_MODULES else None).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
