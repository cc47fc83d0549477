"""The live tail: in-process fan-out, LISTEN/NOTIFY between hubs, and the SSE stream."""

# The fixture is imported from its helper module, so each test parameter redefines that name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

import atrace
from _collector import (
    CollectorServer,
    collector_server,  # noqa: F401
    native_body,
)
from _helpers import wait_until
from atrace._emit.ids import new_trace_id
from atrace._postgres.schema import ensure_schema
from atrace._postgres.session import connection_init
from atrace.collector._query import Filters
from atrace.collector._state import TAIL
from atrace.collector._tail import TailClosed, TailHub
from test_query import NOW, A, B, S, copy_rows, make_row


async def take_n(sub: Any, n: int) -> list[Any]:
    """Exactly the first ``n`` rows a subscription gets (more are left queued)."""
    got: list[Any] = []
    while len(got) < n:
        got += await sub.take(10.0)
    return got


def msgs(rows: list[Any]) -> list[str]:
    return [r[13] for r in rows]


class TestHub:
    def test_fan_out_with_filters(self) -> None:
        """Each subscriber gets the rows of its project that pass its filters, in order."""
        hub = TailHub("s")
        every = hub.subscribe(Filters(project=A))
        picky = hub.subscribe(
            Filters(project=A, service="api", min_level=30, q="PAY", attrs={"region": "eu"})
        )
        spans = hub.subscribe(Filters(project=A, kinds=(1, 2, 3)))
        servers = hub.subscribe(Filters(project=A, span_kind=2))
        other = hub.subscribe(Filters(project=B))
        rows = [
            make_row(NOW, level=40, message="payment failed", attrs={"region": "eu"}),
            make_row(NOW + 1, level=40, message="payment failed", attrs={"region": "us"}),
            make_row(NOW + 2, level=20, message="payment ok", attrs={"region": "eu"}),
            make_row(NOW + 3, level=40, service="web", message="PAYMENT", attrs={"region": "eu"}),
            make_row(NOW + 4, kind=3, name="GET /", message="span"),
            make_row(NOW + 5, kind=3, name="GET /x", message="served", span_kind=2),
        ]
        hub.publish(A, rows)
        assert every.pending() == 6 and other.pending() == 0
        assert [r[13] for r in picky.peek()] == ["payment failed"]
        assert [r[13] for r in spans.peek()] == ["span", "served"]
        assert [r[13] for r in servers.peek()] == ["served"]
        hub.publish(B, rows[:1])
        assert other.pending() == 1 and every.pending() == 6

    def test_slow_subscriber_is_bounded(self) -> None:
        """A subscriber that does not read keeps at most queue_size rows; the rest are counted."""
        hub = TailHub("s", queue_size=5)
        slow = hub.subscribe(Filters(project=A))
        fast = TailHub("s", queue_size=1000)
        fast_sub = fast.subscribe(Filters(project=A))
        rows = [make_row(NOW + i, message=f"m{i}") for i in range(100)]
        hub.publish(A, rows)
        fast.publish(A, rows)
        assert slow.pending() == 5 and slow.dropped == 95
        assert [r[13] for r in slow.peek()] == ["m0", "m1", "m2", "m3", "m4"]
        assert fast_sub.pending() == 100 and fast_sub.dropped == 0
        stats = hub.statistics()
        assert stats.dropped == 95 and stats.delivered == 5 and stats.subscribers == 1

    def test_quiet_without_subscribers_and_once_per_row(self) -> None:
        """Nothing is kept for a project nobody tails; a row published twice arrives once."""
        hub = TailHub("s")
        rows = [make_row(NOW + i, message=f"m{i}") for i in range(3)]
        hub.publish(A, rows)
        assert hub.statistics().published_rows == 0
        sub = hub.subscribe(Filters(project=A))
        hub.publish(A, rows)
        hub.publish(A, rows)
        assert sub.pending() == 3 and hub.statistics().duplicate_rows == 3

    async def test_stop_ends_subscriptions(self) -> None:
        """After stop, a reader gets what was queued, then TailClosed; no new subscriptions."""
        hub = TailHub("s")
        sub = hub.subscribe(Filters(project=A))
        idle = hub.subscribe(Filters(project=A, service="nobody"))
        waiter = asyncio.create_task(idle.take(None))
        hub.publish(A, [make_row(NOW, message="last")])
        await asyncio.sleep(0)
        await hub.stop()
        assert msgs(await sub.take(None)) == ["last"]
        with pytest.raises(TailClosed):
            await sub.take(None)
        with pytest.raises(TailClosed):
            await waiter
        with pytest.raises(TailClosed):
            hub.subscribe(Filters(project=A))
        assert hub.statistics().subscribers == 0


