"""WSGI middleware under a real wsgiref server and a real client: spans, headers, failures."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest

import atrace
from atrace._emit.ids import format_span_id, parse_span_id
from atrace.integrations.wsgi import AtraceWSGIMiddleware
from atrace.testing import MemorySink

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"

StartResponse = Callable[..., Any]


class Quiet(WSGIRequestHandler):
    """No access log lines on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(WSGIServer):
    """No traceback on stderr for the errors the tests provoke on purpose."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """wsgiref serving ``app`` on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, server_class=QuietServer, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def get(url: str, **kwargs: Any) -> httpx.Response:
    """A blocking httpx request in a thread, so the loop (and atrace's flusher) keep running."""

    def call() -> httpx.Response:
        with httpx.Client() as client:
            return client.get(url, **kwargs)

    return await asyncio.to_thread(call)


class Explosion(Exception):
    """The failure the test apps raise."""


class Body:
    """A response iterable that logs while producing chunks and notes what it sees at close."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.seen_at_close: Any = None

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.chunks):
            atrace.info("chunk", n=i)
            yield b"part %d\n" % i

    def close(self) -> None:
        self.seen_at_close = atrace.current_span()
        assert isinstance(self.seen_at_close, atrace.Span)
        self.end_at_close = self.seen_at_close.end_ns


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Routes for every behaviour the tests look at."""
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise Explosion("before the response")
    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        start_response(f"{code} Whatever", [("Content-Type", "text/plain")])
        return [b"status"]
    if path.startswith("/items/"):
        sp = atrace.current_span()
        assert isinstance(sp, atrace.Span)
        sp.set(**{"http.route": "/items/<id>"})
        atrace.info("loading item")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"item"]
    if path == "/body":
        start_response("200 OK", [("Content-Type", "text/plain")])
        body = Body(5)
        environ["test.body"] = body
        return body
    if path == "/fail-midway":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def chunks() -> Iterator[bytes]:
            yield b"first\n"
            raise Explosion("while streaming")

        return chunks()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


async def spans_of(sink: MemorySink) -> list[dict[str, Any]]:
    await atrace.aflush()
    return sink.spans()


