"""A scripted request sequence for routing-parity tests, and the simulator's answer to it.

Events (JSON-serialisable, so the vLLM-side probe in another virtualenv reads the same sequence):

- ``{"op": "add", "id", "tokens", "rank"}``: a request with these prompt token ids (``rank``: an explicit
  ``data_parallel_rank`` or None);
- ``{"op": "step", "tokens": {id: n}, "finish": {id: reason}, "abort": [id]}``: one engine output batch: ``n`` new
  tokens per request, requests finishing with a reason, requests dropped by an abort (no output);
- ``{"op": "coord", "counts": [[waiting, running, kv_usage], ...]}``: a DP-coordinator update.

:func:`simulator_decisions` routes the sequence with the simulator's :class:`~balanceroute.load.Router` and
:class:`~balanceroute.load.LoadTracker` (coordinator updates do not exist there), recording the KV load each
decision saw.
"""
from __future__ import annotations

import numpy as np

from balanceroute.load import LoadTracker, Router
from balanceroute.policies import make_policy
from balanceroute.protocol.prompt_key import prompt_hash

#: Policies whose decisions depend only on what both the simulator and the plugin track exactly (KV load,
#: requests, in-flight counts); vllm_default / vllm_kv read the coordinator's counts instead.
TRACKED_POLICIES = ("bf_io", "br0", "br_h", "fast_phi", "jsq", "jsq_load", "phi", "power_of_two", "random",
                    "round_robin")


def make_events(seed: int = 0, *, num_requests: int = 60, num_engines: int = 3) -> list[dict]:
    """A random but reproducible sequence: arrivals of varied prompts (some repeated, some with an explicit
    engine), decode batches, finishes, aborts and coordinator updates."""
    rng = np.random.default_rng(seed)
    events: list[dict] = []
    active: list[str] = []
    prompts: list[list[int]] = []
    for i in range(num_requests):
        if prompts and rng.random() < 0.2:
            tokens = prompts[int(rng.integers(len(prompts)))]
        else:
            tokens = rng.integers(3, 2000, size=int(rng.integers(4, 400))).tolist()
            prompts.append(tokens)
        rank = int(rng.integers(num_engines)) if rng.random() < 0.08 else None
        events.append({"op": "add", "id": f"req-{i}", "tokens": tokens, "rank": rank})
        active.append(f"req-{i}")
        if rng.random() < 0.3:
            events.append({"op": "coord", "counts": [
                [int(rng.integers(0, 4)), int(rng.integers(0, 6)), round(float(rng.random()), 3)]
                for _ in range(num_engines)]})
        if rng.random() < 0.6 and active:
            stepping = [r for r in active if rng.random() < 0.8]
            finish = {r: str(rng.choice(["length", "stop"])) for r in stepping if rng.random() < 0.15}
            aborted = [r for r in active if r not in stepping and rng.random() < 0.05]
            events.append({"op": "step", "tokens": {r: int(rng.integers(1, 4)) for r in stepping},
                           "finish": finish, "abort": aborted})
            active = [r for r in active if r not in finish and r not in aborted]
    return events


def simulator_decisions(policy: str, events: list[dict], num_engines: int) -> tuple[list[int], list[list[float]],
                                                                                    LoadTracker]:
    """Engines the simulator's Router picks for the ``add`` events, the KV load each decision saw, and the
    tracker at the end."""
    pol = make_policy(policy, seed=0)
    tracker = LoadTracker(num_engines)
    router = Router(pol, tracker)
    decisions, seen = [], []
    for ev in events:
        if ev["op"] == "add":
            key = prompt_hash(ev["tokens"]) if pol.needs_requests else 0
            seen.append(tracker.kv_load.tolist())
            if ev["rank"] is None:
                decisions.append(router.route(ev["id"], len(ev["tokens"]), prompt_hash=key))
            else:
                tracker.routed(ev["id"], ev["rank"], len(ev["tokens"]), prompt_hash=key)
                decisions.append(ev["rank"])
        elif ev["op"] == "step":
            for r, n in ev["tokens"].items():
                tracker.tokens(r, n)
            for r in ev["finish"]:
                router.finish(r)
            for r in ev["abort"]:
                router.abort(r)
    return decisions, seen, tracker
