"""Submitting a Hydra sweep to SLURM with submitit, one allocation per run (``hydra/launcher=slurm``).

hydra-submitit-launcher submits a whole sweep as one job array with one set of resources, those of the sweep's
base configuration. :func:`launch_sweep` (called by the launcher plugin in ``hydra_plugins/``) keeps everything
else of it (the pickled launcher runs each Hydra job, its ``checkpoint`` requeues a preempted job) and changes
three things:

- each run's allocation is derived from its own configuration (:func:`launchers.resources.job_resources`), and
  runs with equal requests share a job array, so a sweep over models or ``parallel.dp`` asks for the right nodes;
- job states come from ``sacct`` where the cluster keeps accounting and from ``squeue`` where it does not (a small
  or test cluster), so a job cancelled with ``scancel`` ends the wait instead of leaving it polling forever;
- the launcher waits for every job, then reports all that ended without a result in one error naming their ids
  and runs; rerunning the command finishes the sweep (``resume`` skips the runs that have their result.json).
"""
from __future__ import annotations

import functools
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.slurm.slurm import SlurmExecutor, SlurmInfoWatcher, SlurmJob

from launchers.resources import JobResources, job_resources

log = logging.getLogger(__name__)

#: State given to a job that squeue no longer lists (finished longer ago than the cluster's MinJobAge) and that
#: left no result: final, reason unknown.
PURGED = "PURGED"
#: Longest pause (s) between two job-state queries while waiting for a sweep.
MAX_POLL_INTERVAL_S = 120


class SweepIncomplete(SystemExit):
    """Some jobs of a sweep ended without a result (cancelled, killed, out of time, node failure).

    A SystemExit, so run.py ends with this message and status 1 rather than a traceback through Hydra: nothing in
    the submitting process went wrong, and the message says what to do.
    """


@functools.lru_cache(maxsize=1)
def accounting_enabled() -> bool:
    """Whether ``sacct`` can answer here: the cluster has an accounting storage (``scontrol show config``)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return True  # cannot tell: keep submitit's default (sacct)
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageType":
            return value.strip() != "accounting_storage/none"
    return True


class JobStateWatcher(SlurmInfoWatcher):
    """submitit's job-state watcher, answering from ``squeue`` when the cluster has no accounting."""

    def _make_command(self) -> list[str] | None:
        if accounting_enabled():
            return super()._make_command()
        if not self._registered - self._finished:
            return None
        # All of the user's jobs rather than --jobs: squeue fails outright on an id it has already forgotten.
        return ["squeue", "--me", "--array", "--states=all", "--noheader", "--format=%i|%T|%N"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if accounting_enabled():
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("JobID|State|NodeList\n" + text)
        for job_id in self._registered - self._finished - set(info):
            info[job_id] = {"JobID": job_id, "State": PURGED, "NodeList": ""}
        return info


class StateWatchingJob(SlurmJob):
    """A submitted SLURM job whose state comes from :class:`JobStateWatcher` (submitit's public way to follow a
    job is to construct a job object for its id and folder)."""

    watcher = JobStateWatcher(delay_s=MAX_POLL_INTERVAL_S)


def plan_jobs(launcher: Any, job_overrides: Sequence[Sequence[str]]) -> list[JobResources]:
    """Each job's allocation: its sweep configuration composed as the job will compose it."""
    loader = launcher.hydra_context.config_loader
    return [job_resources(launcher.params, loader.load_sweep_config(launcher.config, list(overrides)))
            for overrides in job_overrides]


def launch_sweep(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Submit one SLURM job per element of ``job_overrides`` and wait for all; the jobs' Hydra results in order.

    ``launcher`` is the hydra-submitit-launcher instance (its ``params``, ``config`` and ``hydra_context``; it is
    itself the callable each job runs). Raises :class:`SweepIncomplete` once every job has ended if any ended
    without a result.
    """
    config = launcher.config
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    resources = plan_jobs(launcher, job_overrides)
    groups: dict[tuple, list[int]] = {}
    for i, res in enumerate(resources):
        groups.setdefault(res.key(), []).append(i)

    log.info("SLURM sweep: %d job(s) in %d allocation shape(s); output dir %s", len(job_overrides), len(groups),
             sweep_dir)
    jobs: dict[int, StateWatchingJob] = {}
    state = Singleton.get_state()
    for members in groups.values():
        res = resources[members[0]]
        executor = SlurmExecutor(folder=launcher.params["submitit_folder"],
                                 max_num_timeout=launcher.params.get("max_num_timeout", 0))
        executor.update_parameters(**res.submitit_parameters())
        args = [(list(job_overrides[i]), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
                 state) for i in members]
        for i, submitted in zip(members, executor.map_array(launcher, *zip(*args))):
            job = jobs[i] = StateWatchingJob(folder=executor.folder, job_id=submitted.job_id,
                                             tasks=range(submitted.num_tasks))
            log.info("\t#%d : %s -> SLURM job %s (%s)", initial_job_idx + i,
                     " ".join(filter_overrides(job_overrides[i])), job.job_id, res.describe())

    results: list[JobReturn] = []
    failed: list[str] = []
    for i in range(len(job_overrides)):
        job = jobs[i]
        try:
            results.append(job.results()[0])
        except FailedJobError as exc:  # the job body raised outside the run (the run's own errors are in results)
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            failed.append(f"job {job.job_id} ({' '.join(filter_overrides(job_overrides[i]))}): failed: {lines[-1]}")
        except UncompletedJobError:  # ended by SLURM: cancelled, out of time, node failure, out of memory
            state = job.watcher.get_state(job.job_id, mode="force")
            failed.append(f"job {job.job_id} ({' '.join(filter_overrides(job_overrides[i]))}): {state}")
    if failed:
        raise SweepIncomplete(
            f"{len(failed)} of {len(job_overrides)} SLURM jobs ended without a result:\n  " + "\n  ".join(failed)
            + f"\nTheir logs are in {launcher.params['submitit_folder'].replace('%j', '<job id>')}. Rerun the same "
              "command to finish the sweep: resume skips the runs that already have their result.json.")
    return results
