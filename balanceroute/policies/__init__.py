"""Routing policies: pure routing math, snapshot in, worker index out.

    from balanceroute.policies import make_policy, available_policies, ClusterSnapshot
    snap = ClusterSnapshot.from_loads(kv_load=[100, 80, 60, 90])
    make_policy("br0").choose(snap, prompt_len=30)        # -> 2

Every module of this package is imported here, which registers the policies it defines (``@register_policy``),
so a new policy is one file in this folder plus its conf/router/ yaml (docs/policies.md, "Adding a policy").
"""
import importlib
import pkgutil

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

#: Modules of this package that define no policy: ``bench`` is the latency benchmark command, imported when run.
NOT_POLICY_MODULES = frozenset({"bench"})

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in NOT_POLICY_MODULES:
        importlib.import_module(f"{__name__}.{_module.name}")

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
