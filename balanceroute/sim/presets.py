"""Model presets: the step-model coefficients of one DP worker serving a given model.

The simulator's step model (ALGORITHMS.md, section 3) charges worker g, per engine step,

    t_g = c_w + a * L_g + p * prefill_tokens_g

and the barrier-synchronised step lasts ``T = max_g t_g + b * mean_g L_g + c_0``. A :class:`ModelPreset` holds those
coefficients (seconds, seconds per token) and the worker's scheduler limits. Each preset's comment shows how its
numbers were derived, so they can be re-derived for other hardware:

- ``a`` (attention over resident KV): decode is memory-bound, each step reads every resident KV byte once, so
  ``a = KV bytes per token / HBM bandwidth``.
- ``b`` (the shared, not load-balanced term per mean KV token: EP all-to-all payload, expert FFN and TP work that
  grows with the batch): ``b = 0.5 * a``, the realistic MoE setting of ALGORITHMS.md; dense models have ``b = 0``.
- ``c_w`` (per-worker fixed cost, paid even by an idle worker running a dummy batch): the bytes of weights one
  worker reads per step (replicated attention/embedding weights plus its expert shard, every expert being touched
  at realistic batch sizes) / HBM bandwidth.
- ``c_0`` (fixed shared cost): EP dispatch and combine all-to-alls, two per MoE layer, latency-bound at decode
  batch sizes (~30-60 us each on NVLink).
- ``p`` (prefill, compute-bound): ``2 * active parameters`` FLOPs per token / (peak FLOP/s * MFU).
- ``kv_capacity_tokens``: (HBM * 0.9 gpu_memory_utilization - weights - ~4-5 GB activations/CUDA graphs) / KV bytes
  per token.

Scheduler limits follow vLLM V1 defaults: ``max_num_seqs`` 256, ``max_num_batched_tokens`` 8192 (chunked prefill),
block size 16 (64 for MLA/FlashMLA, 256 for DeepSeek-V4). Hardware figures: H100 SXM 80 GB, 3.35 TB/s, 989 TFLOP/s
BF16 dense; H200 141 GB, 4.8 TB/s, 1979 TFLOP/s FP8 dense. These are first-principles estimates for comparing
routing policies, not a performance model of any particular release: what matters for routing is the ratio of the
load-dependent terms (``a``, ``p``) to the fixed ones (``c_w``, ``c_0``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from balanceroute.policies.checks import int_problem, number_problem

#: Fields a user may override (everything but the name), with the smallest allowed value and whether it must be
#: an integer; the bound is inclusive unless listed in _STRICT.
_LIMITS: dict[str, tuple[float, bool]] = {
    "a": (0.0, False), "b": (0.0, False), "c0": (0.0, False), "cw": (0.0, False), "p": (0.0, False),
    "kv_capacity_tokens": (1, True), "block_size": (1, True), "max_num_seqs": (1, True),
    "max_num_batched_tokens": (1, True), "external_prefill_tokens_per_s": (0.0, False),
    "prefill_pool_tokens_per_s": (0.0, False), "frontend_latency_s": (0.0, False),
}
_STRICT = {"external_prefill_tokens_per_s", "prefill_pool_tokens_per_s"}
_INFINITE_OK = {"external_prefill_tokens_per_s", "prefill_pool_tokens_per_s"}
#: Fields for which None is allowed (and means "unlimited").
_NONE_OK = {"prefill_pool_tokens_per_s"}


@dataclass(frozen=True)
class ModelPreset:
    """Step-model coefficients and scheduler limits of one DP worker (see the module docstring).

    - ``a``, ``b``, ``c0``, ``cw``, ``p``: seconds per KV token, per mean KV token, per step, per worker-step and
      per prefill token.
    - ``kv_capacity_tokens``: KV cache per worker, in tokens; allocated in blocks of ``block_size`` tokens.
    - ``max_num_seqs``: running requests per worker (batch slots).
    - ``max_num_batched_tokens``: tokens one worker computes per step (decodes + prefill chunks); must be at least
      ``max_num_seqs`` as in vLLM, so that every running decode always fits in a step.
    - ``external_prefill_tokens_per_s``: prefill throughput that one request sees on the separate prefill
      instances of a disaggregated deployment (``inf``: instantaneous).
    - ``prefill_pool_tokens_per_s``: total prefill throughput of those instances, which serve requests first come,
      first served (:mod:`balanceroute.sim.prefill`); ``None`` (or ``inf``): ample, never a bottleneck.
    - ``frontend_latency_s``: what the serving front end adds to every request's latency outside the engine
      steps (HTTP, tokenization, the hop to the engine, detokenization, streaming): added to the times the client
      sees its first and last token, so TTFT and E2EL grow by it and TPOT does not. 0 in the hardware presets;
      ``balanceroute calibrate`` measures it (docs/fidelity.md).
    """

    name: str
    a: float
    b: float
    c0: float
    cw: float
    p: float
    kv_capacity_tokens: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    external_prefill_tokens_per_s: float
    prefill_pool_tokens_per_s: float | None = None
    frontend_latency_s: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        for key in _LIMITS:
            _check_value(self.name, key, getattr(self, key))
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"model preset {self.name!r}: max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs}), as vLLM requires")

    @property
    def kv_capacity_blocks(self) -> int:
        """Whole KV blocks per worker (a partial block cannot be allocated)."""
        return self.kv_capacity_tokens // self.block_size

    def fits(self, prompt_len: int, output_len: int) -> bool:
        """Whether a request's KV fits one worker: its prompt and every output token but the last (which is
        sampled, never stored) in whole blocks."""
        return prompt_len + output_len - 1 <= self.kv_capacity_blocks * self.block_size

    def with_overrides(self, **overrides: Any) -> ModelPreset:
        """A copy with some coefficients or limits changed (the Hydra ``model.*`` overrides).

        Raises ValueError naming an unknown key (and the valid ones) or an out-of-range value.
        """
        unknown = sorted(set(overrides) - set(_LIMITS) - {"description"})
        if unknown:
            raise ValueError(f"model preset {self.name!r}: unknown override(s) {', '.join(unknown)}; "
                             f"valid keys: {', '.join(list(_LIMITS) + ['description'])}")
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_value(preset: str, key: str, value: Any) -> None:
    if value is None and key in _NONE_OK:
        return
    minimum, integer = _LIMITS[key]
    if integer:
        problem = int_problem(value, int(minimum))
    else:
        problem = number_problem(value, minimum, low_open=key in _STRICT, allow_inf=key in _INFINITE_OK,
                                 also=" or None" if key in _NONE_OK else "")
    if problem:
        raise ValueError(f"model preset {preset!r}: {key} {problem}")


H100_BW, H200_BW = 3.35e12, 4.8e12          # HBM bytes/s
H100_BF16, H200_FP8 = 989e12, 1979e12       # dense peak FLOP/s

# ---- tiny: round numbers for hand-computed tests ------------------------------------------------------------------
# a step of a worker holding L tokens and prefilling P tokens takes 0.010 + 0.001 L + 0.0001 P seconds, plus
# 0.0005 * mean L + 0.002 shared; 16-token blocks, 4096 tokens (256 blocks), 8 slots, 256 tokens per step.
TINY = ModelPreset(
    name="tiny", a=1e-3, b=5e-4, c0=2e-3, cw=1e-2, p=1e-4, kv_capacity_tokens=4096, block_size=16,
    max_num_seqs=8, max_num_batched_tokens=256, external_prefill_tokens_per_s=1e4,
    description="round numbers for tests and hand computation")

# ---- Qwen3-0.6B, dense, one H100 per independent DP worker ----------------------------------------------------------
# KV: 2 (K,V) x 28 layers x 8 KV heads x 128 dims x 2 B = 114,688 B/token -> a = 114688 / 3.35e12 = 3.42e-8 s.
# Dense, no EP: b = 0, c0 = 0 (nothing shared between workers; run it with barrier=False).
# cw: 0.6B params x 2 B = 1.2 GB of weights / 3.35e12 = 0.36 ms, plus ~1.5 ms per-step scheduling, sampling and
#     CUDA-graph launch overhead that dominates a model this small (assumption) -> 1.9 ms.
# p: 2 x 0.6e9 FLOP / (989e12 x 0.4 MFU, small GEMMs) = 3.0e-6 s/token.
# KV capacity: (72 GB - 1.2 GB weights - 4 GB) / 114,688 B = 580,000 tokens.
QWEN3_0_6B = ModelPreset(
    name="qwen3_0_6b", a=114_688 / H100_BW, b=0.0, c0=0.0, cw=1.9e-3, p=2 * 0.6e9 / (H100_BF16 * 0.4),
    kv_capacity_tokens=580_000, block_size=16, max_num_seqs=256, max_num_batched_tokens=8192,
    external_prefill_tokens_per_s=H100_BF16 * 0.4 / (2 * 0.6e9),
    description="Qwen3-0.6B dense on H100, independent DP workers (no EP terms)")

# ---- Qwen3-30B-A3B, MoE, EP over 8 H100 with DP attention -----------------------------------------------------------
# KV: 2 x 48 layers x 4 KV heads x 128 x 2 B = 98,304 B/token -> a = 98304 / 3.35e12 = 2.93e-8 s; b = 0.5 a.
# cw: per worker, replicated attention 48 x (2048x4096 + 2x2048x512 + 4096x2048) = 0.91B params, LM head 0.31B,
#     expert shard 48 x 128 x 3 x 2048 x 768 / 8 = 3.62B -> 4.84B x 2 B = 9.7 GB / 3.35e12 = 2.9 ms.
# c0: 48 MoE layers x 2 all-to-alls x ~40 us = 3.8 ms.
# p: 2 x 3.3B active FLOP / (989e12 x 0.5 MFU) = 1.33e-5 s/token.
# KV capacity: (72 GB - 10.3 GB weights stored - 4 GB) / 98,304 B = 587,000 -> 580,000 tokens.
QWEN3_30B_A3B = ModelPreset(
    name="qwen3_30b_a3b", a=98_304 / H100_BW, b=0.5 * 98_304 / H100_BW, c0=48 * 2 * 40e-6, cw=9.7e9 / H100_BW,
    p=2 * 3.3e9 / (H100_BF16 * 0.5), kv_capacity_tokens=580_000, block_size=16, max_num_seqs=256,
    max_num_batched_tokens=8192, external_prefill_tokens_per_s=H100_BF16 * 0.5 / (2 * 3.3e9),
    description="Qwen3-30B-A3B MoE, DP attention + EP8 on H100")

# ---- Sensitivity setting: Qwen3-30B-A3B with an attention-dominated step ---------------------------------------------
# NOT a hardware estimate. The realistic presets leave 2-5% of GPU time idle at the barrier under JSQ, because
# fixed per-step costs (weights read, all-to-all latency) and the shared b term dwarf a worker's attention over
# its KV excess. The published 7-15% gains need steps that the straggler's attention dominates. This preset keeps
# qwen3_30b_a3b's attention cost a and its limits, and shrinks everything else: b = 0 (no shared per-token
# term), c0 = 0.2 ms, cw = 0.5 ms. A step is then nearly a * max_g L_g, so the barrier idle approaches its
# ceiling, imbalance / (G * max_g L_g): the most KV balance can buy in a given regime. Use it beside
# qwen3_30b_a3b to bound a gain from above, never alone.
QWEN3_30B_A3B_ATTN = dataclasses.replace(
    QWEN3_30B_A3B, name="qwen3_30b_a3b_attn", b=0.0, c0=2e-4, cw=5e-4,
    description="sensitivity setting: Qwen3-30B-A3B's attention cost with fixed and shared step costs removed")

# ---- DeepSeek-V3 (671B, 37B active), EP over 8 H200, FP8 weights, BF16 MLA KV ----------------------------------------
# KV (MLA latent): 61 layers x (512 + 64) x 2 B = 70,272 B/token -> a = 70272 / 4.8e12 = 1.46e-8 s; b = 0.5 a.
# cw: per worker, non-expert weights read (~16.3B: MLA, dense layers, shared experts, LM head) plus the expert shard
#     58 MoE layers x 256 x 3 x 7168 x 2048 / 8 = 81.7B -> 98 GB in FP8 / 4.8e12 = 20.4 ms.
# c0: 58 MoE layers x 2 all-to-alls x ~60 us = 7.0 ms.
# p: 2 x 37B FLOP / (1979e12 x 0.4 MFU) = 9.3e-5 s/token (DeepSeek's published ~9.2k prefill tokens/s per H800
#    GPU, 1.1e-4 s/token, agrees).
# KV capacity: (127 GB - 99 GB weights - 5 GB) / 70,272 B = 327,000 -> 320,000 tokens; FlashMLA block size 64.
DEEPSEEK_V3 = ModelPreset(
    name="deepseek_v3", a=70_272 / H200_BW, b=0.5 * 70_272 / H200_BW, c0=58 * 2 * 60e-6, cw=98e9 / H200_BW,
    p=2 * 37e9 / (H200_FP8 * 0.4), kv_capacity_tokens=320_000, block_size=64, max_num_seqs=256,
    max_num_batched_tokens=8192, external_prefill_tokens_per_s=H200_FP8 * 0.4 / (2 * 37e9),
    description="DeepSeek-V3 MoE (MLA KV), DP attention + EP8 on H200")

# ---- DeepSeek-V4-Flash (284B, 13B active), EP over 8 H200 ------------------------------------------------------------
# Architecture (public model card, NeMo and vLLM docs): 43 layers, 256 routed + 1 shared expert, top-6; hybrid
# attention: a 128-token raw sliding window per layer, CSA layers (1 compressed KV row per 4 tokens, an indexer
# picks the top-k rows) and HCA layers (1 row per 128 tokens). vLLM reports ~6.7 GiB of BF16 KV per 1M tokens, i.e.
# ~6,880 B/token; its recipe uses an FP8 KV cache, so ~3,440 B/token (assumption).
# a = 3440 / 4.8e12 = 7.2e-10 s/token; b = 0.5 a. Assumptions and caveats: decode is taken to read the whole
#     compressed cache per step (CSA's top-k selection reads less on long contexts); the sliding window is a fixed
#     ~2.8 MB per request that a per-token model cannot express. The consequence worth knowing: attention over KV
#     is ~40x cheaper than DeepSeek-V3's per token, so KV imbalance barely moves the step time of this model.
# cw: weights with FP4 experts (~270B x 0.53 B = 143 GB) and FP8 rest (~14 GB): per worker 14 + 143/8 = 32 GB
#     / 4.8e12 = 6.6 ms.
# c0: 43 MoE layers x 2 all-to-alls x ~60 us = 5.2 ms.
# p: 2 x 13B FLOP / (1979e12 x 0.4) = 3.3e-5 s/token.
# KV capacity: (127 GB - 32 GB - 5 GB) / 3,440 B = 26M tokens: slots, not KV, bind. vLLM's logical block is 256.
DEEPSEEK_V4_FLASH = ModelPreset(
    name="deepseek_v4_flash", a=3_440 / H200_BW, b=0.5 * 3_440 / H200_BW, c0=43 * 2 * 60e-6, cw=32e9 / H200_BW,
    p=2 * 13e9 / (H200_FP8 * 0.4), kv_capacity_tokens=26_000_000, block_size=256, max_num_seqs=256,
    max_num_batched_tokens=8192, external_prefill_tokens_per_s=H200_FP8 * 0.4 / (2 * 13e9),
    description="DeepSeek-V4-Flash MoE (compressed hybrid attention), DP attention + EP8 on H200")

#: Presets by name.
PRESETS: dict[str, ModelPreset] = {
    p.name: p for p in (TINY, QWEN3_0_6B, QWEN3_30B_A3B, QWEN3_30B_A3B_ATTN, DEEPSEEK_V3, DEEPSEEK_V4_FLASH)}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; ValueError lists the valid names otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
