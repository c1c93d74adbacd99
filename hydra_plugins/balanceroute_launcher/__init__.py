"""balanceroute's Hydra launcher plugin (``hydra/launcher=slurm``). Hydra loads launchers only from the
``hydra_plugins`` namespace; the logic lives in :mod:`launchers.submission`."""
