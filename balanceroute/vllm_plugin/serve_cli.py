"""``balanceroute serve``: ``vllm serve`` with a balanceroute policy as its data-parallel router.

    balanceroute serve --model Qwen/Qwen3-30B-A3B --data-parallel-size 4 --tensor-parallel-size 2 \\
        --dp-router jsq_load --host 0.0.0.0 --port 8000 --enable-expert-parallel --max-model-len 16384

Options it does not know (``--enable-expert-parallel`` ...) go to ``vllm serve`` unchanged. It checks the policy
and that the vLLM environment has the plugin installed, sets the plugin's environment
(:mod:`balanceroute.vllm_plugin.config`) and replaces itself with ``vllm serve`` (``exec``: signals and the exit
status are vLLM's own). ``--api-server-count 1`` is added unless given: each API server routes its own share of
the requests and tracks only their KV load, so one front end is what makes the tracked load exact.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from balanceroute.cli_args import key_value
from balanceroute.policies import available_policies
from balanceroute.vllm_plugin.config import RouterConfig
from balanceroute.vllm_plugin.environment import (
    PluginNotInstalledError,
    VllmNotFoundError,
    check_plugin,
    find_vllm,
    python_of,
)

log = logging.getLogger(__name__)


class _PassThroughParser(argparse.ArgumentParser):
    """Keeps the arguments it does not know, in order, in ``vllm_args`` instead of rejecting them."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        namespace.vllm_args = [*getattr(namespace, "vllm_args", []), *extra]
        return namespace, []


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve", help="run vllm serve with a balanceroute policy as its data-parallel router",
        description="Run vllm serve with a balanceroute policy as its data-parallel router (the balanceroute vLLM "
                    "plugin must be installed in vLLM's environment). Options not listed here are passed to vllm "
                    "serve unchanged; --api-server-count 1 is added unless given (exact KV tracking).",
        allow_abbrev=False)
    parser.__class__ = _PassThroughParser  # add_parser builds the parent's class; this one passes extras on
    parser.add_argument("--model", required=True, help="model to serve (Hugging Face name or local folder)")
    parser.add_argument("--data-parallel-size", type=int, default=1, metavar="DP", help="DP engines (default 1)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, metavar="TP", help="GPUs per engine")
    parser.add_argument("--dp-router", required=True, choices=available_policies(), metavar="POLICY",
                        help=f"routing policy: {', '.join(available_policies())}")
    parser.add_argument("--dp-router-param", type=key_value, action="append", default=[], metavar="K=V",
                        help="policy parameter (repeatable), e.g. K=3; values are read as JSON where possible")
    parser.add_argument("--decision-log", type=Path, help="append every routing decision to this JSONL file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--vllm-bin", help="vllm executable (default: $VLLM_BIN, else vllm on PATH)")
    parser.add_argument("--dry-run", action="store_true", help="print the environment and command, do not start")
    parser.set_defaults(func=run, vllm_args=[])
    return parser


def _has_option(args: list[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def serve_command(args: argparse.Namespace, vllm_bin: Path) -> list[str]:
    """The ``vllm serve`` command line for the parsed arguments."""
    cmd = [str(vllm_bin), "serve", args.model, "--data-parallel-size", str(args.data_parallel_size),
           "--tensor-parallel-size", str(args.tensor_parallel_size), "--host", args.host, "--port", str(args.port)]
    if not _has_option(args.vllm_args, "--api-server-count"):
        cmd += ["--api-server-count", "1"]
    return cmd + args.vllm_args


def router_config(args: argparse.Namespace) -> RouterConfig:
    """The router the arguments ask for (ValueError naming a bad parameter or value)."""
    params = dict(args.dp_router_param)
    config = RouterConfig(args.dp_router, params, args.decision_log.absolute() if args.decision_log else None)
    config.build_policy()
    return config


def run(args: argparse.Namespace) -> int:
    try:
        if args.data_parallel_size < 1 or args.tensor_parallel_size < 1:
            raise ValueError(f"--data-parallel-size and --tensor-parallel-size must be >= 1, got "
                             f"{args.data_parallel_size} and {args.tensor_parallel_size}")
        config = router_config(args)
        vllm_bin = find_vllm(args.vllm_bin)
        python = python_of(vllm_bin)
        if python is None:
            log.warning("cannot tell which Python %s runs with; not checking that the plugin is installed there",
                        vllm_bin)
        elif not args.dry_run:
            check_plugin(python)
    except (ValueError, VllmNotFoundError, PluginNotInstalledError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.data_parallel_size == 1:
        log.warning("--data-parallel-size 1: there is only one engine, so the router has nothing to choose")
    env = {**os.environ, **config.to_env()}
    cmd = serve_command(args, vllm_bin)
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in config.to_env().items())
    if args.dry_run:
        print(f"{shown} {shlex.join(cmd)}")
        return 0
    log.info("exec: %s %s", shown, shlex.join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)
    return 0  # not reached
