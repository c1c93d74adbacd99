"""The step log: every engine step's composition and timing, written by the engine processes, for calibration.

The simulator's step model (ALGORITHMS.md section 3) prices a step by what each DP engine computes in it: its
resident KV tokens and its prefill tokens. ``balanceroute calibrate`` fits the model's coefficients to a real
deployment from exactly those quantities, so each engine core process (the plugin is loaded in every vLLM process)
records, when ``BALANCEROUTE_STEP_LOG`` names a folder, one JSON line per step in ``steps_dp<rank>.jsonl`` there:

- a header line ``{"event": "engine", ...}``: the engine's DP rank and size, KV cache blocks and block size, and
  scheduler limits (``max_num_seqs``, ``max_num_batched_tokens``), as vLLM sized them at start-up;
- ``{"event": "step", ...}`` per step: ``wave`` and ``k`` (vLLM's DP wave and step counter, the same on every rank
  of a lock-stepped DP group, so the ranks' lines join on them), ``t`` (Unix time at the start), ``dur`` (seconds
  the step call took), ``reqs`` and ``tokens`` (requests and tokens scheduled), ``prefill`` (tokens of requests
  given more than one token: prompt chunks), ``kv`` (KV tokens of the scheduled requests after the step),
  ``running`` and ``waiting`` (the scheduler's queues after the step: work left, so whether the next step
  follows at once); a dummy step (an idle rank keeping the EP collectives in step) has ``dummy: true`` and zeros.

The time between two consecutive step starts of a rank is the step period a running request sees between tokens
(the simulator's T); calibration reads periods, not ``dur``, so input handling and the DP synchronisation count.
Lines are written with one ``write`` each on an ``O_APPEND`` file: a killed engine leaves whole lines.
"""
from __future__ import annotations

import json
import os
import time
import types
from pathlib import Path

#: The step logs' folder inside a run folder (the vllm backend's ``BALANCEROUTE_STEP_LOG``).
STEP_LOG_DIR = "steps"
ENGINE, STEP = "engine", "step"
_INSTALLED_ATTR = "_balanceroute_step_log"
_WRITER_ATTR = "_balanceroute_step_writer"
_LAST_SCHEDULE = "_balanceroute_last_schedule"


def step_log_path(folder: str | os.PathLike, dp_rank: int) -> Path:
    return Path(folder) / f"steps_dp{dp_rank}.jsonl"


class StepWriter:
    """The step log of one engine core: its header at creation, then one line per step."""

    def __init__(self, folder: str | os.PathLike, engine) -> None:
        vllm_config = engine.vllm_config
        parallel, cache, sched = vllm_config.parallel_config, vllm_config.cache_config, vllm_config.scheduler_config
        self.dp_rank = int(parallel.data_parallel_rank or 0)
        path = step_log_path(folder, self.dp_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._count = 0  # steps of this rank (the step index when vLLM keeps no DP step counter)
        self._write({"event": ENGINE, "dp_rank": self.dp_rank, "dp_size": int(parallel.data_parallel_size),
                     "pid": os.getpid(), "num_gpu_blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
                     "max_num_seqs": sched.max_num_seqs, "max_num_batched_tokens": sched.max_num_batched_tokens,
                     "time": time.time()})

    def _write(self, record: dict) -> None:
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())

    def step(self, engine, started: float, duration: float, scheduled) -> None:
        """One step of ``engine`` that began at ``started`` (Unix time); ``scheduled``: its SchedulerOutput, or
        None for a dummy step."""
        record = {"event": STEP, "wave": getattr(engine, "current_wave", 0),
                  "k": getattr(engine, "step_counter", self._count), "t": started, "dur": duration}
        if scheduled is None:
            record.update(dummy=True, reqs=0, tokens=0, prefill=0, kv=0)
        else:
            counts = scheduled.num_scheduled_tokens
            tokens = scheduled.total_num_scheduled_tokens
            computed = (sum(r.num_computed_tokens for r in scheduled.scheduled_new_reqs)
                        + sum(scheduled.scheduled_cached_reqs.num_computed_tokens))
            record.update(reqs=len(counts), tokens=tokens, prefill=sum(n for n in counts.values() if n > 1),
                          kv=computed + tokens)
        record.update(running=len(engine.scheduler.running), waiting=len(engine.scheduler.waiting))
        self._count += 1
        self._write(record)


def _writer(engine, folder: str) -> StepWriter:
    writer = getattr(engine, _WRITER_ATTR, None)
    if writer is None:
        writer = StepWriter(folder, engine)
        setattr(engine, _WRITER_ATTR, writer)
    return writer


def _capture_schedule(engine) -> None:
    """Make ``engine.scheduler.schedule`` keep its latest output in the engine's ``_LAST_SCHEDULE`` attribute
    (installed once per engine: the scheduler is created with it)."""
    scheduler = engine.scheduler
    if getattr(scheduler, _INSTALLED_ATTR, False):
        return
    schedule = scheduler.schedule

    def recording_schedule(*args, **kwargs):
        output = schedule(*args, **kwargs)
        setattr(engine, _LAST_SCHEDULE, output)
        return output

    scheduler.schedule = recording_schedule
    setattr(scheduler, _INSTALLED_ATTR, True)


def install(core: types.ModuleType, folder: str) -> None:
    """Wrap ``core.EngineCore.step`` and ``execute_dummy_batch`` (idempotent) so that every engine core of this
    process logs its steps into ``folder``. The class is patched before any engine exists (plugins load first in
    ``EngineCore.__init__``, which then binds ``step``), so the busy loop calls the wrappers."""
    cls = core.EngineCore
    if getattr(cls, _INSTALLED_ATTR, False):
        return
    vllm_step, vllm_dummy = cls.step, cls.execute_dummy_batch

    def step(self):
        _capture_schedule(self)
        setattr(self, _LAST_SCHEDULE, None)
        started, clock = time.time(), time.perf_counter()
        result = vllm_step(self)
        scheduled = getattr(self, _LAST_SCHEDULE)
        if scheduled is not None:  # (a step with nothing to schedule returns at once; a dummy step follows)
            _writer(self, folder).step(self, started, time.perf_counter() - clock, scheduled)
        return result

    def execute_dummy_batch(self):
        started, clock = time.time(), time.perf_counter()
        vllm_dummy(self)
        _writer(self, folder).step(self, started, time.perf_counter() - clock, None)

    cls.step, cls.execute_dummy_batch = step, execute_dummy_batch
    setattr(cls, _INSTALLED_ATTR, True)
