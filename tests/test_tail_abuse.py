"""The live tail under abuse: subscriber bounds, slow readers, revoked keys, hostile rows."""

# The fixture is imported from its helper module, so each test parameter redefines that name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from _collector import (
    CollectorServer,
    collector_server,  # noqa: F401
    native_body,
)
from _helpers import wait_until
from atrace._postgres.session import connection_init
from atrace.collector._auth import revoke_key
from atrace.collector._limits import Limits
from atrace.collector._query import Filters
from atrace.collector._state import TAIL
from atrace.collector._tail import TailHub
from test_query import NOW, A, B, S, copy_rows, make_row
from test_tail import events, open_stream


def hub_of(server: CollectorServer) -> Any:
    assert server.app is not None
    return server.app[TAIL]


async def rest_of(resp: Any, timeout: float) -> bytes:
    """Everything a stream still sends until it ends (AssertionError if it does not)."""
    try:
        return await asyncio.wait_for(resp.content.read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"the stream did not end within {timeout} s") from None


async def raw_tail(url: str, key: str, query: str) -> tuple[Any, Any]:
    """A /v1/tail stream over a plain socket, once subscribed; never read after that."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = f"GET /v1/tail{query} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
    writer.write(head.encode() + b"\r\n")
    answer = await reader.readuntil(b": tail started\n\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return reader, writer


class TestBounds:
    async def test_subscribers_past_the_bounds_are_refused(
        self, pg_schema: tuple[str, str]
    ) -> None:
        """Past the per-key bound a tail gets 429, past the total 503, both with Retry-After."""
        limits = Limits(max_tail_per_key=2, max_tail_subscribers=3)
        async with CollectorServer(*pg_schema, limits=limits) as server:
            await self.check_refusals(server)

    async def check_refusals(self, server: CollectorServer) -> None:
        hub = hub_of(server)
        key_a, key_a2, key_b = [await server.create_key(p) for p in (A, A, B)]
        first = await open_stream(server, key_a)
        second = await open_stream(server, key_a)
        try:
            refused = await server.request("GET", "/v1/tail", key=key_a)
            assert refused.status == 429 and refused.headers["Retry-After"] == "1"
            assert "2 live tails" in refused.json()["error"]
            third = await open_stream(server, key_a2)  # another key of the same project
            full = await server.request("GET", "/v1/tail", key=key_b)
            assert full.status == 503 and full.headers["Retry-After"] == "1"
            assert "3 live tails" in full.json()["error"]
            first.close()
            await wait_until(lambda: hub.statistics().subscribers == 2)
            again = await open_stream(server, key_b)
            again.close()
            third.close()
            stats = hub.statistics()
            assert (stats.refused_per_key, stats.refused_total) == (1, 1)
            text = server.metrics.render()
            assert 'atrace_collector_tail_refused_total{cause="per_key"} 1' in text
            assert 'atrace_collector_tail_refused_total{cause="total"} 1' in text
        finally:
            first.close()
            second.close()

    async def test_a_reader_that_does_not_read_is_dropped(self, pg_schema: tuple[str, str]) -> None:
        """A reader that stops reading is dropped once its queue passes the byte bound, told why
        in a last event, while a reading one gets every row; queued bytes stay bounded."""
        limits = Limits(tail_queue_bytes=256 * 1024)
        async with CollectorServer(*pg_schema, limits=limits) as server:
            await self.check_slow_reader(server)

    async def check_slow_reader(self, server: CollectorServer) -> None:
        hub = hub_of(server)
        assert hub.queue_bytes == 256 * 1024
        key = await server.create_key(A)
        reading = await open_stream(server, key)
        async with aiohttp.ClientSession() as session:
            stalled = await session.get(
                f"{server.url}/v1/tail", headers={"Authorization": f"Bearer {key}"}
            )
            assert await stalled.content.readline() == b": tail started\n"
            big = "x" * 50_000
            sent = 0
            try:
                # Up to 100 MB: far past every socket buffer between the collector and us.
                while hub.statistics().ended_slow == 0:
                    assert sent < 2000, "the stalled reader was never dropped"
                    hub.publish(A, [make_row(NOW + sent * 1000, message=f"{sent}:{big}")])
                    (got,) = await events(reading, 1)
                    assert got["message"].startswith(f"{sent}:")
                    sent += 1
                    stats = hub.statistics()
                    assert stats.queued_bytes <= stats.subscribers * hub.queue_bytes
                assert hub.statistics().subscribers == 1
                rest = await rest_of(stalled, 20)
                last = rest.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
                assert last.startswith(b"event: error\ndata: "), rest[-300:]
                assert "too slow" in orjson.loads(last.split(b"data: ", 1)[1])["error"]
                # The reading stream goes on.
                hub.publish(A, [make_row(NOW + S, message="still here")])
                assert [e["message"] for e in await events(reading, 1)] == ["still here"]
                stats = hub.statistics()
                assert stats.ended_slow == 1 and stats.queued_bytes <= hub.queue_bytes
                assert 'atrace_collector_tail_ended_total{cause="slow"} 1' in (
                    server.metrics.render()
                )
            finally:
                stalled.close()
                reading.close()

    async def test_healthz_answers_while_thousands_are_fanned_out_to(
        self, pg_schema: tuple[str, str]
    ) -> None:
        """With 2,000 tails open and a 3,000-row batch being fanned out, /healthz answers
        within 5 s each time it is asked."""
        limits = Limits(
            max_tail_subscribers=5000,
            max_tail_per_key=5000,
            max_connections_per_address=5000,
            query_rate=1e6,
            query_burst=1_000_000,
        )
        async with CollectorServer(*pg_schema, limits=limits) as server:
            await self.check_fan_out(server)

    async def check_fan_out(self, server: CollectorServer) -> None:
        hub = hub_of(server)
        key = await server.create_key(A)
        socks: list[tuple[Any, Any]] = []
        try:
            for start in range(0, 2000, 200):
                socks += await asyncio.gather(
                    *(
                        raw_tail(server.url, key, f"?q=absent-{i}")
                        for i in range(start, start + 200)
                    )
                )
            assert hub.statistics().subscribers == 2000
            _, body = native_body([make_row(NOW + i * 1000, message=f"m{i}") for i in range(3000)])
            post = asyncio.ensure_future(
                server.post("/v1/ingest", body, key, content_type="application/msgpack")
            )
            busy = False
            answered = 0
            while not post.done() or answered < 3:
                health = await asyncio.wait_for(server.request("GET", "/healthz"), 5.0)
                assert health.status == 200
                answered += 1
                busy = busy or hub.statistics().backlog_rows > 0
            assert (await post).status == 200
            assert busy, "the batch was fanned out inside the ingest request"
        finally:
            for _, writer in socks:
                writer.close()


class TestKeys:
    async def test_a_revoked_keys_stream_ends(self, pg_schema: tuple[str, str]) -> None:
        """A tail whose key is revoked elsewhere ends within the key cache's TTL plus the
        re-check interval, with an error event; another key's tail goes on."""
        dsn, schema = pg_schema
        async with CollectorServer(dsn, schema, limits=Limits(key_cache_ttl=1.0)) as server:
            hub = hub_of(server)
            key, other = await server.create_key(A), await server.create_key(A)
            doomed = await open_stream(server, key)
            kept = await open_stream(server, other)
            try:
                conn = await asyncpg.connect(dsn)
                try:
                    assert await revoke_key(conn, schema, key) is True
                finally:
                    await conn.close()
                started = time.monotonic()
                rest = await rest_of(doomed, 1.0 + hub.key_recheck + 8.0)
                assert time.monotonic() - started < 1.0 + hub.key_recheck + 8.0
                assert b"event: error\n" in rest
                assert b"no longer valid" in rest and b"data: {" not in rest.split(b"event")[0]
                hub.publish(A, [make_row(NOW, message="for the other key")])
                assert [e["message"] for e in await events(kept, 1)] == ["for the other key"]
                assert hub.statistics().ended_revoked == 1
            finally:
                doomed.close()
                kept.close()


