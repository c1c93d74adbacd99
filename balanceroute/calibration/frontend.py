"""The front end's share of latency: what the fitted step model leaves unexplained in the runs' TTFT.

A request's TTFT in a live run is the engine's part (queueing, the step that computes its prompt) plus what
happens outside the engine steps: the HTTP request, tokenization, the hop from the API server to the engine, and
the way back (detokenization, streaming). The step log sees only the first part. So each calibration run is
replayed through the simulator with the fitted step model, with the requests the live run sent at the times it
sent them and the run's own router, and the front-end latency is the mean, over the completed requests of all
runs, of live TTFT minus simulated TTFT (at least 0). The simulator adds it to the times the client sees
(:class:`~balanceroute.sim.presets.ModelPreset.frontend_latency_s`), which moves TTFT and E2EL, not TPOT.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from balanceroute.policies import make_policy
from balanceroute.results import REQUESTS_FILE
from balanceroute.sim import SimConfig, simulate
from balanceroute.sim.presets import ModelPreset
from balanceroute.workload import Workload


@dataclass(frozen=True)
class FrontendFit:
    """The fitted front-end latency and the mean TTFTs it came from, per run (seconds)."""

    latency_s: float
    live_ttft_s: list[float]
    step_model_ttft_s: list[float]


def sent_workload(requests: pd.DataFrame) -> Workload:
    """The requests a live run sent, at the times it sent them (a client on a loaded machine sends some late),
    with the prompt lengths the server counted and the output lengths asked for."""
    sent = requests.sort_values("arrival_s", kind="stable")
    return Workload(arrival_s=sent["arrival_s"].to_numpy(), prompt_len=sent["prompt_len"].to_numpy(),
                    output_len=sent["target_output_len"].to_numpy(), prompt_hash=np.zeros(len(sent)),
                    name="sent requests")


def replay(run_dir: Path, result: dict, preset: ModelPreset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(live, simulated) records of the requests of ``run_dir`` both completed, in the same order."""
    live = pd.read_parquet(run_dir / REQUESTS_FILE).sort_values("arrival_s", kind="stable").reset_index(drop=True)
    config = result["config"]
    params = {k: v for k, v in config["router"].items() if k not in ("_target_", "name", "history_requests")}
    policy = make_policy(config["router"]["name"], seed=result["seed"], **params)
    # vLLM steps the DP engines of an MoE model together (dummy batches on idle ones); a dense model's run apart
    deployment = SimConfig(num_workers=config["parallel"]["dp"], model=preset, barrier=bool(config["model"]["moe"]),
                           seed=result["seed"])
    sim = simulate(sent_workload(live), policy, deployment).requests
    both = (live["status"] == "completed").to_numpy() & (sim["status"] == "completed").to_numpy()
    return live[both], sim[both]


def fit_frontend(runs: list[tuple[Path, dict]], preset: ModelPreset) -> FrontendFit:
    """The front-end latency of ``runs`` (run folder, result.json) under ``preset`` (the fitted step model,
    without any front-end latency of its own)."""
    gaps, live_means, sim_means = [], [], []
    for run_dir, result in runs:
        live, sim = replay(run_dir, result, preset)
        live_ttft = (live["first_token_s"] - live["arrival_s"]).to_numpy()
        sim_ttft = (sim["first_token_s"] - sim["arrival_s"]).to_numpy()
        gaps.append(live_ttft - sim_ttft)
        live_means.append(float(live_ttft.mean()))
        sim_means.append(float(sim_ttft.mean()))
    latency = max(float(np.concatenate(gaps).mean()), 0.0)
    return FrontendFit(latency, live_means, sim_means)
