"""Backend 2: an OpenAI-compatible routing proxy in front of independent servers (docs/proxy.md).

    proxy = RoutingProxy(ProxyConfig(targets=("http://127.0.0.1:8001", "http://127.0.0.1:8002"), router="br0"))
    await serve(proxy, port=9000)          # or: balanceroute proxy --targets ... --router br0

Modules: :mod:`.server` (the aiohttp application: forwarding, retries, pass-through), :mod:`.dispatch` (on-arrival
and pool dispatch over :class:`balanceroute.load.Router`, dead backends masked), :mod:`.accounting` (load from
the response stream, exact release), :mod:`.prompt` (prompt length at routing time), :mod:`.upstreams` (backend
health), :mod:`.telemetry` (/metrics, /stats), :mod:`.service` (serving and graceful shutdown), :mod:`.cli`.
"""
from balanceroute.proxy.server import ProxyConfig, RoutingProxy
from balanceroute.proxy.service import serve

__all__ = ["ProxyConfig", "RoutingProxy", "serve"]
