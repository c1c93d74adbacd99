"""Schemas of the run configuration's sections: what keys each config group may set, and their types.

conf/ holds the values (and says what they mean); these dataclasses hold the shape. Each group's yaml files name
their schema first in their defaults list (``- /schema/model@_here_``, registered by
:func:`balanceroute.config.register_schemas`), so Hydra rejects a misspelt key in a file or an override of the wrong
type while composing, and :func:`balanceroute.config.typed_config` rejects keys added with ``+`` (which Hydra lets
through) before a run starts. Fields without a default (``MISSING``) must come from the yaml; fields with one
may be left out of it.

Backends' sections are in :mod:`balanceroute.config.backends`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from balanceroute.steady import SteadyWindow
from balanceroute.tracking.wandb_sink import WandbOptions
from balanceroute.workload import AZURE_CONV_OUTPUT_SIGMA, AZURE_CONV_PROMPT_SIGMA


@dataclass
class ParallelConfig:
    """``parallel``: how the model is spread over GPUs (conf/parallel/default.yaml)."""

    dp: int = MISSING          # data-parallel workers: the routing targets, G
    tp: int = MISSING          # tensor-parallel GPUs per worker
    ep: bool = MISSING         # experts sharded over all dp*tp GPUs: the EP barrier every step


@dataclass
class VllmServeConfig:
    """``model.vllm``: how ``vllm serve`` serves the model (backend=vllm). ``model`` is what vLLM loads,
    ``served_model_name`` the name requests carry; every other non-null key becomes ``--key value`` (true: a bare
    flag); further ``vllm serve`` options go in ``args``, verbatim."""

    model: str | None = None
    served_model_name: str | None = None
    tokenizer: str | None = None
    max_model_len: int | None = None
    dtype: str | None = None
    kv_cache_dtype: str | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    load_format: str | None = None
    enforce_eager: bool | None = None
    trust_remote_code: bool | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """``model``: a simulator preset (``name``, balanceroute/sim/presets.py) with optional step-model overrides,
    and for backend=vllm what to serve.

    The overrides (null: the preset's value) are seconds per KV token (``a``), per mean KV token (``b``: EP
    all-to-all, expert FFN), per step (``c0``), per worker-step (``cw``) and per prefill token (``p``), and the
    scheduler limits per worker; ``external_prefill_tokens_per_s`` is one request's prefill speed and
    ``prefill_pool_tokens_per_s`` the FIFO prefill pool's total throughput in disaggregated mode (null: ample;
    requests still leave it in client order, balanceroute/sim/prefill.py); ``frontend_latency_s`` what the serving
    front end adds to TTFT and E2EL (measured by ``balanceroute calibrate``). E.g. ``model.b=0`` for no shared EP
    cost.
    """

    name: str = MISSING
    hf_repo: str | None = None          # weights and tokenizer on the Hugging Face hub (live backends)
    moe: bool = True                       # the model has experts to shard: parallel.ep defaults to this
    a: float | None = None
    b: float | None = None
    c0: float | None = None
    cw: float | None = None
    p: float | None = None
    kv_capacity_tokens: int | None = None
    block_size: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    external_prefill_tokens_per_s: float | None = None
    prefill_pool_tokens_per_s: float | None = None
    frontend_latency_s: float | None = None
    vllm: VllmServeConfig | None = None


# ---- workloads: one schema per loader (``_target_``) ----------------------------------------------------------
@dataclass
class WorkloadConfig:
    """What every loader takes: how many requests, their arrivals (``rate``, ``burstiness``), the length caps
    (requests over them are left out) and the seed. A loader's schema sets ``_target_`` and adds its own keys."""

    _target_: str = MISSING
    name: str = MISSING
    num_requests: int | None = MISSING    # null: a whole trace (generated workloads need a number)
    rate: float | None = MISSING
    burstiness: float = 1.0
    max_prompt_len: int | None = None
    max_output_len: int | None = None
    seed: int = MISSING


@dataclass
class SyntheticWorkloadConfig(WorkloadConfig):
    """``workload`` for generated requests (:func:`balanceroute.workload.synthetic`)."""

    _target_: str = "balanceroute.workload.synthetic"
    distribution: str = "lognormal"
    prompt_mean: float = MISSING
    output_mean: float = MISSING
    prompt_sigma: float = AZURE_CONV_PROMPT_SIGMA
    output_sigma: float = AZURE_CONV_OUTPUT_SIGMA


@dataclass
class AzureTraceWorkloadConfig(WorkloadConfig):
    """``workload`` replaying an Azure LLM inference trace (:func:`balanceroute.workload.load_azure_trace`)."""

    _target_: str = "balanceroute.workload.load_azure_trace"
    path: str = MISSING
    time_scale: float | None = None


@dataclass
class ShareGPTWorkloadConfig(WorkloadConfig):
    """``workload`` from a ShareGPT conversation file (:func:`balanceroute.workload.load_sharegpt`)."""

    _target_: str = "balanceroute.workload.load_sharegpt"
    path: str = MISSING
    tokenizer: str | None = None
    shuffle: bool = True


#: Workload schema per loader (``_target_``); a new loader adds its schema here.
WORKLOADS: dict[str, type] = {schema._target_: schema for schema in
                              (SyntheticWorkloadConfig, AzureTraceWorkloadConfig, ShareGPTWorkloadConfig)}


# ---- loggers ------------------------------------------------------------------------------------------------------
@dataclass
class NoLoggerConfig:
    """``logger=none``: the run folder's files are the record."""

    name: str = "none"


@dataclass
class WandbLoggerConfig(WandbOptions):
    """``logger=wandb``: :class:`~balanceroute.tracking.wandb_sink.WandbOptions` (conf/logger/wandb.yaml)."""

    name: str = "wandb"


#: Logger schema per ``logger.name``.
LOGGERS: dict[str, type] = {"none": NoLoggerConfig, "wandb": WandbLoggerConfig}


# ---- the run --------------------------------------------------------------------------------------------------------
@dataclass
class RunSchema:
    """The whole configuration (conf/config.yaml). The groups' sections are typed by their own schemas, which
    depend on the option chosen (a backend's keys are its own), so they are ``Any`` here."""

    name: str = MISSING
    rate: float | None = MISSING
    seed: int = MISSING
    steady: SteadyWindow = field(default_factory=SteadyWindow)
    resume: bool = MISSING
    label: str | None = None   # what tables call the run's router (study arms, conf/arm/); null: router.name
    # Tables a study looks its settings up in by interpolation (e.g. its rate per model and workload); no code
    # reads them.
    lookup: dict[str, Any] = field(default_factory=dict)
    model: Any = MISSING
    router: Any = MISSING
    parallel: Any = MISSING
    workload: Any = MISSING
    backend: Any = MISSING
    logger: Any = MISSING
    data: Any = MISSING
    paths: Any = MISSING
