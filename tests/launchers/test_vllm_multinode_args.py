"""The multi-node ``vllm serve`` commands (Ray DP and native headless) checked by vLLM's own argument parser in
the vllm-cpu virtualenv: the flags exist, validate, and give vLLM the layout we meant."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from balanceroute.serving.multinode import NodeLayout, head_args, headless_args, headless_command
from balanceroute.serving.vllm import serve_command
from tests.support import vllm_cpu

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(vllm_cpu.skip_reason() is not None,
                                                   reason=vllm_cpu.skip_reason() or "")]

PARSE = Path(__file__).with_name("vllm_parse.py")
#: A local folder as the model: the engine arguments resolve a hub name through the (offline) hub, a folder as is.
MODEL = {"model": str(Path(__file__).parent), "max_model_len": 32768, "gpu_memory_utilization": 0.9}
HEAD_IP, RPC_PORT = "10.1.2.3", 13345


def vllm_parse(commands: list[list[str]]) -> list[dict]:
    proc = subprocess.run([str(vllm_cpu.venv_path() / "bin" / "python"), str(PARSE)], input=json.dumps(commands),
                          capture_output=True, text=True, env=vllm_cpu.server_env(), timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


LAYOUTS = ((16, 1), (8, 2), (24, 1))  # 2 nodes x 8 ranks, 2 nodes x 4 ranks of TP 2, 3 nodes x 8 ranks


def commands_for(dp: int, tp: int) -> tuple[NodeLayout, list[str], list[list[str]]]:
    """The layout on 8-GPU nodes, the deployment's base command, and [ray head, native head, headless...]."""
    layout = NodeLayout.plan(dp, tp, gpus_per_node=8)
    base = serve_command("vllm", MODEL, dp=dp, tp=tp, ep=True, host="127.0.0.1", port=8000, api_server_count=1)
    commands = [[*base, *head_args(layout, "ray", HEAD_IP)], [*base, *head_args(layout, "native", HEAD_IP, RPC_PORT)]]
    commands += [[*headless_command(base), *headless_args(layout, i, HEAD_IP, RPC_PORT)]
                 for i in range(1, layout.nodes)]
    return layout, base, commands


def test_multinode_commands_parse_to_the_intended_layout_and_bad_ones_fail():
    built = [commands_for(dp, tp) for dp, tp in LAYOUTS]
    base = built[0][1]
    rejects = [[*base, "--data-parallel-backnd", "ray"], [*base, "--data-parallel-size-local", "eight"]]
    parsed = vllm_parse([cmd for _, _, commands in built for cmd in commands] + rejects)
    assert all("error" in p for p in parsed[-len(rejects):])  # the check is not vacuous
    for layout, base, commands in built:
        ray_head, native_head, *workers = parsed[:len(commands)]
        parsed = parsed[len(commands):]
        common = {"model": MODEL["model"], "data_parallel_size": layout.dp, "tensor_parallel_size": layout.tp,
                  "enable_expert_parallel": True, "data_parallel_size_local": layout.ranks_per_node,
                  "data_parallel_address": HEAD_IP}
        assert ray_head == {**ray_head, **common, "data_parallel_backend": "ray", "headless": False}
        assert native_head == {**native_head, **common, "data_parallel_backend": "mp",
                               "data_parallel_rpc_port": RPC_PORT, "data_parallel_start_rank": None, "headless": False}
        assert len(workers) == layout.nodes - 1
        for i, worker in enumerate(workers, start=1):
            assert worker == {**worker, **common, "data_parallel_rpc_port": RPC_PORT, "headless": True,
                              "data_parallel_start_rank": i * layout.ranks_per_node, "api_server_count": None}
        # vLLM refuses --api-server-count on a headless node: headless_command removed it from the base.
        assert "--api-server-count" in base
