"""ASGI middleware under a real uvicorn server and real clients: spans, propagation, failures."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

import atrace
from atrace._emit.ids import format_span_id, parse_span_id
from atrace._emit.tracecontext import parse_traceparent
from atrace.integrations._http import skip_rule, split_host
from atrace.integrations.asgi import AtraceMiddleware
from atrace.testing import MemorySink

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"

INVALID_TRACEPARENTS = [
    pytest.param(f"ff-{TRACE}-{PARENT}-01", id="version-ff"),
    pytest.param(f"00-{'0' * 32}-{PARENT}-01", id="zero-trace-id"),
    pytest.param(f"00-{TRACE}-{'0' * 16}-01", id="zero-parent-id"),
    pytest.param(f"00-{TRACE.upper()}-{PARENT}-01", id="uppercase-trace-id"),
    pytest.param(f"00-{TRACE}-{PARENT.upper()}-01", id="uppercase-parent-id"),
    pytest.param(f"00-{TRACE[:-1]}-{PARENT}-01", id="short-trace-id"),
    pytest.param(f"00-{TRACE}-{PARENT}0-01", id="long-parent-id"),
    pytest.param(f"00-{TRACE}-{PARENT}-01-extra", id="v00-extra-field"),
    pytest.param(f"00-{TRACE}-{PARENT}-0g", id="bad-flags"),
    pytest.param(f"00_{TRACE}-{PARENT}-01", id="bad-separator"),
    pytest.param("garbage", id="garbage"),
]


# ---- a real server -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: Any, lifespan: str = "on") -> AsyncIterator[str]:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in this loop; yields its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan=lifespan,
        ws="wsproto",
        log_config=None,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def starlette_app(**middleware_options: Any) -> Starlette:
    """A Starlette app with routes for every behaviour the tests look at."""

    async def item(request: Request) -> Response:
        atrace.info("loading item", item=request.path_params["item_id"])
        return PlainTextResponse(f"item {request.path_params['item_id']}")

    async def status(request: Request) -> Response:
        return PlainTextResponse("status", status_code=int(request.path_params["code"]))

    async def boom(request: Request) -> Response:
        raise Explosion("the handler blew up")

    async def echo(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
        return PlainTextResponse(f"{len(body)}")

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(50):
                yield b"chunk %d\n" % i

        return StreamingResponse(chunks())

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def user(request: Request) -> Response:
        return PlainTextResponse(request.path_params["uid"])

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            text = await websocket.receive_text()
            if text == "bye":
                await websocket.close()
                return
            atrace.info("ws message", text=text)
            await websocket.send_text(text.upper())

    app = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/status/{code:int}", status),
            Route("/boom", boom),
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream),
            Route("/health", health),
            Route("/health/live", health),
            Route("/healthz", health),
            Mount("/api", routes=[Route("/users/{uid}", user)]),
            Mount("/files", app=bare_app),
            WebSocketRoute("/ws/{room}", ws),
        ]
    )
    app.add_middleware(AtraceMiddleware, **middleware_options)
    return app


class Explosion(Exception):
    """The failure the test handlers raise."""


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI app without routing; ``/route`` names its route on the current span."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/raise":
        raise Explosion("before the response")
    if scope["path"] == "/route":
        sp = atrace.current_span()
        assert isinstance(sp, atrace.Span)
        sp.set(**{"http.route": "/route/{anything}"})
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"bare"})


async def spans_of(sink: MemorySink) -> list[dict[str, Any]]:
    await atrace.aflush()
    return sink.spans()


def only(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


# ---- spans ---------------------------------------------------------------------------------------


class TestServerSpan:
    async def test_one_span_per_request_with_route_template(
        self, configure_memory: MemorySink
    ) -> None:
        """A Starlette request gives one span named by method and route, with OTel attributes."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/items/42?q=1", headers={"User-Agent": "tests/1.0"})
        assert resp.status_code == 200 and resp.text == "item 42"
        row = only(await spans_of(configure_memory))
        port = int(url.rsplit(":", 1)[1])
        assert row["name"] == "GET /items/{item_id}"
        # A 200 neither fails nor sets a status: unset, as OpenTelemetry leaves it.
        assert row["kind"] == 3 and row["status"] == 0 and row["level"] == 20
        assert row["span_kind"] == 2  # server
        assert row["parent_id"] is None and row["duration_ns"] > 0
        assert row["attrs"] == {
            "http.request.method": "GET",
            "url.path": "/items/42",
            "url.scheme": "http",
            "server.address": "127.0.0.1",
            "server.port": port,
            "client.address": "127.0.0.1",
            "user_agent.original": "tests/1.0",
            "http.route": "/items/{item_id}",
            "http.response.status_code": 200,
        }
        assert row["service"] == "test"

    async def test_bare_app_span_is_named_by_method(self, configure_memory: MemorySink) -> None:
        """Without a routing framework the span is named by the method alone; the path is kept."""
        async with serving(AtraceMiddleware(bare_app)) as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/some/where/123")
        assert resp.text == "bare"
        row = only(await spans_of(configure_memory))
        assert row["name"] == "GET"
        assert row["attrs"]["url.path"] == "/some/where/123"
        assert "http.route" not in row["attrs"]

    async def test_handler_can_name_the_route(self, configure_memory: MemorySink) -> None:
        """An app that sets http.route on the current span gets the span named after it."""
        async with serving(AtraceMiddleware(bare_app)) as url, httpx.AsyncClient() as client:
            await client.get(f"{url}/route")
        row = only(await spans_of(configure_memory))
        assert row["name"] == "GET /route/{anything}"
        assert row["attrs"]["http.route"] == "/route/{anything}"

    async def test_mounted_route_keeps_the_mount_prefix(self, configure_memory: MemorySink) -> None:
        """A route of a mounted router is named with the mount point in front."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/api/users/7")
        assert resp.text == "7"
        row = only(await spans_of(configure_memory))
        assert row["name"] == "GET /api/users/{uid}"
        assert row["attrs"]["url.path"] == "/api/users/7"

    async def test_mounted_app_is_named_by_the_mount(self, configure_memory: MemorySink) -> None:
        """An app mounted without routes of its own is named by the mount's template."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/files/a/b.txt")
        assert resp.text == "bare"
        row = only(await spans_of(configure_memory))
        assert row["name"] == "GET /files/{path}"

    async def test_unknown_method_is_other(self, configure_memory: MemorySink) -> None:
        """A method outside the known set cannot mint span names: it is recorded as _OTHER."""
        async with serving(AtraceMiddleware(bare_app)) as url, httpx.AsyncClient() as client:
            await client.request("PURGE", f"{url}/cache")
        row = only(await spans_of(configure_memory))
        assert row["name"] == "HTTP"
        assert row["attrs"]["http.request.method"] == "_OTHER"
        assert row["attrs"]["http.request.method_original"] == "PURGE"

    async def test_logs_in_handler_carry_the_request_span(
        self, configure_memory: MemorySink
    ) -> None:
        """A log emitted inside the handler is linked to the request's span."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            await client.get(f"{url}/items/9")
        await atrace.aflush()
        row = only(configure_memory.spans())
        log = only([r for r in configure_memory.logs() if r["message"] == "loading item"])
        assert log["trace_id"] == row["trace_id"]
        assert log["span_id"] == row["span_id"]

    async def test_concurrent_requests_get_their_own_spans(
        self, configure_memory: MemorySink
    ) -> None:
        """Concurrent requests never share or mix spans; each log lands in its own request."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            await asyncio.gather(*(client.get(f"{url}/items/{i}") for i in range(10)))
        await atrace.aflush()
        spans = configure_memory.spans()
        assert len(spans) == 10 and len({s["span_id"] for s in spans}) == 10
        by_span = {s["span_id"]: s for s in spans}
        for log in configure_memory.logs():
            owner = by_span[log["span_id"]]
            assert owner["attrs"]["url.path"] == f"/items/{log['attrs']['item']}"

    async def test_options(self, configure_memory: MemorySink) -> None:
        """service names the spans' service; record_client=False leaves the client out."""
        app = starlette_app(service="edge", record_client=False)
        async with serving(app) as url, httpx.AsyncClient() as client:
            await client.get(f"{url}/items/1")
        row = only(await spans_of(configure_memory))
        assert row["service"] == "edge"
        assert "client.address" not in row["attrs"]


