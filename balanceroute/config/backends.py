"""Schemas of the ``backend`` section, one per backend (conf/backend/<name>.yaml gives the values and their meaning).

``dispatch`` is every backend's key: how requests reach the workers (:data:`~balanceroute.policies.dispatch.
DISPATCH_MODES`); a backend that cannot honour a mode refuses it when it is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class BenchConfig:
    """``backend.bench`` of the live backends: the benchmark client (:func:`balanceroute.bench.benchmark`
    arguments; ``endpoint`` is the path it sends to) and ``max_failed_fraction``, the share of failed requests
    above which the run ends non-zero (:func:`balanceroute.experiment.check_live_outcome`)."""

    endpoint: str = MISSING
    stream: bool = MISSING
    ignore_eos: bool = MISSING
    max_concurrency: int | None = MISSING
    warmup: int = MISSING
    timeout_s: float = MISSING
    stall_timeout_s: float | None = MISSING
    max_failed_fraction: float = MISSING


@dataclass
class VllmBenchConfig(BenchConfig):
    """``backend.bench`` of backend=vllm: ``tokenizer`` makes synthetic prompts exact in length with the served
    model's tokenizer."""

    tokenizer: bool = MISSING


@dataclass
class StartedServerConfig:
    """A server a run starts and stops: where it listens (``port`` null: a free one) and how long it may take."""

    host: str = MISSING
    port: int | None = MISSING
    ready_timeout_s: float = MISSING
    stop_timeout_s: float = MISSING


@dataclass
class FleetConfig(StartedServerConfig):
    """An emulated vLLM DP fleet (``balanceroute emulate``): ranks in lock-step with ``barrier``, every modelled
    duration ``time_scale`` times slower on the wall clock."""

    barrier: bool = MISSING
    time_scale: float = MISSING


@dataclass
class SimBackendConfig:
    """``backend=sim``: every key but ``name`` is a :class:`~balanceroute.sim.SimConfig` field."""

    name: str = "sim"
    dispatch: str = MISSING
    barrier: bool = MISSING
    prefill: str = MISSING
    timeout_s: float = MISSING
    horizon_s: float | None = None
    timeline_max_rows: int = MISSING


@dataclass
class EmulatedBackendConfig(FleetConfig):
    """``backend=emulated``: the fleet, benchmarked through its own DP front end."""

    name: str = "emulated"
    dispatch: str = MISSING
    bench: BenchConfig = MISSING


@dataclass
class ProxySettings(StartedServerConfig):
    """``backend.proxy``: the routing proxy (``balanceroute proxy``); ``max_num_seqs`` slots per backend (null:
    the emulated fleet's model preset's)."""

    max_num_seqs: int | None = MISSING
    health_interval_s: float = MISSING


@dataclass
class ProxyBackendConfig:
    """``backend=proxy``: the proxy in front of ``targets`` (running servers) or, when null, of an emulated
    ``fleet`` it starts."""

    name: str = "proxy"
    dispatch: str = MISSING
    targets: list[str] | None = MISSING
    model_name: str | None = MISSING
    fleet: FleetConfig = MISSING
    proxy: ProxySettings = MISSING
    bench: BenchConfig = MISSING


@dataclass
class VllmBackendConfig(StartedServerConfig):
    """``backend=vllm``: real vLLM with data parallelism, routed inside its DP front end by the plugin."""

    name: str = "vllm"
    dispatch: str = MISSING
    vllm_bin: str | None = MISSING
    python: str | None = MISSING
    multinode: str = MISSING
    plugin: bool = MISSING
    step_log: bool = MISSING
    api_server_count: int | None = MISSING
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    bench: VllmBenchConfig = MISSING


#: Backend schema per ``backend.name``.
BACKENDS: dict[str, type] = {schema.name: schema for schema in
                             (SimBackendConfig, EmulatedBackendConfig, ProxyBackendConfig, VllmBackendConfig)}