@pytest.fixture
async def pools(pg_schema: tuple[str, str]) -> AsyncIterator[tuple[Any, Any, Any, str, str]]:
    """Two pools (two collectors side by side) and a writer connection, on a migrated schema."""
    dsn, schema = pg_schema
    writer = await asyncpg.connect(dsn)
    await connection_init(writer)
    await ensure_schema(writer, schema)
    one = await asyncpg.create_pool(dsn, min_size=0, max_size=3, init=connection_init)
    two = await asyncpg.create_pool(dsn, min_size=0, max_size=3, init=connection_init)
    try:
        yield one, two, writer, dsn, schema
    finally:
        await writer.close()
        await one.close()
        await two.close()


class TestNotify:
    async def test_other_collectors_rows_reach_this_hub(
        self, pools: tuple[Any, Any, Any, str, str]
    ) -> None:
        """Rows committed through another hub's process arrive here once, by LISTEN/NOTIFY."""
        one, two, writer, dsn, schema = pools
        hub1, hub2 = TailHub(schema), TailHub(schema)
        await hub1.start(one)
        await hub2.start(two, dsn=dsn)
        try:
            sub = hub2.subscribe(Filters(project=A, min_level=30))
            rows = [
                make_row(NOW + i * 1000, level=20 + 10 * (i % 3), message=f"m{i}") for i in range(9)
            ]
            others = [make_row(NOW, level=50, message="b's")]
            async with writer.transaction():
                await copy_rows(writer, schema, A, rows)
                await copy_rows(writer, schema, B, others)
            hub1.publish(A, rows)  # as the first collector's ingest would
            got = await take_n(sub, 6)
            assert sorted(msgs(got)) == sorted(r[13] for r in rows if r[2] >= 30)
            assert all(isinstance(r[0], int) for r in got)
            stats = hub2.statistics()
            assert stats.fetches == 1 and stats.fetched_rows == 9 and stats.listening
        finally:
            await hub1.stop()
            await hub2.stop()

    async def test_own_rows_once_and_rollbacks_never(
        self, pools: tuple[Any, Any, Any, str, str]
    ) -> None:
        """Published here and announced by NOTIFY: delivered once; rolled back: never."""
        one, _, writer, _, schema = pools
        hub = TailHub(schema)
        await hub.start(one)
        try:
            sub = hub.subscribe(Filters(project=A))
            tx = writer.transaction()
            await tx.start()
            await copy_rows(writer, schema, A, [make_row(NOW, message="rolled back")])
            await tx.rollback()
            rows = [make_row(NOW + i * 1000, message=f"m{i}") for i in range(5)]
            await copy_rows(writer, schema, A, rows)
            hub.publish(A, rows)
            assert msgs(await take_n(sub, 5)) == [f"m{i}" for i in range(5)]
            await wait_until(
                lambda: (
                    hub.statistics().notifications_skipped + hub.statistics().duplicate_rows >= 1
                )
            )
            # A last row through NOTIFY alone: whatever the first notice did came before it.
            last = [make_row(NOW + S, message="after")]
            await copy_rows(writer, schema, A, last)
            assert msgs(await take_n(sub, 1)) == ["after"]
            assert sub.pending() == 0
            assert hub.statistics().notifications == 2  # the rolled-back COPY sent nothing
        finally:
            await hub.stop()

    async def test_listens_again_after_losing_its_session(
        self, pools: tuple[Any, Any, Any, str, str]
    ) -> None:
        """The server ending the listening session: the hub listens on a new one and goes on."""
        one, _, writer, dsn, schema = pools
        hub = TailHub(schema)
        await hub.start(one, dsn=dsn)
        find = (
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'atrace-tail' "
            "AND datname = current_database()"
        )
        try:
            sub = hub.subscribe(Filters(project=A))
            (old,) = [r["pid"] for r in await writer.fetch(find)]
            assert await writer.fetchval("SELECT pg_terminate_backend($1)", old)
            pids: list[int] = []

            async def relistened() -> bool:
                pids[:] = [r["pid"] for r in await writer.fetch(find)]
                return bool(pids) and old not in pids and hub.statistics().listening

            deadline = time.monotonic() + 15
            while not await relistened():
                assert time.monotonic() < deadline, "did not listen again"
                await asyncio.sleep(0.02)
            await copy_rows(writer, schema, A, [make_row(NOW, message="after the cut")])
            assert msgs(await take_n(sub, 1)) == ["after the cut"]
        finally:
            await hub.stop()

    async def test_never_holds_a_pools_only_connection(
        self, pools: tuple[Any, Any, Any, str, str]
    ) -> None:
        """Given a one-connection pool and no DSN, the hub does not listen; the pool stays free."""
        _, _, _, dsn, schema = pools
        tiny = await asyncpg.create_pool(dsn, min_size=0, max_size=1)
        hub = TailHub(schema)
        try:
            await hub.start(tiny)
            assert not hub.statistics().listening
            async with tiny.acquire(timeout=5) as conn:
                assert await conn.fetchval("SELECT 1") == 1
            sub = hub.subscribe(Filters(project=A))
            hub.publish(A, [make_row(NOW, message="in process")])
            assert msgs(await sub.take(1.0)) == ["in process"]
        finally:
            await hub.stop()
            await tiny.close()

    async def test_postgres_sink_rows_reach_the_tail(
        self, pools: tuple[Any, Any, Any, str, str]
    ) -> None:
        """Rows a PostgresSink writes straight to the database reach a tail too."""
        one, _, _, dsn, schema = pools
        hub = TailHub(schema)
        await hub.start(one)
        try:
            sub = hub.subscribe(Filters(project="default", q="direct"))
            atrace.configure(service="direct", sink=dsn, schema=schema, flush_interval=0.05)
            atrace.info("noise")
            atrace.info("written direct", user=7)
            await atrace.aflush()
            (row,) = await take_n(sub, 1)
            assert row[8] == "direct" and row[13] == "written direct"
            assert orjson.loads(row[14]) == {"user": 7}
        finally:
            await hub.stop()


