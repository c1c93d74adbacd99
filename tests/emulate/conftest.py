"""Fixtures: an in-process emulated fleet on 127.0.0.1 (OS-chosen ports) and an HTTP client session."""
from __future__ import annotations

import aiohttp
import pytest

from balanceroute.emulate import EmulatedFleet, LiveEngine
from balanceroute.policies import make_policy
from balanceroute.sim.presets import get_preset


@pytest.fixture
async def start_fleet():
    """``await start_fleet(ranks=2, model="tiny", router="round_robin", barrier=True, time_scale=1.0, **fleet)``
    -> (fleet, urls); every fleet started is stopped at the end."""
    fleets = []

    async def start(ranks: int = 2, model: str = "tiny", router: str = "round_robin", barrier: bool = True,
                    time_scale: float = 1.0, model_overrides: dict | None = None, **kwargs):
        preset = get_preset(model).with_overrides(**(model_overrides or {}))
        engine = LiveEngine(preset, ranks, make_policy(router), barrier=barrier, time_scale=time_scale)
        fleet = EmulatedFleet(engine, served_model_name=kwargs.pop("served_model_name", model), **kwargs)
        fleets.append(fleet)
        return fleet, await fleet.start("127.0.0.1", 0)

    yield start
    for fleet in fleets:
        await fleet.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s
