"""The processes a run starts and stops: servers, their helpers, and how they spread over a SLURM allocation.

- :mod:`~balanceroute.serving.process`: :class:`ManagedProcess` (own process group, log file, group stop),
  :class:`ServerError`, :func:`free_port`, :func:`log_tail`;
- :mod:`~balanceroute.serving.server`: :class:`ManagedServer`, any HTTP server with a health URL;
- :mod:`~balanceroute.serving.vllm`: the ``vllm serve`` command from the Hydra config, :class:`VllmServer`, vLLM's
  per-engine counters;
- :mod:`~balanceroute.serving.slurm`: the current SLURM job and allocation, ``srun`` onto one of its nodes;
- :mod:`~balanceroute.serving.ray_cluster` and :mod:`~balanceroute.serving.multinode`: one vLLM deployment over
  several nodes of an allocation (Ray, or vLLM's own headless engines).

This is library code that runs inside a run (locally, or as the body of a SLURM job); how jobs are submitted is
:mod:`launchers`, which may import from here but never the reverse.
"""
from balanceroute.serving.process import ManagedProcess, ServerError, free_port, log_tail
from balanceroute.serving.server import ManagedServer
from balanceroute.serving.slurm import slurm_job_id
from balanceroute.serving.vllm import ENGINE_COUNTERS, VllmServer, engine_counter, option_args, serve_command

__all__ = ["ENGINE_COUNTERS", "ManagedProcess", "ManagedServer", "ServerError", "VllmServer", "engine_counter",
           "free_port", "log_tail", "option_args", "serve_command", "slurm_job_id"]