# ---- propagation ---------------------------------------------------------------------------------


class TestPropagation:
    async def test_incoming_traceparent_is_joined(self, configure_memory: MemorySink) -> None:
        """A valid traceparent makes the span a child of the caller's span, in its trace."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            await client.get(f"{url}/items/1", headers={"traceparent": TRACEPARENT})
        row = only(await spans_of(configure_memory))
        assert row["trace_id"] == TRACE
        assert row["parent_id"] == parse_span_id(PARENT)

    @pytest.mark.parametrize("value", INVALID_TRACEPARENTS)
    async def test_invalid_traceparent_starts_a_new_trace(
        self, configure_memory: MemorySink, value: str
    ) -> None:
        """A traceparent breaking the W3C rules is ignored: a new trace, no parent."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/items/1", headers={"traceparent": value})
        assert resp.status_code == 200
        row = only(await spans_of(configure_memory))
        assert row["trace_id"] != TRACE and len(row["trace_id"]) == 32
        assert row["parent_id"] is None

    async def test_later_version_with_more_fields_is_accepted(
        self, configure_memory: MemorySink
    ) -> None:
        """A version after 00 may carry more fields; its ids are still used."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            await client.get(f"{url}/items/1", headers={"traceparent": f"01-{TRACE}-{PARENT}-01-x"})
        row = only(await spans_of(configure_memory))
        assert row["trace_id"] == TRACE and row["parent_id"] == parse_span_id(PARENT)

    async def test_x_trace_id_fallback(self, configure_memory: MemorySink) -> None:
        """Without a usable traceparent, X-Trace-ID (dashes allowed) names the trace."""
        dashed = f"{TRACE[:8]}-{TRACE[8:12]}-{TRACE[12:16]}-{TRACE[16:20]}-{TRACE[20:]}"
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            await client.get(f"{url}/items/1", headers={"X-Trace-ID": dashed})
            await client.get(
                f"{url}/items/2", headers={"traceparent": "garbage", "X-Trace-ID": TRACE}
            )
        rows = await spans_of(configure_memory)
        assert len(rows) == 2
        for row in rows:
            assert row["trace_id"] == TRACE and row["parent_id"] is None

    async def test_traceparent_wins_over_x_trace_id(self, configure_memory: MemorySink) -> None:
        """When both headers are valid, traceparent is used."""
        other = "1" * 32
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            await client.get(
                f"{url}/items/1", headers={"traceparent": TRACEPARENT, "X-Trace-ID": other}
            )
        row = only(await spans_of(configure_memory))
        assert row["trace_id"] == TRACE

    async def test_response_headers_name_the_span(self, configure_memory: MemorySink) -> None:
        """The response carries traceparent and X-Trace-ID naming this request's span."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/items/1", headers={"traceparent": TRACEPARENT})
        row = only(await spans_of(configure_memory))
        assert resp.headers["x-trace-id"] == TRACE
        assert resp.headers["traceparent"] == f"00-{TRACE}-{format_span_id(row['span_id'])}-01"
        assert resp.headers["content-type"].startswith("text/plain")

    async def test_app_reusing_its_messages_gets_headers_once(
        self, configure_memory: MemorySink
    ) -> None:
        """The start message is copied, so an app that reuses its dicts never piles headers up."""
        start = {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]}
        body = {"type": "http.response.body", "body": b"same"}

        async def reusing(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await send(start)
            await send(body)

        async with (
            serving(AtraceMiddleware(reusing), lifespan="off") as url,
            httpx.AsyncClient() as client,
        ):
            for _ in range(3):
                resp = await client.get(f"{url}/")
                assert resp.headers.get_list("traceparent") == [resp.headers["traceparent"]]
        assert start["headers"] == [(b"x-app", b"1")]


# ---- failures ------------------------------------------------------------------------------------


class TestFailures:
    async def test_exception_fails_span_and_reaches_the_server(
        self, configure_memory: MemorySink
    ) -> None:
        """An unhandled exception fails the span with its type and message; the client gets 500."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/boom")
        assert resp.status_code == 500
        row = only(await spans_of(configure_memory))
        assert row["name"] == "GET /boom"
        assert row["status"] == 2 and row["level"] == 40
        assert row["error_type"].endswith("test_asgi.Explosion")
        assert row["error_message"] == "the handler blew up"
        assert "raise Explosion" in row["stack_trace"]

    async def test_exception_is_reraised_unchanged(self, configure_memory: MemorySink) -> None:
        """The middleware hands the very exception on to whatever wraps it."""
        caught: list[BaseException] = []

        async def outer(scope: dict[str, Any], receive: Any, send: Any) -> None:
            try:
                await traced(scope, receive, send)
            except Explosion as exc:
                caught.append(exc)
                raise

        traced = AtraceMiddleware(bare_app)
        async with serving(outer, lifespan="off") as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/raise")
        assert resp.status_code == 500
        assert len(caught) == 1 and str(caught[0]) == "before the response"
        row = only(await spans_of(configure_memory))
        assert row["status"] == 2 and row["error_message"] == "before the response"
        assert "http.response.status_code" not in row["attrs"]

    async def test_error_response_sent_through_the_middleware(
        self, configure_memory: MemorySink
    ) -> None:
        """Around the whole app, the 500 that Starlette sends is seen and the exception recorded."""
        inner = starlette_app()
        inner.user_middleware.clear()
        async with serving(AtraceMiddleware(inner)) as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/boom")
        assert resp.status_code == 500 and "traceparent" in resp.headers
        row = only(await spans_of(configure_memory))
        assert row["attrs"]["http.response.status_code"] == 500
        assert row["status"] == 2 and row["error_message"] == "the handler blew up"

    @pytest.mark.parametrize(("code", "failed"), [(404, False), (429, False), (503, True)])
    async def test_5xx_fails_and_4xx_does_not(
        self, configure_memory: MemorySink, code: int, failed: bool
    ) -> None:
        """As for OpenTelemetry server spans: a 5xx status fails the span, a 4xx is the client's."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/status/{code}")
        assert resp.status_code == code
        row = only(await spans_of(configure_memory))
        assert row["attrs"]["http.response.status_code"] == code
        assert row["status"] == (2 if failed else 0)
        assert row["level"] == (40 if failed else 20)
        # The failed HTTP status is the span's status message; there was no exception.
        assert row["status_message"] == (f"HTTP {code}" if failed else None)
        assert row["error_type"] is None and row["error_message"] is None

    async def test_not_found_has_no_route(self, configure_memory: MemorySink) -> None:
        """A path no route matched keeps the span name to the method: no path in the name."""
        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            resp = await client.get(f"{url}/no/such/thing")
        assert resp.status_code == 404
        row = only(await spans_of(configure_memory))
        assert row["name"] == "GET" and row["status"] == 0
        assert "http.route" not in row["attrs"]


# ---- what gets a span ----------------------------------------------------------------------------


class TestScope:
    async def test_skip_paths(self, configure_memory: MemorySink) -> None:
        """A skipped path and the paths below it get no span and no headers; a sibling does."""
        app = starlette_app(skip_paths=["/health"])
        async with serving(app) as url, httpx.AsyncClient() as client:
            skipped = [await client.get(f"{url}{p}") for p in ("/health", "/health/live")]
            kept = await client.get(f"{url}/healthz")
        assert all(r.status_code == 200 and "traceparent" not in r.headers for r in skipped)
        assert "traceparent" in kept.headers
        row = only(await spans_of(configure_memory))
        assert row["attrs"]["url.path"] == "/healthz"

    async def test_one_span_for_streamed_request_and_response(
        self, configure_memory: MemorySink
    ) -> None:
        """Many receive and send calls still make exactly one span."""

        async def upload() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"x" * 1000
                await asyncio.sleep(0)

        async with serving(starlette_app()) as url, httpx.AsyncClient() as client:
            up = await client.post(f"{url}/echo", content=upload())
            down = await client.get(f"{url}/stream")
        assert up.text == "40000"
        assert down.text.count("chunk") == 50
        rows = await spans_of(configure_memory)
        assert sorted(r["name"] for r in rows) == ["GET /stream", "POST /echo"]

    async def test_websocket_connection_is_one_span(self, configure_memory: MemorySink) -> None:
        """A WebSocket connection, however many messages, is one span; its logs link to it."""
        async with (
            serving(starlette_app()) as url,
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"{url.replace('http', 'ws')}/ws/lobby", headers={"traceparent": TRACEPARENT}
            ) as ws,
        ):
            for text in ("a", "b", "c"):
                await ws.send_str(text)
                assert (await ws.receive_str()) == text.upper()
            await ws.send_str("bye")
            await ws.receive()
        await atrace.aflush()
        row = only(configure_memory.spans())
        assert row["name"] == "WEBSOCKET /ws/{room}"
        assert row["trace_id"] == TRACE and row["parent_id"] == parse_span_id(PARENT)
        assert row["attrs"]["url.scheme"] == "ws" and row["attrs"]["url.path"] == "/ws/lobby"
        assert "http.request.method" not in row["attrs"]
        logs = [r for r in configure_memory.logs() if r["message"] == "ws message"]
        assert len(logs) == 3 and {log["span_id"] for log in logs} == {row["span_id"]}

    async def test_lifespan_passes_through(self, configure_memory: MemorySink) -> None:
        """Startup and shutdown reach the app untouched and make no span."""
        events: list[str] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                events.append(f"scope {scope['type']}")
                while True:
                    message = await receive()
                    events.append(message["type"])
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    else:
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            await bare_app(scope, receive, send)

        async with serving(AtraceMiddleware(app)):
            assert events == ["scope lifespan", "lifespan.startup"]
        assert events[-1] == "lifespan.shutdown"
        assert await spans_of(configure_memory) == []


