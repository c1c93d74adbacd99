"""Run balanceroute experiments: ``python run.py [overrides]``, or ``python run.py -m ...`` for a sweep.

    python run.py                                             # one simulation with conf/config.yaml's defaults
    python run.py router=jsq_load rate=5 parallel.dp=16       # change anything
    python run.py -m router=vllm_default,jsq_load rate=1,3,5  # one run per combination; rerun to resume
    python -m analysis.compare outputs/multirun/default       # the comparison table

Configuration lives in conf/ (README: "Configuration"); each run folder gets the files described in the README's
"Result files". A value a user can fix ends the run with one ``error: <key>: <problem>`` line and exit code 2.
"""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from balanceroute.config import ConfigError, register_schemas
from balanceroute.experiment import (
    CONFIG_ERROR_EXIT,
    RUN_FAILED_EXIT,
    RunFailed,
    check_single_run_of_a_study,
    discard_unused_run_dir,
    run_experiment,
)

register_schemas()  # conf/ files build on the schemas (balanceroute/config/)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    try:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.RUN:
            check_single_run_of_a_study(hydra_cfg.sweeper.get("params"), hydra_cfg.overrides.task)
        return run_experiment(cfg, progress=sys.stderr.isatty())
    except ConfigError as exc:
        # One line, no traceback. SystemExit also ends a sweep: fix the value and rerun; resume skips finished runs.
        print(f"error: {exc}", file=sys.stderr)
        discard_unused_run_dir(cfg)
        sys.exit(CONFIG_ERROR_EXIT)
    except RunFailed as exc:  # a live run that ran but is not a measurement: its result is on disk
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(RUN_FAILED_EXIT)


if __name__ == "__main__":
    main()
