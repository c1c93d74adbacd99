"""``balanceroute emulate``: serve an emulated vLLM DP fleet whose timing follows the simulator's step model.

    balanceroute emulate --ranks 4 --model qwen3_30b_a3b --port 8000              # front end :8000, ranks :8001-8004
    balanceroute emulate --ranks 8 --model qwen3_0_6b --no-barrier --time-scale 0.1 --router jsq_load

It prints the URLs (one line each: ``front URL`` then ``rank G URL``) and serves until SIGTERM or SIGINT, then
closes every port (open requests are cancelled) and exits 0. A bad value ends with one error line naming it,
exit status 2. See docs/emulate.md.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from balanceroute.cli_args import int_at_least, key_value, positive_number
from balanceroute.emulate.engine import LiveEngine
from balanceroute.emulate.server import EmulatedFleet
from balanceroute.policies import make_policy
from balanceroute.protocol.tokenizer import load_tokenizer
from balanceroute.sim.presets import PRESETS, ModelPreset, get_preset

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "emulate", help="serve an emulated vLLM DP fleet (OpenAI API) timed by the simulator's step model",
        description="Serve G emulated vLLM data-parallel ranks: a DP front end on --port (routing with --router) "
                    "and rank g's own endpoint on --port + 1 + g. Token timing comes from the simulator's "
                    "scheduler and step model, run against the wall clock.")
    p.add_argument("--ranks", type=int_at_least(1), default=8, metavar="G", help="DP ranks (default 8)")
    p.add_argument("--model", default="qwen3_30b_a3b", help=f"step-model preset: {', '.join(PRESETS)}")
    p.add_argument("--model-param", type=key_value, action="append", default=[], metavar="K=V",
                   help="override a preset coefficient or limit, repeatable (e.g. b=0, max_num_seqs=64)")
    p.add_argument("--port", type=int_at_least(0, 65535), default=8000, metavar="P",
                   help="front-end port; rank g gets P+1+g (0: the OS picks every port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    barrier = p.add_mutually_exclusive_group()
    barrier.add_argument("--barrier", dest="barrier", action="store_true", default=True,
                         help="all ranks step together, the EP case (default)")
    barrier.add_argument("--no-barrier", dest="barrier", action="store_false",
                         help="each rank steps on its own clock (dense models, independent servers)")
    p.add_argument("--time-scale", type=positive_number(), default=1.0, metavar="X",
                   help="multiply every modelled duration by X on the wall clock (0.1: ten times faster than the "
                        "modelled GPU; default 1)")
    p.add_argument("--router", default="vllm_default", help="policy of the front end (default vllm_default)")
    p.add_argument("--router-param", type=key_value, action="append", default=[], metavar="K=V",
                   help="policy parameter, repeatable (values parsed as JSON where possible)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of randomised policies (default 0)")
    p.add_argument("--served-model-name", default=None, metavar="N",
                   help="the model name requests must use (default: the preset's name)")
    p.add_argument("--max-model-len", type=int_at_least(2), default=None, metavar="TOKENS",
                   help="longest prompt + max_tokens accepted (default: one rank's KV capacity)")
    p.add_argument("--tokenizer", default=None,
                   help="count text prompts with this tokenizer (default: one token per whitespace-separated "
                        "word, what the benchmark client sends without a tokenizer)")
    p.set_defaults(func=run)






def build_fleet(args: argparse.Namespace) -> EmulatedFleet:
    """The engine and fleet the arguments describe; ValueError naming a bad value."""
    preset: ModelPreset = get_preset(args.model)
    overrides = dict(args.model_param)
    if overrides:
        preset = preset.with_overrides(**overrides)
    policy = make_policy(args.router, **{"seed": args.seed, **dict(args.router_param)})
    engine = LiveEngine(preset, args.ranks, policy, barrier=args.barrier, time_scale=args.time_scale)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    return EmulatedFleet(engine, served_model_name=args.served_model_name or preset.name,
                         max_model_len=args.max_model_len, tokenizer=tokenizer)


def run(args: argparse.Namespace) -> int:
    try:
        fleet = build_fleet(args)
    except ValueError as exc:
        print(f"balanceroute emulate: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(fleet, args.host, args.port))
    except OSError as exc:  # a port in use
        print(f"balanceroute emulate: error: cannot listen on {args.host}:{args.port}..{args.port + args.ranks}: "
              f"{exc}", file=sys.stderr)
        return 2
    return 0


async def _serve(fleet: EmulatedFleet, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    urls = await fleet.start(host, port)
    engine = fleet.engine
    print(f"front {urls.front}", flush=True)
    for g, url in enumerate(urls.ranks):
        print(f"rank {g} {url}", flush=True)
    log.info("emulating %d ranks of %s (%s, time scale %g, front-end router %s); model name %r", engine.num_workers,
             engine.model.name, "EP barrier" if engine.barrier else "no barrier", engine.time_scale,
             engine.router.policy.name, fleet.served_model_name)
    await stop.wait()
    log.info("shutting down: %s", engine.stats())
    await fleet.stop()
