"""``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml): hydra-submitit-launcher's SLURM launcher, with each
run's allocation derived from its own configuration and job states that also work without SLURM accounting
(:mod:`launchers.submission`). Each job runs the pickled launcher as hydra-submitit-launcher's does, including its
``checkpoint``, which requeues a preempted job."""
from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class BalancerouteSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if shutil.which("sbatch") is None:
            print("error: hydra/launcher=slurm submits through SLURM's sbatch, which is not on PATH here; run the "
                  "sweep on a machine of the cluster (a login node), or choose hydra/launcher=basic (in this process) "
                  "or hydra/launcher=submitit_local (a process per job)", file=sys.stderr)
            sys.exit(2)
        import cloudpickle  # imports here: Hydra imports every plugin module at start, keep that light

        from launchers.submission import launch_sweep

        # Each job unpickles this launcher on a compute node whose Python path may lack this checkout (Hydra found
        # the plugin through run.py's folder): pickle this class by value, its bases by reference.
        cloudpickle.register_pickle_by_value(sys.modules[type(self).__module__])
        return launch_sweep(self, job_overrides, initial_job_idx)
