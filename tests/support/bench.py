"""Small helpers for the benchmark client tests: constant workloads and the ``bench`` subcommand alone."""
from __future__ import annotations

import argparse

import numpy as np

from balanceroute.workload import Workload

#: A ``python -c`` program running only the ``bench`` subcommand, so subprocess tests do not depend on which
#: subcommands ``balanceroute.cli`` registers.
BENCH_MAIN = ("import logging, sys\n"
              "from tests.support.bench import bench_parser\n"
              "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
              "a = bench_parser().parse_args(sys.argv[1:])\n"
              "sys.exit(a.func(a))\n")


def bench_parser() -> argparse.ArgumentParser:
    """An argument parser holding just the ``bench`` subcommand."""
    from balanceroute.bench import cli
    parser = argparse.ArgumentParser(prog="balanceroute")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def make_workload(n: int, *, output_len: int = 8, prompt_len: int = 16, gap_s: float = 0.0,
                  prompts: list[str] | None = None) -> Workload:
    """``n`` requests every ``gap_s`` seconds with constant lengths (optionally with given prompt texts)."""
    return Workload(np.arange(n) * gap_s, np.full(n, prompt_len), np.full(n, output_len),
                    np.zeros(n, dtype=np.int64), prompts)
