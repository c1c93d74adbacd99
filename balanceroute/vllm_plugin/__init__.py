"""balanceroute policies inside vLLM's own data-parallel router (a ``vllm.general_plugins`` entry point).

vLLM loads every ``vllm.general_plugins`` entry point in every process it starts (API servers, engine cores,
workers) and calls it before serving. API servers are *spawned* processes, so a patch applied in the parent
alone would be lost; the entry point is what reaches all of them. pyproject.toml declares::

    [project.entry-points."vllm.general_plugins"]
    balanceroute_dp_router = "balanceroute.vllm_plugin:register"

:func:`register` does nothing unless ``BALANCEROUTE_DP_ROUTER`` names a policy (see
:mod:`balanceroute.vllm_plugin.config`): without it vLLM is untouched. With it, it validates the policy and its
parameters, checks that this vLLM's internals are the ones the patch was written for
(:mod:`balanceroute.vllm_plugin.compat`; it raises, so vLLM does not start, rather than silently routing with
vLLM's own rule), and patches ``DPLBAsyncMPClient`` (:mod:`balanceroute.vllm_plugin.patch`). Independently,
``BALANCEROUTE_STEP_LOG`` (a folder) makes every engine core log its steps there for ``balanceroute calibrate``
(:mod:`balanceroute.vllm_plugin.step_log`). See docs/vllm.md.
"""
from __future__ import annotations

import logging
import os
import sys

from balanceroute.vllm_plugin.config import ANY_VERSION_ENV, STEP_LOG_ENV, RouterConfig

log = logging.getLogger(__name__)


def _log_to_stderr() -> None:
    """vLLM configures only its own logger; give ours a handler so the activation line reaches the server log."""
    logger = logging.getLogger("balanceroute")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [balanceroute] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def register() -> None:
    """The entry point vLLM calls in each of its processes: log engine steps and patch the DP router when the
    environment asks."""
    step_folder = os.environ.get(STEP_LOG_ENV, "").strip()
    if step_folder:
        _log_to_stderr()
        from balanceroute.vllm_plugin import compat, step_log
        compat.check_step_log(any_version=os.environ.get(ANY_VERSION_ENV, "") == "1")
        from vllm.v1.engine import core
        step_log.install(core, step_folder)
    config = RouterConfig.from_env()
    if config is None:
        return
    _log_to_stderr()
    config.build_policy()  # a bad name or parameter stops vLLM here, with the valid choices named
    from balanceroute.vllm_plugin import compat, patch
    version = compat.check_vllm(any_version=os.environ.get(ANY_VERSION_ENV, "") == "1")
    from vllm.v1.engine import core_client
    patch.install(core_client, config)
    log.info("DP router patched: policy %s, vLLM %s, pid %d", config.policy, version, os.getpid())
