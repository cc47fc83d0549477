"""httpx: event hooks and transports against a real server that echoes the traceparent it got."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

import atrace
from atrace._emit.ids import format_span_id
from atrace.integrations.httpx import AsyncTransport, Transport, async_event_hooks, event_hooks
from atrace.testing import MemorySink


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 answering with the traceparent it received."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("traceparent", ""))

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/echo")

    app = web.Application()
    app.add_routes(
        [
            web.get("/echo", echo),
            web.post("/echo", echo),
            web.get("/status/{code}", status),
            web.get("/hop", hop),
        ]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def spans_of(sink: MemorySink) -> list[dict[str, Any]]:
    await atrace.aflush()
    return sink.spans()


def by_name(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["name"] == name]


class TestHooks:
    async def test_sync_client(self, configure_memory: MemorySink) -> None:
        """A sync client's request is a child span of the caller's, and the server gets its id."""
        async with echo_server() as url:

            def call() -> str:
                with (
                    atrace.span("caller"),
                    httpx.Client(event_hooks=event_hooks()) as client,
                ):
                    return client.get(f"{url}/echo", params={"q": "1"}).text

            received = await asyncio.to_thread(call)
        rows = await spans_of(configure_memory)
        (caller,) = by_name(rows, "caller")
        (sp,) = by_name(rows, "HTTP GET")
        assert sp["parent_id"] == caller["span_id"] and sp["trace_id"] == caller["trace_id"]
        assert received == f"00-{sp['trace_id']}-{format_span_id(sp['span_id'])}-03"
        assert sp["attrs"] == {
            "http.request.method": "GET",
            "url.full": f"{url}/echo?q=1",
            "server.address": "127.0.0.1",
            "server.port": int(url.rsplit(":", 1)[1]),
            "http.response.status_code": 200,
        }
        assert sp["status"] == 0  # a 200 leaves the status unset
        assert sp["span_kind"] == 3 and caller["span_kind"] == 1  # client, internal

    async def test_async_client(self, configure_memory: MemorySink) -> None:
        """The async hooks do the same for AsyncClient."""
        async with (
            echo_server() as url,
            httpx.AsyncClient(event_hooks=async_event_hooks()) as client,
            atrace.span("caller") as caller,
        ):
            received = (await client.get(f"{url}/echo")).text
        (sp,) = by_name(await spans_of(configure_memory), "HTTP GET")
        assert sp["parent_id"] == caller.span_id and sp["span_kind"] == 3
        assert received == f"00-{caller.trace_id}-{format_span_id(sp['span_id'])}-03"

    async def test_error_status_and_redirect_hops(self, configure_memory: MemorySink) -> None:
        """A 5xx fails the span; each redirect hop is a span whose id the next server sees."""
        async with (
            echo_server() as url,
            httpx.AsyncClient(event_hooks=async_event_hooks(), follow_redirects=True) as client,
        ):
            assert (await client.get(f"{url}/status/502")).status_code == 502
            received = (await client.get(f"{url}/hop")).text
        rows = by_name(await spans_of(configure_memory), "HTTP GET")
        codes = {r["attrs"]["url.full"].rsplit("/", 1)[1]: r for r in rows}
        # The failed HTTP status is the status message; there was no exception.
        assert codes["502"]["status"] == 2 and codes["502"]["status_message"] == "HTTP 502"
        assert codes["502"]["error_type"] is None and codes["502"]["error_message"] is None
        assert codes["hop"]["attrs"]["http.response.status_code"] == 302
        assert codes["hop"]["status"] == 0  # a redirect is not a failure (nor set OK)
        assert codes["hop"]["status_message"] is None
        assert (
            received
            == f"00-{codes['echo']['trace_id']}-{format_span_id(codes['echo']['span_id'])}-03"
        )

    async def test_failed_request_leaves_nothing_open(self, configure_memory: MemorySink) -> None:
        """With hooks a request without a response records nothing and keeps no span alive."""
        before = atrace.metrics().open_spans
        async with httpx.AsyncClient(event_hooks=async_event_hooks()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{closed_port()}/x")
        assert atrace.metrics().open_spans == before
        assert await spans_of(configure_memory) == []

    async def test_credentials_are_not_recorded(self, configure_memory: MemorySink) -> None:
        """url.full never carries a user name or password."""
        async with (
            echo_server() as url,
            httpx.AsyncClient(event_hooks=async_event_hooks()) as client,
        ):
            await client.get(url.replace("http://", "http://user:secret@") + "/echo")
        (sp,) = by_name(await spans_of(configure_memory), "HTTP GET")
        assert sp["attrs"]["url.full"] == f"{url}/echo"


class TestTransports:
    async def test_async_transport(self, configure_memory: MemorySink) -> None:
        """The async transport makes the same span and injects the same header."""
        async with (
            echo_server() as url,
            httpx.AsyncClient(transport=AsyncTransport()) as client,
        ):
            received = (await client.get(f"{url}/echo")).text
            assert (await client.get(f"{url}/status/404")).status_code == 404
        rows = by_name(await spans_of(configure_memory), "HTTP GET")
        ok = next(r for r in rows if r["attrs"]["http.response.status_code"] == 200)
        missing = next(r for r in rows if r["attrs"]["http.response.status_code"] == 404)
        assert received == f"00-{ok['trace_id']}-{format_span_id(ok['span_id'])}-03"
        assert ok["status"] == 0 and missing["status"] == 2
        assert missing["status_message"] == "HTTP 404" and missing["error_message"] is None
        assert ok["span_kind"] == missing["span_kind"] == 3

    async def test_async_transport_records_connection_errors(
        self, configure_memory: MemorySink
    ) -> None:
        """A connection error ends the span failed with the exception, which propagates."""
        async with httpx.AsyncClient(transport=AsyncTransport()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{closed_port()}/x")
        (sp,) = by_name(await spans_of(configure_memory), "HTTP GET")
        assert sp["status"] == 2 and sp["error_type"] == "httpx.ConnectError"

    async def test_sync_transport(self, configure_memory: MemorySink) -> None:
        """The sync transport: a span per request, errors recorded, the wrapped one closed."""
        async with echo_server() as url:
            inner = ClosingTransport()

            def call() -> str:
                with httpx.Client(transport=Transport(inner)) as client:
                    text = client.post(f"{url}/echo").text
                    with pytest.raises(httpx.ConnectError):
                        client.get(f"http://127.0.0.1:{closed_port()}/x")
                    return text

            received = await asyncio.to_thread(call)
        rows = await spans_of(configure_memory)
        (post,) = by_name(rows, "HTTP POST")
        (failed,) = by_name(rows, "HTTP GET")
        assert received == f"00-{post['trace_id']}-{format_span_id(post['span_id'])}-03"
        assert failed["status"] == 2 and failed["error_type"] == "httpx.ConnectError"
        assert inner.closed


class ClosingTransport(httpx.HTTPTransport):
    """Notes that it was closed."""

    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()
