"""``balanceroute proxy``: an OpenAI-compatible routing proxy in front of independent servers.

    balanceroute proxy --targets http://127.0.0.1:8001,http://127.0.0.1:8002 --router br0 --port 9000
    balanceroute proxy --targets ... --router br0 --dispatch pool --max-num-seqs 64
    balanceroute proxy --targets ... --router br_h --router-param H=32 --router-param predictor=oracle

Prints ``listening on URL`` once it accepts requests. Exit status 0 after a clean shutdown (SIGTERM/SIGINT),
2 for bad arguments (the message names the bad value and the valid ones).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from balanceroute.cli_args import int_at_least, key_value, positive_number
from balanceroute.policies import available_policies
from balanceroute.policies.dispatch import DISPATCH_MODES
from balanceroute.protocol.tokenizer import load_tokenizer
from balanceroute.proxy.server import ProxyConfig, RoutingProxy
from balanceroute.proxy.service import serve

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")






def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "proxy", help="OpenAI-compatible routing proxy in front of independent vLLM servers",
        description="Route /v1/completions and /v1/chat/completions among backends with a balanceroute policy, "
                    "tracking each backend's KV load from the requests it routes (docs/proxy.md).",
        epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", required=True, metavar="URL,URL,...",
                   help="backend base URLs, comma-separated (e.g. http://127.0.0.1:8001); index = worker")
    p.add_argument("--router", default="jsq_load", metavar="NAME",
                   help=f"routing policy (default jsq_load): {', '.join(available_policies())}")
    p.add_argument("--router-param", type=key_value, action="append", default=[], metavar="K=V",
                   help="policy parameter, repeatable (values parsed as JSON where possible: 4, 0.9, true)")
    p.add_argument("--dispatch", default="on_arrival", choices=DISPATCH_MODES,
                   help="on_arrival: route each request when it arrives; pool: hold requests in the proxy and "
                        "place them as backends free slots (needs --max-num-seqs)")
    p.add_argument("--max-num-seqs", type=int_at_least(1), default=None,
                   metavar="N",
                   help="requests each backend runs at once (its vLLM --max-num-seqs): the pool's slots, and "
                        "free_slots in the policy's snapshot")
    p.add_argument("--tokenizer", default=None, metavar="NAME_OR_DIR",
                   help="count prompt tokens with this tokenizer (default: estimate UTF-8 bytes / 4; the "
                        "backend's usage corrects either)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_at_least(0, 65535),
                   default=9000, help="port to bind (default 9000; 0: any free port)")
    p.add_argument("--seed", type=int, default=0, help="policy seed (default 0)")
    p.add_argument("--health-interval", type=positive_number(), default=2.0, metavar="S",
                   help="seconds between health checks of every backend (default 2)")
    p.add_argument("--health-timeout", type=positive_number(), default=2.0, metavar="S",
                   help="a /health check failing to answer within S seconds fails (default 2)")
    p.add_argument("--connect-timeout", type=positive_number(), default=5.0, metavar="S",
                   help="seconds to connect to a backend before trying another (default 5)")
    p.add_argument("--request-timeout", type=positive_number(), default=None, metavar="S",
                   help="upstream total time per request (default: none)")
    p.add_argument("--grace", type=positive_number(), default=30.0, metavar="S",
                   help="on SIGTERM, seconds requests in flight get to finish (default 30)")
    p.add_argument("--wandb-project", default=None, metavar="NAME",
                   help="log per-backend load over time to this W&B project")
    p.add_argument("--wandb-mode", default="online", choices=WANDB_MODES, help="W&B mode (default online)")
    p.add_argument("--wandb-dir", default="proxy-run", metavar="DIR", help="folder for W&B's files")
    p.add_argument("--wandb-interval", type=positive_number(), default=1.0, metavar="S",
                   help="seconds between load samples (default 1)")
    p.set_defaults(func=run)
    return p


def build_proxy(args: argparse.Namespace) -> RoutingProxy:
    """The proxy the arguments describe; ValueError naming a bad value."""
    params = dict(args.router_param)
    config = ProxyConfig(
        targets=tuple(t for t in args.targets.split(",") if t.strip()), router=args.router, router_params=params,
        dispatch=args.dispatch, max_num_seqs=args.max_num_seqs, seed=args.seed,
        health_interval_s=args.health_interval, health_timeout_s=args.health_timeout,
        connect_timeout_s=args.connect_timeout, request_timeout_s=args.request_timeout)
    return RoutingProxy(config, tokenizer=load_tokenizer(args.tokenizer) if args.tokenizer else None)


def _tracker(args: argparse.Namespace, proxy: RoutingProxy):
    if not args.wandb_project:
        return None
    from balanceroute.tracking import make_tracker
    c = proxy.config
    config = {"backend": "proxy", "targets": list(c.targets), "router": {"name": c.router, **c.router_params},
              "dispatch": c.dispatch, "max_num_seqs": c.max_num_seqs, "seed": c.seed}
    return make_tracker({"name": "wandb", "project": args.wandb_project, "mode": args.wandb_mode},
                        run_dir=args.wandb_dir, config=config, name=f"proxy-{c.router}")


def run(args: argparse.Namespace) -> int:
    try:
        proxy = build_proxy(args)
        tracker = _tracker(args, proxy)
    except ValueError as exc:
        print(f"balanceroute proxy: error: {exc}", file=sys.stderr)
        return 2

    def ready(url: str) -> None:
        print(f"listening on {url}", flush=True)

    try:
        asyncio.run(serve(proxy, host=args.host, port=args.port, grace_s=args.grace, on_ready=ready,
                          tracker=tracker, load_interval_s=args.wandb_interval))
    except OSError as exc:
        print(f"balanceroute proxy: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if tracker is not None:
            tracker.finish()
    return 0