async def open_stream(server: CollectorServer, key: str, query: str = "") -> Any:
    """A /v1/tail response once the collector has subscribed it."""
    assert server.session is not None
    resp = await server.session.get(
        f"{server.url}/v1/tail{query}", headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert await resp.content.readline() == b": tail started\n"
    assert await resp.content.readline() == b"\n"
    return resp


async def events(resp: Any, n: int, comments: list[str] | None = None) -> list[dict[str, Any]]:
    """The next ``n`` data events (comments seen meanwhile go to ``comments``)."""
    out: list[dict[str, Any]] = []
    while len(out) < n:
        line = (await resp.content.readline()).decode()
        assert line, "stream ended"
        if line.startswith("data: "):
            out.append(orjson.loads(line[6:]))
        elif line.startswith(":") and comments is not None:
            comments.append(line.strip())
    return out


class TestStream:
    async def test_ingested_rows_stream_with_filters(
        self, collector_server: CollectorServer
    ) -> None:
        """Rows ingested over HTTP reach the stream once each, filtered, as JSON records."""
        server = collector_server
        key_a, key_b = await server.create_key(A), await server.create_key(B)
        trace = new_trace_id()
        resp = await open_stream(server, key_a, "?service=api&level=warning&q=pay&attr.region=eu")
        try:
            rows = [
                make_row(NOW, level=40, message="Payment failed", attrs={"region": "eu"}),
                make_row(NOW + 1000, level=20, message="payment ok", attrs={"region": "eu"}),
                make_row(NOW + 2000, level=40, message="payment failed", attrs={"region": "us"}),
                make_row(NOW + 3000, level=30, message="slow pay", attrs={"region": "eu"}),
                make_row(
                    NOW + 4000,
                    level=30,
                    service="web",
                    message="pay",
                    attrs={"region": "eu"},
                    trace_id=trace,
                ),
            ]
            for key, batch in ((key_b, rows), (key_a, rows)):
                _, body = native_body(batch)
                got = await server.post("/v1/ingest", body, key, content_type="application/msgpack")
                assert got.status == 200, got
            first = await events(resp, 2)
            assert [e["message"] for e in first] == ["Payment failed", "slow pay"]
            assert first[0]["ts"] == NOW and first[0]["attrs"] == {"region": "eu"}
            hub = server.app[TAIL] if server.app is not None else None
            assert hub is not None
            # Both notices handled (B's skipped: nobody tails B here; A's matched or fetched).
            await wait_until(
                lambda: hub.statistics().notifications_skipped + hub.statistics().fetches >= 2
            )
            _, body = native_body(
                [make_row(NOW + S, level=50, message="pay end", attrs={"region": "eu"})]
            )
            assert (
                await server.post("/v1/ingest", body, key_a, content_type="application/msgpack")
            ).status == 200
            assert [e["message"] for e in await events(resp, 1)] == ["pay end"]
        finally:
            resp.close()

    async def test_heartbeat_and_drop_notice(self, collector_server: CollectorServer) -> None:
        """Idle streams get heartbeat comments; a reader that fell behind is told how much."""
        server = collector_server
        assert server.app is not None
        hub = server.app[TAIL]
        hub.heartbeat = 0.05
        hub.queue_size = 5
        key = await server.create_key(A)
        resp = await open_stream(server, key)
        try:
            assert (await resp.content.readline()).startswith(b": heartbeat")
            hub.publish(A, [make_row(NOW + i, message=f"m{i}") for i in range(100)])
            comments: list[str] = []
            got = await events(resp, 5, comments)
            assert [e["message"] for e in got] == [f"m{i}" for i in range(5)]
            while not any(c.startswith(": dropped") for c in comments):
                comments.append((await resp.content.readline()).decode().strip())
            assert ": dropped 95 total 95" in comments
        finally:
            resp.close()

    async def test_shutdown_ends_streams_cleanly(self, collector_server: CollectorServer) -> None:
        """Stopping the collector ends open streams with a proper end of body, not a cut."""
        server = collector_server
        assert server.app is not None
        hub = server.app[TAIL]
        key = await server.create_key(A)
        async with aiohttp.ClientSession() as session:
            resp = await session.get(
                f"{server.url}/v1/tail", headers={"Authorization": f"Bearer {key}"}
            )
            assert await resp.content.readline() == b": tail started\n"
            await server.stop()
            rest = await resp.content.read()  # raises on a cut connection
            assert b"data:" not in rest
            resp.close()
        assert hub.statistics().subscribers == 0 and not hub.statistics().listening

    async def test_refusals(self, collector_server: CollectorServer) -> None:
        """A bad filter is a 400 JSON answer; no key is a 401."""
        server = collector_server
        key = await server.create_key(A)
        got = await server.request("GET", "/v1/tail?level=loud", key=key)
        assert got.status == 400 and got.json()["field"] == "level"
        assert (await server.request("GET", "/v1/tail")).status == 401
