"""Fixtures for the benchmark client tests: the OpenAI test server, started in the test's event loop."""
from __future__ import annotations

import pytest

from tests.support.openai_server import ServerConfig, serve


@pytest.fixture
async def server_factory():
    """``await server_factory(**ServerConfig fields)`` starts a test server that lives until the test ends."""
    started = []

    async def start(**config):
        cm = serve(ServerConfig(**config))
        started.append(cm)
        return await cm.__aenter__()

    yield start
    for cm in reversed(started):
        await cm.__aexit__(None, None, None)


@pytest.fixture
async def server(server_factory):
    """A test server with no delays."""
    return await server_factory()
