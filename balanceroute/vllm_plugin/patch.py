"""The patch: vLLM's DP front-end client routes with a balanceroute policy and reports engine outputs to it.

``DPLBAsyncMPClient.get_core_engine_for_request`` (vLLM's internal DP load balancer, used whenever
``data_parallel_size > 1`` without an external load balancer) is replaced; the replacement keeps every piece of
vLLM's bookkeeping the rest of the client depends on:

- a request already in ``reqs_in_flight`` (streaming-input session) goes back to its engine, untouched;
- an explicit ``data_parallel_rank`` (or vLLM's late-interaction pooling affinity) is honoured, and still
  recorded in the load, so KV accounting covers every request;
- ``reqs_in_flight`` (aborts are sent to the right engine through it), ``engine_inflight`` (its exact count of
  unfinished requests) and the optimistic ``lb_engines[g][0] += client_count`` bump between coordinator updates
  are updated exactly as vLLM does.

``process_engine_outputs`` (vLLM's per-batch hook on the output path) is wrapped: new tokens are added to the
request's engine before vLLM's own handler runs, and requests that finished or were aborted are released.
"""
from __future__ import annotations

import types

from balanceroute.vllm_plugin.client_router import ClientRouter
from balanceroute.vllm_plugin.config import RouterConfig

#: Attribute holding a client's :class:`ClientRouter` (created at its first request, when its engines are known).
ROUTER_ATTR = "_balanceroute_router"
_INSTALLED_ATTR = "_balanceroute_patched"


def _kv_capacity(client) -> float | None:
    """Tokens of KV cache per engine, as the engines reported it at start-up (None where unknown)."""
    cache = getattr(getattr(client, "vllm_config", None), "cache_config", None)
    tokens = getattr(cache, "kv_cache_size_tokens", None)
    return float(tokens) if tokens else None


def client_router(client, config: RouterConfig) -> ClientRouter:
    """The router of ``client`` (a DPLBAsyncMPClient), made at first use."""
    router = getattr(client, ROUTER_ATTR, None)
    engines = len(client.core_engines)
    if router is None:
        router = ClientRouter(config, engines, client=client.client_index, kv_capacity=_kv_capacity(client))
        setattr(client, ROUTER_ATTR, router)
    elif router.num_engines != engines:
        raise RuntimeError(f"balanceroute: the number of DP engines changed from {router.num_engines} to "
                           f"{engines} (elastic EP scaling), which the balanceroute router does not support")
    return router


def _prompt_len(request) -> int:
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    embeds = request.prompt_embeds
    return 0 if embeds is None else int(embeds.shape[0])


def install(core_client: types.ModuleType, config: RouterConfig) -> None:
    """Patch ``core_client.DPLBAsyncMPClient`` (idempotent: a second call in the same process does nothing)."""
    cls = core_client.DPLBAsyncMPClient
    if getattr(cls, _INSTALLED_ATTR, False):
        return
    vllm_outputs = cls.process_engine_outputs  # the staticmethod's function
    late_interaction_index = core_client.get_late_interaction_engine_index

    def get_core_engine_for_request(self, request):
        engine = self.reqs_in_flight.get(request.request_id)
        if engine is not None:  # streaming-input session affinity, as vLLM
            return engine
        router = client_router(self, config)
        engines = self.core_engines
        index, how = request.data_parallel_rank, "explicit"
        if index is None:
            index, how = late_interaction_index(request.pooling_params, len(engines)), "late_interaction"
        if index is None:
            how = "policy"
        counts, inflight = self.lb_engines, self.engine_inflight
        router.observe_counts(counts, [self.client_count * inflight[e] for e in engines])
        index = router.route(request.request_id, _prompt_len(request), token_ids=request.prompt_token_ids,
                             engine=index, how=how, external_id=request.external_req_id)
        if how == "policy":
            counts[index][0] += self.client_count  # vLLM's optimistic bump until the next coordinator update
        chosen = engines[index]
        self.reqs_in_flight[request.request_id] = chosen
        inflight[chosen] += 1
        return chosen

    async def process_engine_outputs(self, outputs) -> None:
        router = getattr(self, ROUTER_ATTR, None)
        if router is not None:
            report_outputs(router, outputs)
        await vllm_outputs(self, outputs)

    cls.get_core_engine_for_request = get_core_engine_for_request
    cls.process_engine_outputs = staticmethod(process_engine_outputs)
    setattr(cls, _INSTALLED_ATTR, True)


def report_outputs(router: ClientRouter, outputs) -> None:
    """Feed one ``EngineCoreOutputs`` batch to ``router``: new tokens first, then the requests that ended.

    A request that ends normally comes with a final output carrying its finish reason; one aborted at the
    engine (client disconnect, cancellation) only appears in ``finished_requests``, and is released as an abort.
    """
    outs = outputs.outputs
    if outs:
        router.tokens([o.request_id for o in outs], [len(o.new_token_ids) for o in outs])
        for o in outs:
            if o.finish_reason is not None:
                router.release(o.request_id, str(o.finish_reason))
    for request_id in outputs.finished_requests or ():
        router.release(request_id, "abort")
