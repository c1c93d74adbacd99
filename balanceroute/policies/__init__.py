"""Routing policies: pure routing math, snapshot in, worker index out.

    from balanceroute.policies import make_policy, available_policies, ClusterSnapshot
    snap = ClusterSnapshot.from_loads(kv_load=[100, 80, 60, 90])
    make_policy("br0").choose(snap, prompt_len=30)        # -> 2
"""
from balanceroute.policies.base import (
    Assignment,
    ClusterSnapshot,
    PendingRequests,
    RequestTable,
)
from balanceroute.policies.policy import (
    Policy,
    available_policies,
    make_policy,
    policy_class,
    register_policy,
)
from balanceroute.policies.survival import SurvivalEstimator

# Importing the policy modules registers them.
from balanceroute.policies import bfio, brh, kv, phi, queue, vllm  # noqa: F401  isort: skip

__all__ = [
    "Assignment",
    "ClusterSnapshot",
    "PendingRequests",
    "Policy",
    "RequestTable",
    "SurvivalEstimator",
    "available_policies",
    "make_policy",
    "policy_class",
    "register_policy",
]