# ---- the pieces ----------------------------------------------------------------------------------


class TestPieces:
    @pytest.mark.parametrize("value", INVALID_TRACEPARENTS)
    def test_parse_rejects_invalid(self, value: str) -> None:
        """Every W3C violation is refused, as text and as bytes."""
        assert parse_traceparent(value) is None
        assert parse_traceparent(value.encode()) is None

    def test_parse_valid(self) -> None:
        """A valid value gives the ids (signed span id) and the sampled flag; padding is allowed."""
        for value in (TRACEPARENT, f" {TRACEPARENT} ".encode()):
            ctx = parse_traceparent(value)
            assert ctx is not None
            assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (TRACE, parse_span_id(PARENT), True)
        unsampled = parse_traceparent(TRACEPARENT[:-2] + "00")
        assert unsampled is not None and not unsampled.sampled

    def test_skip_rule(self) -> None:
        """An entry covers its path and those below it; bad entries are refused."""
        skip = skip_rule(["/health", "/static/"])
        assert skip is not None
        assert [skip(p) for p in ("/health", "/health/x", "/healthz", "/static", "/static/a")] == [
            True,
            True,
            False,
            True,
            True,
        ]
        assert skip_rule(()) is None
        with pytest.raises(atrace.ConfigError, match="skip_paths"):
            skip_rule(["health"])
        with pytest.raises(atrace.ConfigError):
            AtraceMiddleware(bare_app, skip_paths=[None])  # type: ignore[list-item]

    def test_split_host(self) -> None:
        """Host header values split into address and port, IPv6 brackets removed."""
        assert split_host("example.com") == ("example.com", None)
        assert split_host("example.com:8080") == ("example.com", 8080)
        assert split_host("[::1]:8000") == ("::1", 8000)
        assert split_host("[::1]") == ("::1", None)
        assert split_host("host:notaport") == ("host", None)

    @pytest.mark.parametrize(
        "name",
        [
            "atrace.integrations",
            "atrace.integrations.asgi",
            "atrace.integrations.wsgi",
            "atrace.integrations.aiohttp",
            "atrace.integrations.httpx",
        ],
    )
    def test_all_names_the_public_api(self, name: str) -> None:
        """Each integration module's __all__ is a tuple of what it really defines."""
        module = importlib.import_module(name)
        assert isinstance(module.__all__, tuple)
        for item in module.__all__:
            assert hasattr(module, item)
        defined = {
            key
            for key, value in vars(module).items()
            if not key.startswith("_") and getattr(value, "__module__", None) == name
        }
        assert defined <= set(module.__all__)


@pytest.fixture(autouse=True)
def _quiet_uvicorn(caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn reports the exceptions the failure tests raise on purpose; keep them captured."""
    caplog.set_level(logging.CRITICAL, logger="uvicorn.error")
