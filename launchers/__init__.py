"""Where runs execute: how jobs are submitted. A local run or sweep needs nothing from here: Hydra's basic launcher
runs the jobs in run.py's process, and ``hydra/launcher=submitit_local`` (hydra-submitit-launcher) runs each in its
own process. ``hydra/launcher=slurm`` (:mod:`launchers.submission`) submits each run as a SLURM job sized by
:mod:`launchers.resources`; ``balanceroute plan`` (:mod:`launchers.plan`) prints that request without submitting.

What a run starts inside its job (servers, Ray nodes, headless engines on the other nodes) is library code in
:mod:`balanceroute.serving`: this package may import it, never the reverse."""
