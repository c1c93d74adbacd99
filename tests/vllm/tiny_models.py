"""The tiny CPU models of conf/model/tiny_dense.yaml and tiny_moe.yaml, made at test time (no downloads).

Both are served with ``--load-format dummy`` (random weights), so a model folder is only a config, a locally
trained tokenizer and a chat template. ``tiny_dense`` is :mod:`tests.support.make_tiny_model`'s Qwen3;
``tiny_moe`` is the same with its MLPs replaced by 8 experts, top-2 routing (Qwen3-MoE), small enough for two
DP engines with expert parallelism on two CPU cores. CPU-only test support.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.support import vllm_cpu

#: What turns the dense Qwen3 config into a Qwen3-MoE one: every layer sparse, 8 experts of width 64, top 2.
MOE_CONFIG = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_experts": 8,
              "num_experts_per_tok": 2, "moe_intermediate_size": 64, "decoder_sparse_step": 1, "mlp_only_layers": [],
              "norm_topk_prob": True}


def make_tiny_dense(dest: Path) -> Path:
    return vllm_cpu.make_tiny_model(dest)


def make_tiny_moe(dest: Path) -> Path:
    make_tiny_dense(dest)
    config_path = dest / "config.json"
    config = json.loads(config_path.read_text())
    config.update(MOE_CONFIG)
    config_path.write_text(json.dumps(config, indent=1))
    return dest
