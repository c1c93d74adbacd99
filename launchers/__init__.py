"""Where runs execute. A local run or sweep needs nothing from here: Hydra's basic launcher runs the jobs in
run.py's process, and ``hydra/launcher=submitit_local`` (hydra-submitit-launcher) runs each in its own process.
Cluster launchers (SLURM, Ray on an allocation) and managed servers for live backends live in this package."""
