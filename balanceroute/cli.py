"""The ``balanceroute`` command: one subcommand per backend or tool.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` (which registers the subcommand and
sets ``func`` on it); the modules are imported here so ``balanceroute --help`` lists them all.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Modules that define subcommands, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = (
    "balanceroute.sim.cli",
    "balanceroute.bench.cli",
    "balanceroute.data.cli",
    "launchers.plan",
    "balanceroute.vllm_plugin.serve_cli",
    "balanceroute.emulate.cli",
    "balanceroute.proxy.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balanceroute", description="KV-aware data-parallel routing for MoE LLM serving.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
