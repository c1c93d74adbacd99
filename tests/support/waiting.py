"""Waiting on state, not on the clock: tests that need something to have happened poll for it.

The timeout is only a bound on a hung test (generous, so a loaded machine never trips it); the test proceeds the
moment the state is reached, however slow or fast the machine is.
"""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

#: Longest a wait may take before the test fails as hung.
HUNG_S = 60.0


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = HUNG_S,
                   what: str = "condition", poll_s: float = 0.005) -> None:
    """Return once ``predicate()`` (a function or a coroutine function) is true; AssertionError naming ``what``
    if it is still false after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(poll_s)
