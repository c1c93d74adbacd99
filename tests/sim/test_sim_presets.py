"""Model presets: derivations, lookup and validated overrides."""
from __future__ import annotations

import dataclasses
import math

import pytest

from balanceroute.sim.presets import H100_BW, H200_BW, PRESETS, ModelPreset, get_preset

MOE = ("qwen3_30b_a3b", "deepseek_v3", "deepseek_v4_flash")


def test_presets_are_the_documented_models():
    assert set(PRESETS) == {"tiny", "qwen3_0_6b", "qwen3_30b_a3b", "qwen3_30b_a3b_attn", "deepseek_v3",
                            "deepseek_v4_flash"}
    for name, preset in PRESETS.items():
        assert get_preset(name) is preset and preset.name == name and preset.description


def test_the_attention_dominated_preset_is_a_labelled_sensitivity_setting():
    """It keeps Qwen3-30B-A3B's attention cost and limits and drops the shared and most fixed step costs, so a
    step is nearly a * max load; its description says it is not a hardware estimate."""
    attn, base = get_preset("qwen3_30b_a3b_attn"), get_preset("qwen3_30b_a3b")
    assert "sensitivity" in attn.description
    assert (attn.a, attn.max_num_seqs, attn.kv_capacity_tokens) == (base.a, base.max_num_seqs, base.kv_capacity_tokens)
    assert attn.b == 0 and attn.c0 + attn.cw < (base.c0 + base.cw) / 5


def test_attention_coefficient_is_kv_bytes_over_hbm_bandwidth():
    assert get_preset("qwen3_0_6b").a == pytest.approx(2 * 28 * 8 * 128 * 2 / H100_BW)
    assert get_preset("qwen3_30b_a3b").a == pytest.approx(2 * 48 * 4 * 128 * 2 / H100_BW)
    assert get_preset("deepseek_v3").a == pytest.approx(61 * (512 + 64) * 2 / H200_BW)  # MLA latent + rope key


@pytest.mark.parametrize("name", MOE)
def test_moe_presets_use_the_documented_shared_ratio(name):
    preset = get_preset(name)
    assert preset.b == pytest.approx(0.5 * preset.a) and preset.c0 > 0


def test_dense_preset_has_no_expert_parallel_terms():
    dense = get_preset("qwen3_0_6b")
    assert dense.b == 0 and dense.c0 == 0


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown model preset 'llama'; valid presets: tiny, qwen3_0_6b"):
        get_preset("llama")


def test_overrides_return_a_validated_copy():
    tiny = get_preset("tiny")
    changed = tiny.with_overrides(a=0.0, kv_capacity_tokens=512, external_prefill_tokens_per_s=math.inf)
    assert (changed.a, changed.kv_capacity_tokens, changed.kv_capacity_blocks) == (0.0, 512, 32)
    assert tiny.a == 1e-3  # frozen original untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.a = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("overrides, match", [
    (dict(alpha=1.0), "unknown override.*alpha.*valid keys: a, b, c0"),
    (dict(name="x"), "unknown override.*name"),
    (dict(a=-1e-9), "a must be a number >= 0"),
    (dict(p=math.nan), "p must be a number >= 0"),
    (dict(cw=math.inf), "cw must be a number >= 0"),
    (dict(kv_capacity_tokens=0), "kv_capacity_tokens must be an integer >= 1"),
    (dict(block_size=2.5), "block_size must be an integer"),
    (dict(max_num_seqs=True), "max_num_seqs must be an integer"),
    (dict(external_prefill_tokens_per_s=0.0), "external_prefill_tokens_per_s must be a number > 0"),
    (dict(max_num_batched_tokens=4), r"max_num_batched_tokens \(4\) must be >= max_num_seqs \(8\)"),
])
def test_bad_overrides_name_the_key_and_the_valid_range(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_preset("tiny").with_overrides(**overrides)


def test_a_preset_built_directly_is_validated_too():
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        ModelPreset("x", 1e-3, 0, 0, 0, 0, kv_capacity_tokens=64, block_size=0, max_num_seqs=1,
                    max_num_batched_tokens=1, external_prefill_tokens_per_s=1.0)


def test_front_end_latency_delays_what_the_client_sees_and_nothing_else():
    """frontend_latency_s moves every first and last token the client sees by the same amount: TTFT and E2EL grow
    by it, TPOT, routing and the engine's steps stay as they were."""
    from balanceroute.policies import make_policy
    from balanceroute.sim import SimConfig, simulate
    from balanceroute.workload import synthetic

    workload = synthetic(num_requests=50, rate=10.0, prompt_mean=100, output_mean=20, seed=4)
    base, later = (simulate(workload, make_policy("jsq_load"), SimConfig(
        num_workers=2, model=get_preset("tiny").with_overrides(frontend_latency_s=latency)))
        for latency in (0.0, 0.05))
    assert (later.requests["worker"] == base.requests["worker"]).all()
    for column in ("first_token_s", "finish_s"):
        assert (later.requests[column] - base.requests[column]).to_numpy() == pytest.approx(0.05, abs=1e-12)
    assert later.summary["mean_ttft_ms"] == pytest.approx(base.summary["mean_ttft_ms"] + 50.0)
    assert later.summary["mean_tpot_ms"] == pytest.approx(base.summary["mean_tpot_ms"])
    assert later.summary["num_steps"] == base.summary["num_steps"]