def deep_row(ts: int, depth: int) -> tuple[Any, ...]:
    """A row whose attributes nest ``depth`` levels deep (valid JSON, deeper than orjson
    writes)."""
    row = make_row(ts, message="deep")
    attrs = b'{"a":' * depth + b"1" + b"}" * depth
    return (*row[:14], attrs, *row[15:])


class TestHostileRows:
    async def test_a_deep_record_is_skipped_and_the_tails_go_on(
        self, collector_server: CollectorServer
    ) -> None:
        """A 300-deep record written straight to PostgreSQL (as a PostgresSink or an older
        collector would) is skipped and counted by every listening tail, and the rows around it
        and after it still arrive."""
        server = collector_server
        hub = hub_of(server)
        key = await server.create_key(A)
        pool = await asyncpg.create_pool(
            server.db_dsn, min_size=0, max_size=2, init=connection_init
        )
        other = TailHub(server.schema)  # another collector on the same database
        await other.start(pool, dsn=server.db_dsn)
        writer = await asyncpg.connect(server.db_dsn)
        resp = await open_stream(server, key)
        try:
            await connection_init(writer)
            sub = other.subscribe(Filters(project=A))
            rows = [
                make_row(NOW, message="before"),
                deep_row(NOW + 1000, 300),
                make_row(NOW + 2000, message="after"),
            ]
            await copy_rows(writer, server.schema, A, rows)
            assert [e["message"] for e in await events(resp, 2)] == ["before", "after"]
            seen: list[Any] = []
            while len(seen) < 2:
                seen += await sub.take(10.0)
            assert [r[13] for r in seen] == ["before", "after"]
            assert hub.statistics().unserialisable_rows == 1
            assert other.statistics().unserialisable_rows == 1
            # The next statement's rows flow through both.
            await copy_rows(writer, server.schema, A, [make_row(NOW + S, message="next")])
            assert [e["message"] for e in await events(resp, 1)] == ["next"]
            assert [r[13] for r in await sub.take(10.0)] == ["next"]
            assert other.restarts == 0 and other.healthy and hub.healthy
            text = server.metrics.render()
            assert 'atrace_collector_tail_skipped_rows_total{cause="unserialisable"} 1' in text
        finally:
            resp.close()
            await writer.close()
            await other.stop()
            await pool.close()

    async def test_the_listener_is_restarted_after_an_unexpected_error(
        self, collector_server: CollectorServer
    ) -> None:
        """A notice the listener chokes on is logged and counted as a restart; the tail then
        goes on delivering other collectors' rows."""
        server = collector_server
        hub = hub_of(server)
        key = await server.create_key(A)
        resp = await open_stream(server, key)
        conn = await asyncpg.connect(server.db_dsn)
        try:
            await connection_init(conn)
            # Well-formed JSON with a row count that is a list: nothing expects that.
            bad = orjson.dumps({"p": A, "x": 1, "a": 1, "b": 2, "n": [1]}).decode()
            await conn.execute("SELECT pg_notify($1, $2)", hub.channel, bad)
            await wait_until(lambda: hub.restarts == 1)
            await wait_until(lambda: hub.healthy)
            await copy_rows(conn, server.schema, A, [make_row(NOW, message="written elsewhere")])
            assert [e["message"] for e in await events(resp, 1)] == ["written elsewhere"]
            text = server.metrics.render()
            assert "atrace_collector_tail_restarts_total 1" in text
        finally:
            resp.close()
            await conn.close()


