"""What the proxy tells about itself: Prometheus text on ``/metrics`` and a JSON summary on ``/stats``.

Counters live in plain numpy arrays (one increment on the request path) and are rendered by a collector at
scrape time, together with the load the tracker holds; only the two histograms are prometheus_client objects.
Each proxy has its own registry, so several proxies can run in one process (tests).

Metrics (``backend`` is the backend's index, ``url`` its base URL):

- ``balanceroute_proxy_requests_total{backend,url,outcome}``: requests per backend and how they ended
  (:data:`OUTCOMES`);
- ``balanceroute_proxy_request_latency_seconds{backend}``: histogram of completed requests' latency through
  the proxy (arrival to the last byte);
- ``balanceroute_proxy_errors_total{kind}``: errors by kind (:data:`ERROR_KINDS`);
- ``balanceroute_proxy_decision_seconds``: histogram of routing decision times (policy plus bookkeeping);
- gauges ``balanceroute_proxy_backend_healthy``, ``..._inflight``, ``..._kv_load_tokens`` per backend and
  ``balanceroute_proxy_pending`` (pool mode: requests waiting for a slot).

``/stats`` also holds the KV balance of the tracked loads sampled right after every routing decision
(:class:`~balanceroute.metrics.BalanceAccumulator`: the simulator's imbalance and spread definitions; a proxy
sees no engine steps, so decisions are its sampling points, as in backend=vllm).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from balanceroute.load import LoadTracker
from balanceroute.metrics import BalanceAccumulator
from balanceroute.proxy.dispatch import Dispatcher
from balanceroute.proxy.upstreams import Upstreams

#: How a request sent to a backend ended: streamed or answered to the end; the backend's own 4xx/5xx passed
#: through; broken off after it started (disconnect, error event); could not connect or broke before anything
#: reached the client (retried elsewhere once); the client went away first.
OUTCOMES = ("completed", "upstream_status", "failed", "connect_failed", "cancelled")
#: Error kinds: malformed request body; no live backend; a connection failure; an upstream 4xx/5xx; a stream
#: broken after it started; every attempt failed (the client got a 502).
ERROR_KINDS = ("bad_request", "no_backend", "connect", "upstream_status", "stream", "exhausted")

_DECISION_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Telemetry:
    """Counters, histograms and the views over them."""

    def __init__(self, upstreams: Upstreams, tracker: LoadTracker, dispatcher: Dispatcher, *,
                 router_name: str) -> None:
        self.upstreams = upstreams
        self.tracker = tracker
        self.dispatcher = dispatcher
        self.router_name = router_name
        g = len(upstreams)
        self.outcomes = np.zeros((g, len(OUTCOMES)), dtype=np.int64)
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.registry = CollectorRegistry(auto_describe=True)
        self.decision = Histogram("balanceroute_proxy_decision_seconds", "Routing decision time (s)",
                                  buckets=_DECISION_BUCKETS, registry=self.registry)
        latency = Histogram("balanceroute_proxy_request_latency_seconds",
                            "Latency of completed requests through the proxy (s)", ["backend"],
                            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.latency = [latency.labels(str(i)) for i in range(g)]
        self.registry.register(_Collector(self))
        self.balance = BalanceAccumulator(g)

    def decided(self, seconds: float) -> None:
        """A routing decision took ``seconds``: its histogram, and a balance sample of the loads it left."""
        self.decision.observe(seconds)
        self.balance.add_step(self.tracker.kv_load)

    def outcome(self, backend: int, outcome: str) -> None:
        self.outcomes[backend, OUTCOMES.index(outcome)] += 1

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)

    def stats(self) -> dict[str, Any]:
        """The ``/stats`` document: per-backend health, in flight, tracked KV load and counters."""
        t = self.tracker
        inflight = t.running + t.waiting
        backends = [{"index": i, "url": url, "healthy": bool(self.upstreams.live[i]),
                     "inflight": int(inflight[i]), "kv_load": float(t.kv_load[i]),
                     **{name: int(v) for name, v in zip(OUTCOMES, self.outcomes[i])}}
                    for i, url in enumerate(self.upstreams.urls)]
        return {"router": self.router_name, "dispatch": self.dispatcher.mode, "backends": backends,
                "tracked_requests": len(t), "pending": self.dispatcher.pending, "errors": dict(self.errors),
                "totals": {name: int(v) for name, v in zip(OUTCOMES, self.outcomes.sum(axis=0))},
                "balance": {**self.balance.summary(), "balance_sampled_at": "routing decisions"}}


class _Collector:
    """Renders the counters and the tracked load at scrape time."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.t = telemetry

    def describe(self):
        return []

    def collect(self):
        t = self.t
        urls = t.upstreams.urls
        requests = CounterMetricFamily("balanceroute_proxy_requests", "Requests per backend by outcome",
                                       labels=["backend", "url", "outcome"])
        for i, url in enumerate(urls):
            for name, value in zip(OUTCOMES, t.outcomes[i]):
                requests.add_metric([str(i), url, name], int(value))
        yield requests
        errors = CounterMetricFamily("balanceroute_proxy_errors", "Errors by kind", labels=["kind"])
        for kind, value in t.errors.items():
            errors.add_metric([kind], value)
        yield errors
        tracker = t.tracker
        inflight = tracker.running + tracker.waiting
        for name, doc, values in (
                ("balanceroute_proxy_backend_healthy", "1 if the backend passed its last health check",
                 t.upstreams.live.astype(np.int64)),
                ("balanceroute_proxy_inflight", "Requests the proxy has in flight per backend", inflight),
                ("balanceroute_proxy_kv_load_tokens", "Tracked KV load per backend (prompt + generated tokens)",
                 tracker.kv_load)):
            gauge = GaugeMetricFamily(name, doc, labels=["backend", "url"])
            for i, url in enumerate(urls):
                gauge.add_metric([str(i), url], float(values[i]))
            yield gauge
        yield GaugeMetricFamily("balanceroute_proxy_pending", "Requests waiting in the pool for a slot",
                                value=t.dispatcher.pending)
