"""atrace.Client and atrace.AsyncClient against a real running collector."""

# The fixture is imported from its helper module, so each test parameter redefines that name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from _collector import (
    CollectorServer,
    collector_server,  # noqa: F401
    native_body,
)
from atrace._emit.ids import new_trace_id
from atrace._postgres.session import connection_init
from atrace.client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    CollectorError,
    NotFoundError,
    ServerError,
    TransportError,
)
from atrace.collector._state import TAIL
from test_error_groups import http_span, one_exception
from test_query import NOW, A, B, S, copy_rows, make_row, trace_rows


async def seed(server: CollectorServer) -> str:
    """A trace, 12 logs across two regions and an error for project A; one row for B."""
    trace = new_trace_id()
    rows, _ = trace_rows(trace, NOW - 60 * S)
    rows += [
        make_row(NOW - i * S, message=f"log {i}", attrs={"region": "eu" if i % 2 else "us"})
        for i in range(12)
    ]
    conn = await asyncpg.connect(server.db_dsn)
    try:
        await connection_init(conn)
        await copy_rows(conn, server.schema, A, rows)
        await copy_rows(conn, server.schema, B, [make_row(NOW, message="log of b")])
    finally:
        await conn.close()
    return trace


async def seed_attrs_and_failures(server: CollectorServer) -> None:
    """Attribute values as numbers and as text, HTTP failures and one exception in 3 records."""
    rows = [
        make_row(NOW - 1 * S, message="number", attrs={"user": 42}),
        make_row(NOW - 2 * S, message="text", attrs={"user": "42"}),
        make_row(NOW - 3 * S, message="zero", attrs={"user": "042"}),
        make_row(NOW - 4 * S, message="yes", attrs={"vip": "true"}),
        make_row(NOW - 5 * S, message="no", attrs={"vip": 1}),
        http_span(NOW - 6 * S, 502, "GET", "/order/{order_id}"),
        http_span(NOW - 7 * S, 502, "GET", "/order/{order_id}"),
        http_span(NOW - 8 * S, 500, "GET", "/order/{order_id}"),
        http_span(NOW - 9 * S, 502, "GET", "/cart"),
        *one_exception(NOW - 20 * S, marked=True),
    ]
    conn = await asyncpg.connect(server.db_dsn)
    try:
        await connection_init(conn)
        await copy_rows(conn, server.schema, A, rows)
    finally:
        await conn.close()