@pytest.mark.parametrize("depth", [300])
async def test_deep_rows_never_reach_a_queue(depth: int) -> None:
    """Published straight to a hub, a row too deep to serialise is counted, never queued."""
    hub = TailHub("s")
    sub = hub.subscribe(Filters(project=A))
    hub.publish(A, [make_row(NOW, message="ok"), deep_row(NOW + 1, depth)])
    assert [r[13] for r in await sub.take(0)] == ["ok"]
    assert hub.statistics().unserialisable_rows == 1


async def test_readers_past_their_share_of_the_hubs_bytes_are_dropped() -> None:
    """Past the bytes held for all readers, a reader holding more than its equal share is ended
    as too slow; a reader that takes its events keeps every row, and nothing stays counted once
    the readers are gone."""
    hub = TailHub("s", queue_size=10_000, queue_bytes=1 << 20, total_bytes=64 * 1024)
    idle = [hub.subscribe(Filters(project=A)) for _ in range(3)]
    reader = hub.subscribe(Filters(project=A))
    seen: list[str] = []
    for batch in range(20):
        hub.publish(
            A,
            [make_row(NOW + (batch * 100 + i) * 1000, message=f"m{batch}-{i}") for i in range(20)],
        )
        seen += [r[13] for r in await reader.take(1.0)]  # taken in process: written at once
    assert seen == [f"m{b}-{i}" for b in range(20) for i in range(20)]
    assert all(s.reason is not None and "too slow" in s.reason for s in idle)
    assert hub.statistics().ended_slow == 3
    assert hub._budget.used <= 64 * 1024
    hub.unsubscribe(reader)
    assert hub._budget.used == 0 and hub._budget.readers == 0


def test_a_batch_larger_than_a_caught_up_readers_queue_fills_it_and_counts_the_rest() -> None:
    """A reader with nothing waiting takes what fits of a batch bigger than its queue's bytes
    (the rest counted as dropped); with events waiting, the same batch ends it as too slow."""
    hub = TailHub("s", queue_bytes=8 * 1024, total_bytes=None)
    sub = hub.subscribe(Filters(project=A))
    big = [make_row(NOW + i * 1000, message="x" * 1000) for i in range(20)]
    hub.publish(A, big)
    assert 1 <= sub.pending() < 20 and sub.dropped == 20 - sub.pending() and sub.reason is None
    hub.publish(A, [make_row(NOW + (100 + i) * 1000, message="y" * 1000) for i in range(20)])
    assert sub.reason is not None and "too slow" in sub.reason
