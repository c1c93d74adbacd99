"""The router of one vLLM front-end client: policy + exact engine load + decision log, free of vLLM types.

:mod:`balanceroute.vllm_plugin.patch` translates between vLLM's client and this class; everything here takes
plain values, so the decisions can be compared with the simulator's (same :class:`~balanceroute.load.Router`,
same policy, same events) without an engine running.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np

from balanceroute.load import Router
from balanceroute.protocol.prompt_key import prompt_hash
from balanceroute.vllm_plugin.config import RouterConfig
from balanceroute.vllm_plugin.decision_log import DecisionLog
from balanceroute.vllm_plugin.engine_load import EngineLoadTracker

log = logging.getLogger(__name__)

#: Finish reasons after which a request's output length is not a completed sample for learning policies.
ABORT_REASONS = frozenset({"abort", "error"})


class ClientRouter:
    """Routes the requests of one front-end client over ``num_engines`` engines and tracks their KV load.

    ``observe_counts`` is called before every decision with vLLM's coordinator list (a refresh is recognised by
    the list being a new object, as vLLM replaces it on each update) and the exact in-flight counts; ``route``
    decides (or records an explicit choice); ``tokens`` and ``release`` follow the engine outputs.
    """

    def __init__(self, config: RouterConfig, num_engines: int, *, client: int = 0,
                 kv_capacity: float | None = None) -> None:
        policy = config.build_policy()
        self.tracker = EngineLoadTracker(num_engines, kv_capacity=kv_capacity)
        self.router = Router(policy, self.tracker)
        self.num_engines = num_engines
        self.hash_prompts = policy.needs_requests
        self.decisions = None if config.decision_log is None else DecisionLog(
            config.decision_log, client=client, policy=config.policy)
        self._counts_seen: object = None
        log.info("balanceroute: routing over %d DP engines with %r (client %d, pid %d%s)", num_engines, policy,
                 client, os.getpid(), "" if self.decisions is None else f", decisions -> {config.decision_log}")

    def observe_counts(self, counts: Sequence[Sequence[float]], inflight: Sequence[int]) -> None:
        """vLLM's per-engine ``[waiting, running, kv_usage]`` (new object = new coordinator update) and its
        exact per-engine in-flight counts (already scaled to all clients)."""
        if counts is not self._counts_seen:
            self._counts_seen = counts
            self.tracker.coordinator_counts(counts)
        self.tracker.set_inflight(inflight)

    def route(self, request_id: str, prompt_len: int, *, token_ids: Sequence[int] | None = None,
              engine: int | None = None, how: str = "policy", external_id: str | None = None) -> int:
        """The engine for a new request: the policy's choice, or ``engine`` when the request names one."""
        key = prompt_hash(token_ids) if self.hash_prompts else 0
        if engine is None:
            engine = self.router.route(request_id, prompt_len, prompt_hash=key)
            if self.decisions is not None:
                self.decisions.route(request_id, external_id, engine, how, prompt_len, self.tracker.last_snapshot)
        else:
            if self.decisions is not None:  # the load the request arrived to, though no policy was asked
                self.decisions.route(request_id, external_id, engine, how, prompt_len, self.tracker.snapshot())
            self.tracker.routed(request_id, engine, prompt_len, prompt_hash=key)
        return engine

    def tokens(self, request_ids: Iterable[str], counts: Iterable[int]) -> None:
        """New output tokens per request (one engine output batch); ids this router did not route are skipped."""
        tracker = self.tracker
        pairs = [(tracker.slot_of(r), n) for r, n in zip(request_ids, counts) if n and r in tracker]
        if pairs:
            slots, ns = zip(*pairs)
            tracker.tokens_bulk(np.fromiter(slots, np.int64, len(slots)), np.fromiter(ns, np.int64, len(ns)))

    def release(self, request_id: str, reason: str) -> None:
        """The request left its engine (finished, aborted or failed); unknown or already released ids are
        ignored (vLLM may report a request both in an output and in its finished set)."""
        tracker = self.tracker
        if request_id not in tracker:
            return
        engine = tracker.worker_of(request_id)
        prompt_len = tracker.prompt_len_of(request_id)
        if reason in ABORT_REASONS:
            output_len = self.router.abort(request_id)
        else:
            output_len = self.router.finish(request_id)
        if self.decisions is not None:
            self.decisions.release(request_id, engine, prompt_len, output_len, reason)
