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

# Importing the policy modules registers them.
from balanceroute.policies import kv, queue, vllm  # noqa: E402,F401  isort: skip

__all__ = [
    "Assignment",
    "ClusterSnapshot",
    "PendingRequests",
    "Policy",
    "RequestTable",
    "available_policies",
    "make_policy",
    "policy_class",
    "register_policy",
]
