"""aiohttp: the server middleware and the client TraceConfig, against real servers and clients."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import atrace
from atrace._emit.ids import format_span_id, parse_span_id
from atrace.integrations.aiohttp import create_middleware, middleware, setup, trace_config
from atrace.testing import MemorySink

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


class Explosion(Exception):
    """The failure the test handlers raise."""


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on 127.0.0.1 (a free port) through AppRunner and TCPSite; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def routes() -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.get("/items/{id}")
    async def item(request: web.Request) -> web.Response:
        atrace.info("loading item", item=request.match_info["id"])
        return web.Response(text=f"item {request.match_info['id']}")

    @table.get("/missing/{id}")
    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound(text="no such item")

    @table.get("/unavailable")
    async def unavailable(request: web.Request) -> web.Response:
        raise web.HTTPServiceUnavailable()

    @table.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise Explosion("the handler blew up")

    @table.get("/stream")
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(20):
            await resp.write(b"chunk %d\n" % i)
        await resp.write_eof()
        return resp

    @table.post("/upload")
    async def upload(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.Response(text=str(size))

    @table.get("/health")
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    @table.get("/echo")
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("traceparent", ""))

    @table.get("/redirect")
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/echo")

    return table


def traced_app(mw: Any = middleware) -> web.Application:
    app = web.Application(middlewares=[mw])
    app.add_routes(routes())
    return app


def echo_app() -> web.Application:
    """An untraced server that answers with the traceparent it received."""
    app = web.Application()
    app.add_routes(routes())
    return app


async def spans_of(sink: MemorySink) -> list[dict[str, Any]]:
    await atrace.aflush()
    return sink.spans()


def only(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


# ---- server -----------------------------------------------------------------------------------


class TestServer:
    async def test_span_per_request(self, configure_memory: MemorySink) -> None:
        """One span named by method and resource, with OTel attributes; its logs carry it."""
        async with (
            serving(traced_app()) as url,
            aiohttp.ClientSession() as session,
            session.get(f"{url}/items/5", headers={"User-Agent": "t/2"}) as resp,
        ):
            assert await resp.text() == "item 5"
        await atrace.aflush()
        row = only(configure_memory.spans())
        port = int(url.rsplit(":", 1)[1])
        assert row["name"] == "GET /items/{id}" and row["status"] == 0  # unset
        assert row["span_kind"] == 2  # server
        assert row["attrs"] == {
            "http.request.method": "GET",
            "url.path": "/items/5",
            "url.scheme": "http",
            "server.address": "127.0.0.1",
            "server.port": port,
            "client.address": "127.0.0.1",
            "user_agent.original": "t/2",
            "http.route": "/items/{id}",
            "http.response.status_code": 200,
        }
        log = only(configure_memory.logs())
        assert (log["trace_id"], log["span_id"]) == (row["trace_id"], row["span_id"])

    async def test_propagation(self, configure_memory: MemorySink) -> None:
        """traceparent joined, X-Trace-ID as fallback, invalid ignored, headers on the response."""
        async with serving(traced_app()) as url, aiohttp.ClientSession() as session:
            async with session.get(f"{url}/items/1", headers={"traceparent": TRACEPARENT}) as r1:
                headers = r1.headers
            async with session.get(
                f"{url}/items/2", headers={"traceparent": f"ff-{TRACE}-{PARENT}-01"}
            ):
                pass
            async with session.get(f"{url}/items/3", headers={"X-Trace-ID": TRACE}):
                pass
        rows = {r["attrs"]["url.path"]: r for r in await spans_of(configure_memory)}
        first = rows["/items/1"]
        assert first["trace_id"] == TRACE and first["parent_id"] == parse_span_id(PARENT)
        assert headers["traceparent"] == f"00-{TRACE}-{format_span_id(first['span_id'])}-01"
        assert headers["X-Trace-ID"] == TRACE
        assert rows["/items/2"]["trace_id"] != TRACE and rows["/items/2"]["parent_id"] is None
        assert rows["/items/3"]["trace_id"] == TRACE and rows["/items/3"]["parent_id"] is None

    async def test_raised_4xx_is_not_a_failure(self, configure_memory: MemorySink) -> None:
        """A raised HTTPNotFound keeps its status and headers; the span is not failed."""
        async with serving(traced_app()) as url, aiohttp.ClientSession() as session:
            async with session.get(f"{url}/missing/1") as resp:
                assert resp.status == 404 and await resp.text() == "no such item"
                assert "traceparent" in resp.headers
            async with session.get(f"{url}/not/routed") as resp:
                assert resp.status == 404
        rows = {r["attrs"]["url.path"]: r for r in await spans_of(configure_memory)}
        raised, unrouted = rows["/missing/1"], rows["/not/routed"]
        assert raised["name"] == "GET /missing/{id}" and raised["status"] == 0
        assert raised["attrs"]["http.response.status_code"] == 404
        assert raised["error_type"] is None and raised["status_message"] is None
        assert unrouted["name"] == "GET" and unrouted["status"] == 0

    async def test_raised_5xx_fails(self, configure_memory: MemorySink) -> None:
        """A raised 5xx HTTPException fails the span with the exception's type."""
        async with (
            serving(traced_app()) as url,
            aiohttp.ClientSession() as session,
            session.get(f"{url}/unavailable") as resp,
        ):
            assert resp.status == 503
        row = only(await spans_of(configure_memory))
        assert row["status"] == 2 and row["attrs"]["http.response.status_code"] == 503
        assert row["error_type"] == "aiohttp.web_exceptions.HTTPServiceUnavailable"

    async def test_exception_recorded_and_reraised(self, configure_memory: MemorySink) -> None:
        """An unhandled exception fails the span and reaches the middleware outside (500)."""
        caught: list[BaseException] = []

        @web.middleware
        async def outer(request: web.Request, handler: Any) -> web.StreamResponse:
            try:
                return await handler(request)  # type: ignore[no-any-return]
            except Explosion as exc:
                caught.append(exc)
                raise

        app = web.Application(middlewares=[outer, middleware])
        app.add_routes(routes())
        async with (
            serving(app) as url,
            aiohttp.ClientSession() as session,
            session.get(f"{url}/boom") as resp,
        ):
            assert resp.status == 500
        assert [str(e) for e in caught] == ["the handler blew up"]
        row = only(await spans_of(configure_memory))
        assert row["name"] == "GET /boom" and row["status"] == 2
        assert row["error_type"].endswith("test_aiohttp_integration.Explosion")
        assert "http.response.status_code" not in row["attrs"]

    async def test_streams_make_one_span(self, configure_memory: MemorySink) -> None:
        """A streamed upload and a streamed response are one span each; setup() adds headers."""
        app = echo_app()
        setup(app)

        async def body() -> AsyncIterator[bytes]:
            for _ in range(30):
                yield b"y" * 500

        async with serving(app) as url, aiohttp.ClientSession() as session:
            async with session.post(f"{url}/upload", data=body()) as resp:
                assert await resp.text() == "15000"
            async with session.get(f"{url}/stream") as resp:
                assert (await resp.text()).count("chunk") == 20
                streamed = resp.headers["traceparent"]
        rows = {r["name"]: r for r in await spans_of(configure_memory)}
        assert sorted(rows) == ["GET /stream", "POST /upload"]
        sid = format_span_id(rows["GET /stream"]["span_id"])
        assert streamed == f"00-{rows['GET /stream']['trace_id']}-{sid}-03"

    async def test_skip_paths_and_options(self, configure_memory: MemorySink) -> None:
        """Skipped paths get no span; service and record_client apply to the others."""
        mw = create_middleware(skip_paths=["/health"], service="aio", record_client=False)
        async with serving(traced_app(mw)) as url, aiohttp.ClientSession() as session:
            async with session.get(f"{url}/health") as resp:
                assert "traceparent" not in resp.headers
            async with session.get(f"{url}/items/1"):
                pass
        row = only(await spans_of(configure_memory))
        assert row["service"] == "aio" and "client.address" not in row["attrs"]


