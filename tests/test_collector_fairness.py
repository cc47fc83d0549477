"""The collector under abuse: one tenant's queries, slow uploads, idle connections, request floods
and gzip bombs must not take the collector from another tenant."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator

import pytest

from _collector import CollectorServer, make_rows, native_body, raw_request, wait_until
from atrace.collector._limits import Limits

MiB = 1024 * 1024


def _port(server: CollectorServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _ingest_head(key: str, length: int, *, gzipped: bool = False) -> bytes:
    encoding = "Content-Encoding: gzip\r\n" if gzipped else ""
    return (
        "POST /v1/ingest HTTP/1.1\r\nHost: collector\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/msgpack\r\n{encoding}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    try:
        return await reader.read(65536) == b""
    except ConnectionError:
        return True


async def test_heavy_queries_of_one_tenant_never_fail_another_tenants_ingest(
    pg_schema: tuple[str, str],
) -> None:
    """Sixteen concurrent heavy searches by one key leave every ingest of another key stored."""
    dsn, schema = pg_schema
    limits = Limits(
        pool_size=2, query_pool_size=1, pool_wait=0.2, query_rate=1000.0, max_queries_per_key=16
    )
    async with CollectorServer(dsn, schema, limits=limits) as server:
        a, b = await server.create_key("alpha"), await server.create_key("beta")
        for _ in range(6):
            _, body = native_body(make_rows(5000))
            assert (await server.post("/v1/ingest", body, a)).status == 200

        async def heavy() -> int:
            path = "/v1/search?q=message&attr.tag=t1&limit=1000"
            return (await server.request("GET", path, key=a)).status

        searches = [asyncio.ensure_future(heavy()) for _ in range(16)]
        statuses = []
        for _ in range(12):
            _, body = native_body(make_rows(20, service="b"))
            statuses.append((await server.post("/v1/ingest", body, b)).status)
        found = await asyncio.gather(*searches)
        assert statuses == [200] * 12
        assert set(found) <= {200, 503}
        assert await server.count("beta") == 12 * 20


async def test_slow_uploads_of_one_key_leave_ingest_to_others_and_are_cut(
    pg_schema: tuple[str, str],
) -> None:
    """64 uploads sent a byte at a time by one key neither hold every ingest slot nor run past
    the body time-out."""
    dsn, schema = pg_schema
    limits = Limits(body_timeout=2.0)
    async with CollectorServer(dsn, schema, limits=limits) as server:
        a, b = await server.create_key("alpha"), await server.create_key("beta")

        async def dribble() -> AsyncIterator[bytes]:
            for _ in range(1000):
                yield b"\x00"
                await asyncio.sleep(0.1)

        slow = [
            asyncio.ensure_future(
                raw_request("127.0.0.1", _port(server), _ingest_head(a, 1000), dribble())
            )
            for _ in range(64)
        ]
        await wait_until(lambda: server.metrics.value("inflight_requests") >= 1)
        statuses = []
        for _ in range(5):
            _, body = native_body(make_rows(10, service="b"))
            statuses.append((await server.post("/v1/ingest", body, b)).status)
        assert statuses == [200] * 5
        results = await asyncio.wait_for(asyncio.gather(*slow), 30)
        codes = [status for status, _, _ in results]
        assert set(codes) <= {408, 429}
        assert codes.count(408) == limits.max_ingest_per_key
        assert all(b"Retry-After" in raw for status, raw, _ in results if status == 429)
        assert await server.count("beta") == 50


async def test_connections_without_a_request_head_are_closed_after_the_header_timeout(
    pg_schema: tuple[str, str],
) -> None:
    """Connections that send nothing, or a head that never ends, are closed by the server."""
    dsn, schema = pg_schema
    limits = Limits(header_timeout=0.5)
    async with CollectorServer(dsn, schema, limits=limits) as server:
        conns = [await asyncio.open_connection("127.0.0.1", _port(server)) for _ in range(10)]
        try:
            for _, writer in conns[5:]:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: collector\r\n")
            closed = await asyncio.wait_for(
                asyncio.gather(*(_closed(reader) for reader, _ in conns)), 20
            )
            assert all(closed)
            assert server.metrics.value("closed", cause="header_timeout") == 10
            assert "atrace_collector_connections_closed_total" in server.metrics.render()
            # A client that sends its request in time is served as before.
            assert (await server.request("GET", "/healthz")).status == 200
        finally:
            for _, writer in conns:
                writer.transport.abort()


async def test_connections_past_the_per_address_cap_are_closed_at_accept(
    pg_schema: tuple[str, str],
) -> None:
    """Connections from one address past the cap are closed at once; those within it are
    served."""
    dsn, schema = pg_schema
    limits = Limits(max_connections_per_address=4)
    async with CollectorServer(dsn, schema, limits=limits) as server:
        conns = [await asyncio.open_connection("127.0.0.1", _port(server)) for _ in range(10)]
        try:
            await wait_until(lambda: server.metrics.value("closed", cause="per_address") == 6)
            kept = []
            for reader, writer in conns:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: collector\r\n\r\n")
                try:
                    line = await asyncio.wait_for(reader.readline(), 10)
                except ConnectionError:
                    line = b""
                if line:
                    kept.append(line)
            assert len(kept) == 4
            assert all(line.startswith(b"HTTP/1.1 200") for line in kept)
            assert server.metrics.value("connections_open") == 4
        finally:
            for _, writer in conns:
                writer.transport.abort()


async def test_a_key_past_its_rate_gets_429_with_retry_after(pg_schema: tuple[str, str]) -> None:
    """Past its burst, a key is refused with 429 and Retry-After; another key is not."""
    dsn, schema = pg_schema
    limits = Limits(query_rate=0.01, query_burst=2, ingest_rate=0.01, ingest_burst=1)
    async with CollectorServer(dsn, schema, limits=limits) as server:
        a, b = await server.create_key("alpha"), await server.create_key("beta")
        statuses = [(await server.request("GET", "/v1/search", key=a)).status for _ in range(2)]
        assert statuses == [200, 200]
        refused = await server.request("GET", "/v1/search", key=a)
        assert refused.status == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await server.request("GET", "/v1/search", key=b)).status == 200
        _, body = native_body(make_rows(4))
        assert (await server.post("/v1/ingest", body, a)).status == 200
        again = await server.post("/v1/ingest", body, a)
        assert again.status == 429 and "Retry-After" in again.headers
        assert server.metrics.value("errors", reason="rate_limited_rate") == 2


async def test_refusals_are_counted_and_logged_once_a_minute_by_limit(
    pg_schema: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Each limit a request meets is its own cause: a Prometheus series per limit's name, and
    at most one log line a minute per limit however often it strikes."""
    dsn, schema = pg_schema
    limits = Limits(max_body=2048, query_rate=0.01, query_burst=1)
    caplog.set_level(logging.WARNING, logger="atrace.collector")
    async with CollectorServer(dsn, schema, limits=limits) as server:
        key = await server.create_key("alpha")
        statuses = [(await server.request("GET", "/v1/search", key=key)).status for _ in range(6)]
        assert statuses == [200] + [429] * 5
        _, body = native_body(make_rows(200))
        assert len(body) > 2048
        for _ in range(4):
            assert (await server.post("/v1/ingest", body, key)).status == 413
        assert server.metrics.value("refused", cause="query_rate") == 5
        assert server.metrics.value("refused", cause="max_body") == 4
        assert server.metrics.value("refused", cause="ingest_rate") == 0
        text = server.metrics.render()
        assert 'atrace_collector_refused_total{cause="max_body"} 4' in text
        assert 'atrace_collector_refused_total{cause="query_rate"} 5' in text
    lines = [r.getMessage() for r in caplog.records if "refused with" in r.getMessage()]
    assert len(lines) == 2, lines
    assert any("429 (query_rate)" in line for line in lines)
    assert any("413 (max_body)" in line for line in lines)
    assert not any(key in line for line in lines)