@pytest.fixture
async def broken_server() -> AsyncIterator[str]:
    """A real HTTP server that fails every request with a 500 (or 503 under /busy)."""

    async def fail(request: web.Request) -> web.Response:
        if request.path.startswith("/busy"):
            return web.Response(status=503, text="overloaded")
        return web.json_response({"error": "database exploded"}, status=500)

    app = web.Application()
    app.router.add_get("/{tail:.*}", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestAsyncClient:
    async def test_queries(self, collector_server: CollectorServer) -> None:
        """search pages through every record; trace, stats and errors answer for the project."""
        server = collector_server
        key = await server.create_key(A)
        trace = await seed(server)
        async with AsyncClient(server.url, key) as client:
            logs = [r async for r in client.search(kind="log", limit=4)]
            an_hour_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
            assert len(logs) == 15 and len({r["message"] for r in logs}) == 15
            assert "log of b" not in {r["message"] for r in logs}
            eu = [
                r["message"] async for r in client.search(attrs={"region": "eu"}, since=an_hour_ago)
            ]
            assert eu == [f"log {i}" for i in range(1, 12, 2)]
            page = await client.search_page(limit=2, q="log")
            assert len(page["records"]) == 2 and page["next_cursor"]
            tree = await client.trace(trace)
            assert tree["span_count"] == 6 and [s["name"] for s in tree["spans"]] == ["R", "O"]
            stats = await client.stats(interval="1h", since="2h", durations=True)
            assert sum(b["count"] for b in stats["buckets"]) == 22
            assert {d["name"] for d in stats["durations"]} >= {"R", "C1"}
            errors = await client.errors(limit=5)
            assert [g["error_type"] for g in errors["groups"]] == ["ValueError"]

    async def test_attr_values_and_error_labels(self, collector_server: CollectorServer) -> None:
        """attrs={"user": 42} and {"user": "42"} find both the number and the text; errors()
        answers labelled groups counted in occurrences, HTTP statuses and routes apart."""
        server = collector_server
        key = await server.create_key(A)
        await seed_attrs_and_failures(server)
        async with AsyncClient(server.url, key) as client:
            for value in (42, "42"):
                found = [r["message"] async for r in client.search(attrs={"user": value})]
                assert found == ["number", "text"], value
            assert [r["message"] async for r in client.search(attrs={"user": "042"})] == ["zero"]
            assert [r["message"] async for r in client.search(**{"attr.vip": True})] == ["yes"]
            errors = await client.errors()
        got = {g["label"]: (g["count"], g["linked"]) for g in errors["groups"]}
        assert got == {
            "HTTP 502 GET /order/{order_id}": (2, 0),
            "HTTP 500 GET /order/{order_id}": (1, 0),
            "HTTP 502 GET /cart": (1, 0),
            "ValueError: card 4242 declined": (1, 2),
        }
        assert errors["occurrences"] == 5

    async def test_refusals_raise_clear_errors(
        self, collector_server: CollectorServer, broken_server: str
    ) -> None:
        """401, 404, 400, 5xx and no answer at all each raise their own exception."""
        server = collector_server
        key = await server.create_key(A)
        async with AsyncClient(server.url, "atk_wrong") as bad:
            with pytest.raises(AuthenticationError) as caught:
                await bad.errors()
            assert caught.value.status == 401
        async with AsyncClient(server.url, key) as client:
            with pytest.raises(NotFoundError):
                await client.trace(new_trace_id())
            with pytest.raises(BadRequestError, match="level"):
                await client.stats(level="loud")
            with pytest.raises(BadRequestError, match="trace_id"):
                await client.trace("nope")
        async with AsyncClient(server.url, "atk_wrong") as bad:
            with pytest.raises(AuthenticationError):
                await bad.tail().open()
        async with AsyncClient(broken_server, key) as client:
            with pytest.raises(ServerError, match="database exploded") as err:
                await client.errors()
            assert err.value.status == 500
            client.url = broken_server + "/busy"
            with pytest.raises(ServerError, match="overloaded"):
                await client.stats()
        async with AsyncClient(f"http://127.0.0.1:{closed_port()}", key) as client:
            with pytest.raises(TransportError) as gone:
                await client.stats()
            assert isinstance(gone.value, CollectorError) and gone.value.status == 0

    async def test_tail(self, collector_server: CollectorServer) -> None:
        """tail() yields committed records that pass its filters, and counts what was dropped."""
        server = collector_server
        assert server.app is not None
        hub = server.app[TAIL]
        key = await server.create_key(A)
        async with AsyncClient(server.url, key) as client:
            stream = await client.tail(service="api", level="warning").open()
            rows = [
                make_row(NOW + i * 1000, level=30 if i % 2 else 20, message=f"t{i}")
                for i in range(6)
            ]
            _, body = native_body(rows)
            assert (await server.post("/v1/ingest", body, key)).status == 200
            got = []
            async for record in stream:
                got.append(record["message"])
                if len(got) == 3:
                    break
            assert got == ["t1", "t3", "t5"]
            await stream.aclose()
            hub.queue_size = 4
            async with client.tail() as slow:
                hub.publish(A, [make_row(NOW + S + i, message=f"s{i}") for i in range(50)])
                got = [(await slow.__anext__())["message"] for _ in range(4)]
                assert got == ["s0", "s1", "s2", "s3"] and slow.dropped == 46


class TestClient:
    async def test_queries_and_errors(
        self, collector_server: CollectorServer, broken_server: str
    ) -> None:
        """The blocking client pages, reads a trace, stats and errors, and raises the same way."""
        server = collector_server
        key = await server.create_key(A)
        trace = await seed(server)

        def work() -> dict[str, Any]:
            with Client(server.url, key) as client:
                out: dict[str, Any] = {
                    "logs": list(client.search(kind="log", limit=4)),
                    "us": [r["message"] for r in client.search(attrs={"region": "us"})],
                    "tree": client.trace(trace),
                    "stats": client.stats(interval="1h", since="2h"),
                    "errors": client.errors(),
                }
                for call, exc in (
                    (lambda: client.trace(new_trace_id()), NotFoundError),
                    (lambda: client.errors(scan=0), BadRequestError),
                    (lambda: Client(server.url, "atk_x").stats(), AuthenticationError),
                    (lambda: Client(broken_server, key).stats(), ServerError),
                    (lambda: Client(f"http://127.0.0.1:{closed_port()}").stats(), TransportError),
                ):
                    with pytest.raises(exc):
                        call()
            return out

        out = await asyncio.to_thread(work)
        assert len(out["logs"]) == 15
        assert out["us"] == [f"log {i}" for i in range(0, 12, 2)]
        assert out["tree"]["span_count"] == 6
        assert sum(b["count"] for b in out["stats"]["buckets"]) == 22
        assert out["errors"]["groups"][0]["count"] == 1

    async def test_attr_values(self, collector_server: CollectorServer) -> None:
        """The blocking client's attrs match a number and its text alike, either way asked."""
        server = collector_server
        key = await server.create_key(A)
        await seed_attrs_and_failures(server)

        def work() -> list[list[str]]:
            with Client(server.url, key) as client:
                return [
                    [r["message"] for r in client.search(attrs={"user": value}, kind="log")]
                    for value in (42, "42", 42.0)
                ]

        assert await asyncio.to_thread(work) == [["number", "text"]] * 3

    async def test_tail(self, collector_server: CollectorServer) -> None:
        """The blocking tail is a plain iterator over records as they are committed."""
        server = collector_server
        assert server.app is not None
        hub = server.app[TAIL]
        key = await server.create_key(A)
        client = Client(server.url, key)
        stream = await asyncio.to_thread(lambda: client.tail(q="keep").open())
        try:
            hub.publish(
                A, [make_row(NOW + i, message=f"keep {i}" if i < 3 else "drop") for i in range(5)]
            )
            got = await asyncio.to_thread(lambda: [next(stream)["message"] for _ in range(3)])
            assert got == ["keep 0", "keep 1", "keep 2"]
        finally:
            stream.close()
        await server.stop()
        with pytest.raises(TransportError):
            await asyncio.to_thread(lambda: list(client.tail()))


class TestTailEvents:
    def test_the_collectors_final_error_event_ends_the_tail_with_its_reason(self) -> None:
        from atrace.client import _SSE

        sse = _SSE()
        assert sse.feed(b'data: {"message": "a"}\n\n') == [{"message": "a"}]
        with pytest.raises(CollectorError, match="too slow: 4 MiB queued"):
            sse.feed(b'event: error\ndata: {"error": "too slow: 4 MiB queued"}\n\n')


class TestCredentialsInTheUrl:
    async def test_both_clients_take_a_url_with_credentials_and_an_api_key(
        self, collector_server: CollectorServer
    ) -> None:
        server = collector_server
        key = await server.create_key(A)
        host = server.url.removeprefix("http://")
        url = f"http://proxy-user:s3cret@{host}"
        async with AsyncClient(url, key) as client:
            assert [r async for r in client.search(limit=1)] == []
        assert await asyncio.to_thread(lambda: list(Client(url, key).search(limit=1))) == []
        plain = Client(url, key)
        assert "s3cret" not in plain.url and "proxy-user" not in plain.url

    def test_without_a_key_the_credentials_become_basic_auth(self) -> None:
        client = Client("http://u%40x:p%3Aw@127.0.0.1:9", api_key="")
        assert client.url == "http://127.0.0.1:9"
        assert client.headers["Authorization"] == "Basic dUB4OnA6dw=="  # u@x:p:w