# ---- client -----------------------------------------------------------------------------------


class TestClient:
    async def test_client_span_and_injection(self, configure_memory: MemorySink) -> None:
        """The request gets a child span of the current one, and the server receives its id."""
        async with (
            serving(echo_app()) as url,
            aiohttp.ClientSession(trace_configs=[trace_config()]) as session,
            atrace.span("caller") as caller,
            session.get(f"{url}/echo?q=1") as resp,
        ):
            received = await resp.text()
        rows = {r["name"]: r for r in await spans_of(configure_memory)}
        client = rows["HTTP GET"]
        assert client["parent_id"] == caller.span_id and client["trace_id"] == caller.trace_id
        assert received == f"00-{caller.trace_id}-{format_span_id(client['span_id'])}-03"
        port = int(url.rsplit(":", 1)[1])
        assert client["attrs"] == {
            "http.request.method": "GET",
            "url.full": f"{url}/echo?q=1",
            "server.address": "127.0.0.1",
            "server.port": port,
            "http.response.status_code": 200,
        }
        assert client["status"] == 0  # a 200 leaves the status unset
        assert client["span_kind"] == 3 and rows["caller"]["span_kind"] == 1  # client, internal

    async def test_error_status_fails_client_span(self, configure_memory: MemorySink) -> None:
        """A 4xx or 5xx answer fails a client span."""
        async with (
            serving(echo_app()) as url,
            aiohttp.ClientSession(trace_configs=[trace_config()]) as session,
            session.get(f"{url}/missing/1") as resp,
        ):
            assert resp.status == 404
        row = only(await spans_of(configure_memory))
        assert row["status"] == 2 and row["attrs"]["http.response.status_code"] == 404
        assert row["status_message"] == "HTTP 404" and row["error_message"] is None

    async def test_connection_error_recorded(self, configure_memory: MemorySink) -> None:
        """A request that cannot connect fails its span with the exception, which propagates."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        async with aiohttp.ClientSession(trace_configs=[trace_config()]) as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(f"http://127.0.0.1:{port}/x")
        row = only(await spans_of(configure_memory))
        assert row["status"] == 2 and row["error_type"].startswith("aiohttp.")
        assert "http.response.status_code" not in row["attrs"]

    async def test_redirects_and_credentials(self, configure_memory: MemorySink) -> None:
        """One span covers the redirects; credentials never reach url.full."""
        async with (
            serving(echo_app()) as url,
            aiohttp.ClientSession(trace_configs=[trace_config()]) as session,
        ):
            secret = url.replace("http://", "http://user:pw@")
            async with session.get(f"{secret}/redirect") as resp:
                assert resp.status == 200 and (await resp.text()).startswith("00-")
        row = only(await spans_of(configure_memory))
        assert row["attrs"]["url.full"] == f"{url}/redirect"
        assert row["attrs"]["http.response.status_code"] == 200

    async def test_client_to_traced_server(self, configure_memory: MemorySink) -> None:
        """Client and server together: the server span is the client span's child."""
        async with (
            serving(traced_app()) as url,
            aiohttp.ClientSession(trace_configs=[trace_config()]) as session,
            session.get(f"{url}/items/8") as resp,
        ):
            assert resp.status == 200
        rows = {r["name"]: r for r in await spans_of(configure_memory)}
        client, server = rows["HTTP GET"], rows["GET /items/{id}"]
        assert server["trace_id"] == client["trace_id"]
        assert server["parent_id"] == client["span_id"]
