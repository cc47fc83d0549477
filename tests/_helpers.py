"""Helpers shared by the tests: waiting for a condition (never for a length of time)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

# The top-level modules of every optional dependency: blocking them all leaves bare atrace.
EVERY_EXTRA = ("asyncpg", "pgserver", "aiohttp", "msgpack", "opentelemetry", "google", "rich")

# Long enough for a loaded CI machine; a passing test never waits this long.
DEFAULT_TIMEOUT = 20.0


async def wait_until(
    check: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    every: float = 0.01,
    describe: Callable[[], object] | None = None,
) -> None:
    """Poll ``check()`` (a plain or async predicate) every ``every`` seconds until it is true.

    A condition, not a timing assertion: ``timeout`` only ends a test that would hang, with an
    AssertionError carrying ``describe()`` (say, ``atrace.metrics``) when given.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            detail = f": {describe()}" if describe is not None else ""
            raise AssertionError(f"condition not reached within {timeout} s{detail}")
        await asyncio.sleep(every)
