"""The environment contract between whoever starts vLLM and the plugin inside every vLLM process.

vLLM's API servers and engines are separate processes started by ``vllm serve``; the only channel that reaches
all of them unchanged is the environment. ``balanceroute serve``, the managed server
(:mod:`balanceroute.serving.vllm`) and a user's own shell therefore all describe the router the same way:

- ``BALANCEROUTE_DP_ROUTER``: a policy name (:func:`balanceroute.policies.available_policies`). Unset or empty:
  the plugin does nothing and vLLM routes with its own rule.
- ``BALANCEROUTE_DP_ROUTER_PARAMS``: the policy's parameters as a JSON object, e.g. ``{"K": 3, "seed": 0}``.
- ``BALANCEROUTE_DECISION_LOG``: a JSONL file every API-server process appends its decisions to (optional).
- ``BALANCEROUTE_STEP_LOG``: a folder every engine core writes its step log to (``steps_dp<rank>.jsonl``, read
  by ``balanceroute calibrate``; :mod:`balanceroute.vllm_plugin.step_log`). Independent of the router.
- ``BALANCEROUTE_VLLM_ANY_VERSION=1``: try a vLLM version other than the tested ones; the internals are still
  checked (see :mod:`balanceroute.vllm_plugin.compat`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balanceroute.policies import Policy, make_policy

ROUTER_ENV = "BALANCEROUTE_DP_ROUTER"
PARAMS_ENV = "BALANCEROUTE_DP_ROUTER_PARAMS"
DECISION_LOG_ENV = "BALANCEROUTE_DECISION_LOG"
STEP_LOG_ENV = "BALANCEROUTE_STEP_LOG"
ANY_VERSION_ENV = "BALANCEROUTE_VLLM_ANY_VERSION"
#: The environment that leaves vLLM unpatched even if the caller's environment names a router or a step log.
UNPATCHED_ENV = {ROUTER_ENV: "", PARAMS_ENV: "", DECISION_LOG_ENV: "", STEP_LOG_ENV: ""}


@dataclass(frozen=True)
class RouterConfig:
    """Which policy routes, with which parameters, and where decisions are logged (None: not logged)."""

    policy: str
    params: dict[str, Any] = field(default_factory=dict)
    decision_log: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RouterConfig | None:
        """The router the environment asks for, or None when ``BALANCEROUTE_DP_ROUTER`` is unset or empty.

        Raises ValueError naming the variable when the parameters are not a JSON object.
        """
        name = environ.get(ROUTER_ENV, "").strip()
        if not name:
            return None
        raw = environ.get(PARAMS_ENV, "").strip() or "{}"
        try:
            params = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{PARAMS_ENV}={raw!r} is not valid JSON ({exc}); expected an object such as "
                             '{"K": 3}') from None
        if not isinstance(params, dict):
            raise ValueError(f"{PARAMS_ENV}={raw!r} must be a JSON object of policy parameters, such as "
                             '{"K": 3}')
        log = environ.get(DECISION_LOG_ENV, "").strip()
        return cls(name, params, Path(log) if log else None)

    def to_env(self) -> dict[str, str]:
        """The environment variables that make the plugin build this router (all of them, so that values left
        in the caller's environment by an earlier run cannot leak in)."""
        return {ROUTER_ENV: self.policy, PARAMS_ENV: json.dumps(self.params, sort_keys=True),
                DECISION_LOG_ENV: "" if self.decision_log is None else str(self.decision_log)}

    def build_policy(self) -> Policy:
        """The policy (ValueError naming the valid policies or parameters when the name or a value is bad)."""
        return make_policy(self.policy, **self.params)