def only(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


class TestWSGI:
    async def test_span_per_request(self, configure_memory: MemorySink) -> None:
        """One span per request, named by method, with OTel attributes and the status code."""
        with serving(AtraceWSGIMiddleware(app)) as url:
            resp = await get(f"{url}/anything?x=1", headers={"User-Agent": "tests/1.0"})
        assert resp.text == "hello"
        assert resp.headers["content-length"] == "5"  # a list body keeps its length
        row = only(await spans_of(configure_memory))
        port = int(url.rsplit(":", 1)[1])
        assert row["name"] == "GET" and row["kind"] == 3 and row["status"] == 0  # unset
        assert row["span_kind"] == 2  # server
        assert row["attrs"] == {
            "http.request.method": "GET",
            "url.path": "/anything",
            "url.scheme": "http",
            "server.address": "127.0.0.1",
            "server.port": port,
            "client.address": "127.0.0.1",
            "user_agent.original": "tests/1.0",
            "http.response.status_code": 200,
        }

    async def test_route_named_by_the_app_and_logs_linked(
        self, configure_memory: MemorySink
    ) -> None:
        """An app naming its route gets the span named after it; its logs carry the span."""
        with serving(AtraceWSGIMiddleware(app)) as url:
            await get(f"{url}/items/3")
        await atrace.aflush()
        row = only(configure_memory.spans())
        assert row["name"] == "GET /items/<id>"
        log = only(configure_memory.logs())
        assert (log["trace_id"], log["span_id"]) == (row["trace_id"], row["span_id"])

    async def test_propagation_in_and_out(self, configure_memory: MemorySink) -> None:
        """traceparent is joined, X-Trace-ID is the fallback, invalid values are ignored."""
        with serving(AtraceWSGIMiddleware(app)) as url:
            joined = await get(f"{url}/a", headers={"traceparent": TRACEPARENT})
            await get(f"{url}/b", headers={"traceparent": "garbage", "X-Trace-ID": TRACE})
            await get(f"{url}/c", headers={"traceparent": f"00-{TRACE.upper()}-{PARENT}-01"})
        rows = {r["attrs"]["url.path"]: r for r in await spans_of(configure_memory)}
        assert rows["/a"]["trace_id"] == TRACE
        assert rows["/a"]["parent_id"] == parse_span_id(PARENT)
        assert rows["/b"]["trace_id"] == TRACE and rows["/b"]["parent_id"] is None
        assert rows["/c"]["trace_id"] != TRACE and rows["/c"]["parent_id"] is None
        sid = format_span_id(rows["/a"]["span_id"])
        assert joined.headers["traceparent"] == f"00-{TRACE}-{sid}-01"
        assert joined.headers["x-trace-id"] == TRACE

    async def test_exception_recorded_and_reraised(self, configure_memory: MemorySink) -> None:
        """An exception in the app fails the span and reaches the server (a 500)."""
        caught: list[BaseException] = []
        traced = AtraceWSGIMiddleware(app)

        def outer(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            try:
                return traced(environ, start_response)
            except Explosion as exc:
                caught.append(exc)
                raise

        with serving(outer) as url:
            resp = await get(f"{url}/raise")
        assert resp.status_code == 500
        assert [str(e) for e in caught] == ["before the response"]
        row = only(await spans_of(configure_memory))
        assert row["status"] == 2 and row["error_type"].endswith("test_wsgi.Explosion")
        assert "http.response.status_code" not in row["attrs"]

    async def test_exception_while_streaming(self, configure_memory: MemorySink) -> None:
        """An exception raised by the body iterable is recorded once the span ends."""
        with serving(AtraceWSGIMiddleware(app)) as url:
            resp = await get(f"{url}/fail-midway")
        # wsgiref has sent the headers and the first chunk, then closes the connection.
        assert resp.status_code == 200 and resp.text == "first\n"
        row = only(await spans_of(configure_memory))
        assert row["status"] == 2 and row["error_message"] == "while streaming"
        assert row["attrs"]["http.response.status_code"] == 200

    @pytest.mark.parametrize(("code", "failed"), [(404, False), (500, True), (503, True)])
    async def test_status(self, configure_memory: MemorySink, code: int, failed: bool) -> None:
        """A 5xx fails the span, a 4xx does not."""
        with serving(AtraceWSGIMiddleware(app)) as url:
            resp = await get(f"{url}/status/{code}")
        assert resp.status_code == code and "traceparent" in resp.headers
        row = only(await spans_of(configure_memory))
        assert row["attrs"]["http.response.status_code"] == code
        assert row["status"] == (2 if failed else 0)
        assert row["status_message"] == (f"HTTP {code}" if failed else None)
        assert row["error_message"] is None

    async def test_span_ends_when_the_body_is_closed(self, configure_memory: MemorySink) -> None:
        """The span is current while chunks are made and at close, and ends only after close."""
        bodies: list[Body] = []

        def keep(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            result = app(environ, start_response)
            bodies.append(environ["test.body"])
            return result

        with serving(AtraceWSGIMiddleware(keep)) as url:
            resp = await get(f"{url}/body")
        assert resp.text.count("part") == 5
        await atrace.aflush()
        row = only(configure_memory.spans())
        (body,) = bodies
        assert body.seen_at_close.span_id == row["span_id"]
        assert body.end_at_close == 0  # still running while the app closed its iterable
        logs = configure_memory.logs()
        assert len(logs) == 5 and {log["span_id"] for log in logs} == {row["span_id"]}

    async def test_skip_paths_and_options(self, configure_memory: MemorySink) -> None:
        """Skipped paths get no span; service and record_client apply to the others."""
        traced = AtraceWSGIMiddleware(
            app, skip_paths=["/health"], service="wsgi-svc", record_client=False
        )
        with serving(traced) as url:
            skipped = await get(f"{url}/health/ready")
            await get(f"{url}/caf%C3%A9")
        assert "traceparent" not in skipped.headers
        row = only(await spans_of(configure_memory))
        assert row["attrs"]["url.path"] == "/café"  # the raw bytes, read as UTF-8
        assert row["service"] == "wsgi-svc"
        assert "client.address" not in row["attrs"]
