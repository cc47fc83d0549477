"""Delivery under real faults, through a TCP proxy in front of a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import atrace
from _proxy import TCPProxy

FAST_RECOVERY = {
    "retry_attempts": 2,
    "retry_deadline": 1.0,
    "breaker_threshold": 2,
    "breaker_reset": 0.2,
    "flush_interval": 0.05,
    "batch_size": 200,
}


@pytest.fixture
async def proxy(pg_server: Any) -> AsyncIterator[TCPProxy]:
    """A proxy in front of the session's PostgreSQL."""
    async with TCPProxy(pg_server.host, pg_server.port) as p:
        yield p


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    """A spill directory of the test's own."""
    return tmp_path / "spill"


async def count(dsn: str, schema: str) -> tuple[int, int]:
    """(rows, distinct messages) stored so far."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, count(DISTINCT message) AS d FROM {schema}.records "
            "WHERE kind = 0"
        )
        return int(row["n"]), int(row["d"])
    finally:
        await conn.close()


def configure(service: str, sink: str, schema: str, spill_dir: Path, **extra: Any) -> None:
    """atrace with fast recovery settings, writing to ``sink`` and spilling to ``spill_dir``."""
    atrace.configure(
        service=service,
        sink=sink,
        schema=schema,
        spill_dir=str(spill_dir),
        **{**FAST_RECOVERY, **extra},
    )


def invariant_holds() -> bool:
    m = atrace.metrics()
    return m.accepted == m.written + m.dropped + m.queue_size + m.in_flight + m.spilled_pending


async def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    """Wait for a condition (not a timing assertion): check it, with the invariant, every 10 ms."""
    deadline = time.monotonic() + timeout
    while True:
        assert invariant_holds(), atrace.metrics()
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached: {atrace.metrics()}")
        await asyncio.sleep(0.01)


class TestOutage:
    async def test_outage_under_load_loses_and_duplicates_nothing(
        self, proxy: TCPProxy, pg_schema: tuple[str, str], spill_dir: Path
    ) -> None:
        """Records emitted before, during and after an outage all land exactly once."""
        dsn, schema = pg_schema
        configure("fault", proxy.url_for(dsn), schema, spill_dir)
        sent = 0

        async def emit(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                atrace.info(f"m{sent}")
                sent += 1
                if sent % 50 == 0:
                    assert invariant_holds(), atrace.metrics()
                    await asyncio.sleep(0.005)

        await emit(500)
        proxy.cut()
        await emit(2000)
        await wait_until(lambda: _true(atrace.metrics().breaker_trips > 0))
        proxy.restore()
        await emit(500)
        await wait_until(lambda: _done(dsn, schema, sent))
        m = atrace.metrics()
        assert (m.dropped, m.spilled_pending, m.written) == (0, 0, sent)
        assert m.replayed == m.spilled > 0 and m.breaker_trips >= 1
        assert await count(dsn, schema) == (sent, sent)

    async def test_flapping_connection(
        self, proxy: TCPProxy, pg_schema: tuple[str, str], spill_dir: Path
    ) -> None:
        """A connection cut and restored again and again still delivers every record once."""
        dsn, schema = pg_schema
        configure("fault", proxy.url_for(dsn), schema, spill_dir)
        sent = 0
        for _ in range(6):
            for _ in range(300):
                atrace.info(f"m{sent}")
                sent += 1
            await asyncio.sleep(0.05)
            proxy.cut()
            await asyncio.sleep(0.1)
            proxy.restore()
        await wait_until(lambda: _done(dsn, schema, sent))
        assert await count(dsn, schema) == (sent, sent)
        assert atrace.metrics().dropped == 0


class TestExactlyOnce:
    async def test_commit_without_acknowledgement_is_stored_once(
        self, proxy: TCPProxy, pg_schema: tuple[str, str], spill_dir: Path
    ) -> None:
        """A batch whose COMMIT went through but whose answer was lost is retried, stored once."""
        dsn, schema = pg_schema
        configure("once", proxy.url_for(dsn), schema, spill_dir)
        atrace.info("warm-up")
        assert await atrace.aflush()
        proxy.cut_after_commit()
        for i in range(100):
            atrace.info(f"m{i}")
        assert await atrace.aflush(timeout=30)
        await wait_until(lambda: _true(atrace.metrics().spilled_pending == 0))
        assert proxy.commits_cut == 1
        m = atrace.metrics()
        assert m.retries + m.spilled >= 1  # the lost acknowledgement was noticed and retried
        assert await count(dsn, schema) == (101, 101)
        conn = await asyncpg.connect(dsn)
        try:
            batches = await conn.fetchval(f"SELECT count(*) FROM {schema}.batches")
        finally:
            await conn.close()
        assert batches == m.batches


class TestRestart:
    async def test_spilled_batches_replayed_by_the_next_process(
        self, proxy: TCPProxy, pg_schema: tuple[str, str], spill_dir: Path
    ) -> None:
        """What a process could not deliver is replayed by the next one using the same spill."""
        dsn, schema = pg_schema
        settings = dict(FAST_RECOVERY, schema=schema, spill_dir=str(spill_dir))
        proxy.cut()
        atrace.configure(service="first", sink=proxy.url_for(dsn), **settings)
        for i in range(300):
            atrace.info(f"m{i}")
        assert not await atrace.ashutdown(timeout=10)  # all spilled: the database is away
        first = atrace.metrics()
        assert first.spilled == 300 and first.written == 0 and first.dropped == 0
        proxy.restore()
        atrace.reset()  # as a new process would start: nothing carried over, nothing counted
        atrace.configure(service="second", sink=proxy.url_for(dsn), **settings)
        atrace.info("after restart")
        await wait_until(lambda: _stored(dsn, schema, 301))
        m = atrace.metrics()
        # The first process's records count as replayed here, not as written: not accepted here.
        assert (m.replayed, m.written, m.spilled_pending) == (300, 1, 0)
        assert await count(dsn, schema) == (301, 301)


class TestShutdown:
    async def test_shutdown_with_a_dead_sink_spills_and_returns(
        self, proxy: TCPProxy, pg_schema: tuple[str, str], spill_dir: Path
    ) -> None:
        """ashutdown returns with the sink dead; what was not sent is on disk, not lost."""
        dsn, schema = pg_schema
        proxy.pause()  # the server never answers: a hung sink
        configure("hung", proxy.url_for(dsn), schema, spill_dir, shutdown_timeout=1.0)
        for i in range(500):
            atrace.info(f"m{i}")
        await atrace.ashutdown(timeout=30)
        m = atrace.metrics()
        assert m.written == 0 and m.dropped == 0 and m.in_flight == 0 and m.queue_size == 0
        assert m.spilled == m.spilled_pending == 500

    async def test_unwritable_spill_is_counted_not_raised(
        self, proxy: TCPProxy, pg_schema: tuple[str, str], tmp_path: Path
    ) -> None:
        """With the spill directory unusable, undeliverable records are counted as dropped."""
        dsn, schema = pg_schema
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("a file where the spill directory should be")
        proxy.cut()
        configure("nospill", proxy.url_for(dsn), schema, blocker / "spill")
        for i in range(100):
            atrace.info(f"m{i}")
        assert not await atrace.aflush(timeout=30)  # dropped: nowhere to spill
        m = atrace.metrics()
        assert (m.dropped_spill, m.spilled, m.written) == (100, 0, 0)
        assert invariant_holds()


class TestLoopNotBlocked:
    async def test_slow_server_does_not_stall_the_application(
        self, proxy: TCPProxy, pg_schema: tuple[str, str], spill_dir: Path
    ) -> None:
        """While every write crawls, the application's own tasks keep running."""
        dsn, schema = pg_schema
        configure("slow", proxy.url_for(dsn), schema, spill_dir)
        atrace.info("warm-up")
        assert await atrace.aflush()
        proxy.slow(0.3)
        ticks = 0

        async def app() -> None:
            nonlocal ticks
            for _ in range(20):
                atrace.info("tick")
                await asyncio.sleep(0.001)
                ticks += 1

        flushing = asyncio.ensure_future(atrace.aflush(timeout=60))
        await asyncio.wait_for(app(), 10)
        assert ticks == 20 and not flushing.done()  # the app finished while the write crawled
        proxy.slow(0)
        assert await flushing