async def test_error_scan_is_bounded_by_the_collector(pg_schema: tuple[str, str]) -> None:
    """A /v1/errors scan past max_error_scan is refused with 400 naming scan."""
    dsn, schema = pg_schema
    async with CollectorServer(dsn, schema, limits=Limits(max_error_scan=500)) as server:
        key = await server.create_key("alpha")
        refused = await server.request("GET", "/v1/errors?scan=100000", key=key)
        assert refused.status == 400 and refused.json()["field"] == "scan"
        found = await server.request("GET", "/v1/errors", key=key)
        assert found.status == 200 and found.json()["scan_limit"] == 500


async def test_held_gzip_bodies_are_bounded_by_inflated_bytes_in_flight(
    pg_schema: tuple[str, str],
) -> None:
    """Gzip bodies held open are counted inflated: past max_inflight_bytes, 503 with
    Retry-After, and the bytes held never pass the bound."""
    dsn, schema = pg_schema
    limits = Limits(
        max_body=MiB, max_inflated=4 * MiB, max_inflight_bytes=8 * MiB, body_timeout=20.0
    )
    bomb = gzip.compress(b"\x00" * (3 * MiB))
    async with CollectorServer(dsn, schema, limits=limits) as server:
        key = await server.create_key("alpha")
        conns = []
        try:
            for _ in range(16):
                reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
                # Declared longer than sent: the body stays open, its inflated bytes held.
                writer.write(_ingest_head(key, len(bomb) + 100, gzipped=True) + bomb)
                conns.append((reader, writer))
            await wait_until(
                lambda: server.metrics.value("errors", reason="unavailable_memory") == 14,
                describe=server.metrics.render,
            )
            assert server.metrics.value("inflight_bytes") <= limits.max_inflight_bytes
            answers = []
            for reader, _ in conns:
                try:
                    answers.append(await asyncio.wait_for(reader.read(65536), 0.5))
                except asyncio.TimeoutError:
                    answers.append(b"")  # still held
            refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
            assert len(refused) == 14
            assert all(b"Retry-After: 1" in a for a in refused)
        finally:
            for _, writer in conns:
                writer.transport.abort()
        await wait_until(lambda: server.metrics.value("inflight_bytes") == 0)
