"""An emulated vLLM data-parallel fleet: OpenAI-compatible endpoints whose token timing is the simulator's.

The simulator's step groups (:mod:`balanceroute.sim.group`, with its vLLM-like scheduler in
:mod:`balanceroute.sim.scheduler`, the DP+EP step model in :mod:`balanceroute.sim.step_model` and the presets) are
driven by the wall clock (:mod:`.engine`) and served over HTTP (:mod:`.server`, :mod:`.protocol`): a DP front
end that routes with a balanceroute policy, and one endpoint per rank for an external router. ``balanceroute
emulate`` (:mod:`.cli`) runs it; docs/emulate.md describes it.

    engine = LiveEngine(get_preset("tiny"), 4, make_policy("jsq_load"), time_scale=0.5)
    fleet = EmulatedFleet(engine, served_model_name="tiny")
    urls = await fleet.start("127.0.0.1", 0)      # urls.front, urls.ranks
    ...
    await fleet.stop()
"""
from balanceroute.emulate.engine import LiveEngine, RequestRejected, TokenStream
from balanceroute.emulate.server import EmulatedFleet, FleetUrls

__all__ = ["EmulatedFleet", "FleetUrls", "LiveEngine", "RequestRejected", "TokenStream"]