async def _true(value: bool) -> bool:
    return value


async def _stored(dsn: str, schema: str, expected: int) -> bool:
    await atrace.aflush(timeout=5)
    return (await count(dsn, schema))[0] == expected


async def _done(dsn: str, schema: str, expected: int) -> bool:
    await atrace.aflush(timeout=5)
    m = atrace.metrics()
    return m.written == expected and m.spilled_pending == 0 and m.in_flight == 0


class TestServerSide:
    async def test_backends_terminated_mid_run(
        self, pg_schema: tuple[str, str], spill_dir: Path
    ) -> None:
        """Sessions dropped by the server (as in a restart): nothing lost, nothing twice."""
        dsn, schema = pg_schema
        configure("restart", dsn, schema, spill_dir)
        admin = await asyncpg.connect(dsn)
        sent = 0
        try:
            for _ in range(5):
                for _ in range(400):
                    atrace.info(f"m{sent}")
                    sent += 1
                await asyncio.sleep(0.02)
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'atrace' AND pid <> pg_backend_pid()"
                )
        finally:
            await admin.close()
        await wait_until(lambda: _done(dsn, schema, sent))
        assert await count(dsn, schema) == (sent, sent)
        assert atrace.metrics().dropped == 0

    async def test_server_restarted_mid_run(
        self, pg_server: Any, pg_schema: tuple[str, str], spill_dir: Path
    ) -> None:
        """A real PostgreSQL restart amid a steady stream: nothing lost, nothing twice."""
        if pg_server.data_dir is None:
            pytest.skip("the server comes from ATRACE_TEST_DSN and is not ours to restart")
        dsn, schema = pg_schema
        configure("restart", dsn, schema, spill_dir)
        sent = 0
        for round_ in range(3):
            for _ in range(500):
                atrace.info(f"m{sent}")
                sent += 1
            await asyncio.sleep(0.05)
            if round_ == 1:
                await asyncio.to_thread(pg_server.restart)
        await wait_until(lambda: _done(dsn, schema, sent))
        assert await count(dsn, schema) == (sent, sent)
        assert atrace.metrics().dropped == 0
