"""The DP+EP step simulator (ALGORITHMS.md section 3): routing policies under the expert-parallel barrier.

    from balanceroute.sim import SimConfig, simulate
    from balanceroute.policies import make_policy
    result = simulate(workload, make_policy("jsq_load"), SimConfig(num_workers=8, model="qwen3_30b_a3b"))
    result.summary["p95_tpot_ms"], result.requests, result.timeline
"""
from balanceroute.sim.presets import PRESETS, ModelPreset, get_preset
from balanceroute.sim.simulator import PREFILL_MODES, SimConfig, SimResult, simulate

__all__ = ["PREFILL_MODES", "PRESETS", "ModelPreset", "SimConfig", "SimResult", "get_preset",
           "simulate"]
