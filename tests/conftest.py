"""Shared fixtures: the session's PostgreSQL, a clean atrace per test, no unobserved loop errors."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest

# An accidental use of the embedded default must never touch the user's real data directory.
os.environ.setdefault("ATRACE_DATA_DIR", tempfile.mkdtemp(prefix="atrace-data-", dir="/tmp"))
os.chmod(os.environ["ATRACE_DATA_DIR"], 0o755)
for _name in list(os.environ):
    if _name.startswith(("ATRACE_", "OTEL_")) and _name not in (
        "ATRACE_DATA_DIR",
        "ATRACE_TEST_DSN",
        "ATRACE_PUREPYTHON",
    ):
        del os.environ[_name]

import atrace  # noqa: E402
from _pg import pg_db, pg_schema, pg_server  # noqa: E402, F401
from atrace.testing import MemorySink  # noqa: E402


@pytest.fixture(autouse=True)
def _own_spill_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test spills into a directory of its own: no test replays another's batches."""
    monkeypatch.setenv("ATRACE_SPILL_DIR", str(tmp_path / "atrace-spill"))


@pytest.fixture(autouse=True)
async def _clean_atrace(_own_spill_dir: None) -> AsyncIterator[None]:
    """Each test starts unconfigured and ends with its pipeline stopped and no loop errors."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []

    def record(_loop: Any, ctx: dict[str, Any]) -> None:
        if not _asyncpg_connection_loss(ctx):
            errors.append(ctx)

    loop.set_exception_handler(record)
    atrace.reset()
    yield
    await atrace.ashutdown(timeout=10)
    atrace.reset()
    loop.set_exception_handler(None)
    assert not errors, f"unobserved errors on the loop: {errors}"


@pytest.fixture
def memory_sink() -> MemorySink:
    """An in-memory sink to configure atrace with."""
    return MemorySink()


@pytest.fixture
def configure_memory(memory_sink: MemorySink) -> MemorySink:
    """atrace configured to write to a MemorySink, flushing quickly."""
    atrace.configure(service="test", sink=memory_sink, flush_interval=0.05)
    return memory_sink


def _asyncpg_connection_loss(ctx: dict[str, Any]) -> bool:
    """asyncpg's own futures (not tasks) left failed when the server drops a session mid-call.

    The fault tests kill sessions on purpose; asyncpg then sets the loss on an internal waiter
    nobody awaits any more. atrace's own work runs in tasks, which this does not excuse.
    """
    future = ctx.get("future")
    exc = ctx.get("exception")
    if future is None or isinstance(future, asyncio.Task) or exc is None:
        return False
    name = type(exc).__name__
    return name == "ConnectionDoesNotExistError" or (
        isinstance(exc, ConnectionError) and "connection_lost" in str(exc)
    )
