"""HttpSink against a real aiohttp server on 127.0.0.1 that decodes each POST with decode_batch."""

from __future__ import annotations

import asyncio
import collections
import email.utils
import gzip
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import atrace
from atrace._delivery.spill import Spill
from atrace._formats.wire import decode_batch
from atrace._pipeline.encode import Encoder
from atrace._records import COLUMNS
from atrace.errors import ConfigError, SinkClosedError, SinkHTTPError, WireError
from atrace.sinks import Batch
from atrace.sinks import http as http_sink
from atrace.sinks.http import DEFAULT_GZIP_MIN_BYTES, HttpSink, HttpSinkError

MESSAGE_I = COLUMNS.index("message")
FAST_RECOVERY = {
    "retry_attempts": 2,
    "retry_deadline": 1.0,
    "breaker_threshold": 2,
    "breaker_reset": 0.2,
    "flush_interval": 0.05,
    "batch_size": 100,
}


class Post:
    """What the server saw of one request."""

    def __init__(self, request: web.Request, raw: bytes, batch_id: uuid.UUID, rows: Any) -> None:
        self.headers = request.headers
        self.peer = request.transport.get_extra_info("peername") if request.transport else None
        self.raw_size = len(raw)
        self.batch_id = batch_id
        self.rows = rows


class IngestServer:
    """A stand-in collector: decodes each POST, answers as told, stores a batch id once."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.stored: dict[uuid.UUID, list[tuple[Any, ...]]] = {}
        self.repeats = 0  # POSTs of a batch id already stored (the ledger kept them out)
        # Answers to give, one per POST, before the normal 200: (status, headers, body).
        self.answers: collections.deque[tuple[int, dict[str, str], Any]] = collections.deque()
        self.always: tuple[int, dict[str, str], Any] | None = None
        self.store_then_fail = 0  # store the next N batches, then answer 503 anyway
        self.hang = False
        self.posted = asyncio.Event()  # set at each decoded POST
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def peers(self) -> set[Any]:
        return {p.peer for p in self.posts}

    def messages(self) -> list[str]:
        return [r[MESSAGE_I] for rows in self.stored.values() for r in rows]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # as sent: the runner does not inflate
        data = gzip.decompress(raw) if request.headers.get("Content-Encoding") == "gzip" else raw
        try:
            batch_id, rows = decode_batch(data, request.headers.get("Content-Type", ""))
        except WireError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        self.posts.append(Post(request, raw, batch_id, rows))
        self.posted.set()
        if self.hang:
            await self._release.wait()
        answer = self.answers.popleft() if self.answers else self.always
        if answer is not None:
            status, headers, payload = answer
            if isinstance(payload, bytes):
                return web.Response(status=status, headers=headers, body=payload)
            return web.json_response(payload, status=status, headers=headers)
        if batch_id in self.stored:
            self.repeats += 1
        else:
            self.stored[batch_id] = rows
        if self.store_then_fail:
            self.store_then_fail -= 1
            return web.json_response({"error": "answer lost"}, status=503)
        return web.json_response({"accepted": len(rows)})

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/ingest", self.handle)
        app.router.add_post("/custom/path/v1/ingest", self.handle)
        self._runner = web.AppRunner(app, auto_decompress=False, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def server() -> AsyncIterator[IngestServer]:
    """A collector stand-in on a free port of 127.0.0.1."""
    s = IngestServer()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def opened() -> AsyncIterator[Callable[..., Awaitable[HttpSink]]]:
    """Makes opened sinks and closes them at the end of the test."""
    sinks: list[HttpSink] = []

    async def make(url: str, **kw: Any) -> HttpSink:
        sink = HttpSink(url, **kw)
        await sink.open()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


def batch_of(n: int, *, text: str = "m") -> Batch:
    """A batch of ``n`` log rows from atrace's encoder, messages numbered."""
    enc = Encoder(service="svc", environment="test", host="h", pid=1)
    now = time.time_ns()
    records = [
        (0, now + i, 20, None, None, None, None, 0, None, "app", f"{text}{i}", {"i": i}, None, None)
        for i in range(n)
    ]
    return Batch(enc.rows(records))


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for a condition (not a timing assertion), flushing meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached: {atrace.metrics()}")
        await atrace.aflush(timeout=5)
        await asyncio.sleep(0.02)


def assert_each_once(server: IngestServer, expected: list[str]) -> None:
    """Every expected message stored exactly once, nothing else."""
    counts = collections.Counter(server.messages())
    assert sorted(counts) == sorted(expected)
    assert set(counts.values()) == {1}


class TestConfig:
    def test_name_and_endpoint(self) -> None:
        """The name is http:host:port and the sink posts to the collector's /v1/ingest."""
        sink = HttpSink("http://127.0.0.1:4319")
        assert sink.name == "http:127.0.0.1:4319"
        assert sink.url == "http://127.0.0.1:4319/v1/ingest"

    @pytest.mark.parametrize(
        ("url", "endpoint", "name"),
        [
            ("http://h:1/v1/ingest", "http://h:1/v1/ingest", "http:h:1"),
            ("http://h:1/base/", "http://h:1/base/v1/ingest", "http:h:1"),
            ("https://collector.example", "https://collector.example/v1/ingest", None),
            ("http://[::1]:4319", "http://[::1]:4319/v1/ingest", "http:[::1]:4319"),
        ],
    )
    def test_url_forms(self, url: str, endpoint: str, name: str | None) -> None:
        """A base URL gains /v1/ingest; one that already ends in it is used as given."""
        sink = HttpSink(url)
        assert sink.url == endpoint
        assert sink.name == (name or "http:collector.example:443")

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"url": "ftp://h/"}, "url"),
            ({"url": "http://"}, "url"),
            ({"url": "http://h:99999"}, "url"),
            ({"url": "http://h", "format": "xml"}, "format"),
            ({"url": "http://h", "gzip_min_bytes": -1}, "gzip_min_bytes"),
            ({"url": "http://h", "timeout": 0}, "timeout"),
            ({"url": "http://h", "api_key": " "}, "api_key"),
        ],
    )
    def test_bad_settings(self, kwargs: dict[str, Any], field: str) -> None:
        """A setting the sink cannot use is a ConfigError naming the field."""
        url = kwargs.pop("url")
        with pytest.raises(ConfigError) as err:
            HttpSink(url, **kwargs)
        assert err.value.field == field

    def test_all_matches_exports(self) -> None:
        """The module's __all__ names exist and cover its public classes."""
        assert isinstance(http_sink.__all__, tuple)
        assert all(hasattr(http_sink, n) for n in http_sink.__all__)
        public = {
            n
            for n, v in vars(http_sink).items()
            if not n.startswith("_") and isinstance(v, type) and v.__module__ == http_sink.__name__
        }
        assert public <= set(http_sink.__all__)

    def test_sink_error_is_the_sink_http_error(self) -> None:
        """HttpSinkError is SinkHTTPError under its old name: catching either catches both."""
        assert HttpSinkError is SinkHTTPError


class TestPosting:
    @pytest.mark.parametrize("fmt", ["msgpack", "json"])
    async def test_batches_arrive_decoded(
        self, server: IngestServer, opened: Any, fmt: str
    ) -> None:
        """The server decodes exactly the rows sent, under the batch's id, in either format."""
        sink = await opened(server.url, format=fmt)
        batch = batch_of(20)
        await sink.write(batch)
        assert server.stored == {batch.id: batch.rows}
        assert server.posts[0].headers["Content-Type"] == f"application/{fmt}"

    async def test_small_body_is_not_gzipped(self, server: IngestServer, opened: Any) -> None:
        """A body under the threshold goes as it is."""
        sink = await opened(server.url)
        await sink.write(batch_of(3))
        assert "Content-Encoding" not in server.posts[0].headers
        assert server.posts[0].raw_size < DEFAULT_GZIP_MIN_BYTES

    @pytest.mark.parametrize("fmt", ["msgpack", "json"])
    async def test_large_body_is_gzipped(self, server: IngestServer, opened: Any, fmt: str) -> None:
        """A body over the threshold is gzipped; the server inflates it to the same rows."""
        sink = await opened(server.url, format=fmt)
        batch = batch_of(2000)
        await sink.write(batch)
        post = server.posts[0]
        assert post.headers["Content-Encoding"] == "gzip"
        assert server.stored == {batch.id: batch.rows}
        assert post.raw_size < len(http_sink.encode_batch(batch, fmt)) / 2

    @pytest.mark.parametrize(("limit", "gzipped"), [(None, False), (0, True)])
    async def test_threshold_setting(
        self, server: IngestServer, opened: Any, limit: int | None, gzipped: bool
    ) -> None:
        """gzip_min_bytes=None never compresses, 0 always does."""
        sink = await opened(server.url, gzip_min_bytes=limit)
        await sink.write(batch_of(500 if limit is None else 1))
        assert (server.posts[0].headers.get("Content-Encoding") == "gzip") is gzipped
        assert len(server.stored) == 1

    async def test_api_key_header(self, server: IngestServer, opened: Any) -> None:
        """The API key goes as a Bearer token, next to the extra headers asked for."""
        sink = await opened(server.url, api_key="k-123", headers={"X-Team": "pay"})
        await sink.write(batch_of(1))
        assert server.posts[0].headers["Authorization"] == "Bearer k-123"
        assert server.posts[0].headers["X-Team"] == "pay"

    async def test_api_key_from_environment(
        self, server: IngestServer, opened: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ATRACE_API_KEY supplies the key when none is passed; without either, none is sent."""
        plain = await opened(server.url)
        monkeypatch.setenv("ATRACE_API_KEY", "from-env")
        keyed = await opened(server.url)
        await plain.write(batch_of(1))
        await keyed.write(batch_of(1))
        assert "Authorization" not in server.posts[0].headers
        assert server.posts[1].headers["Authorization"] == "Bearer from-env"

    async def test_url_with_path_is_used_as_given(self, server: IngestServer, opened: Any) -> None:
        """A URL ending in /v1/ingest under a prefix reaches that path."""
        sink = await opened(f"{server.url}/custom/path/v1/ingest")
        await sink.write(batch_of(2))
        assert len(server.stored) == 1

    async def test_keep_alive(self, server: IngestServer, opened: Any) -> None:
        """Several batches in a row travel over one connection."""
        sink = await opened(server.url)
        for _ in range(5):
            await sink.write(batch_of(10))
        assert len(server.posts) == 5 and len(server.stored) == 5
        assert len(server.peers) == 1

    async def test_close_and_reopen(self, server: IngestServer) -> None:
        """A closed sink refuses writes (retryably) and works again once reopened."""
        sink = HttpSink(server.url)
        await sink.open()
        await sink.write(batch_of(1))
        await sink.close()
        with pytest.raises(SinkClosedError) as err:
            await sink.write(batch_of(1))
        assert sink.classify(err.value).retryable
        await sink.open()
        try:
            await sink.write(batch_of(1))
        finally:
            await sink.close()
        assert len(server.stored) == 2 and len(server.peers) == 2

    async def test_empty_batch_sends_nothing(self, server: IngestServer, opened: Any) -> None:
        """A batch without rows makes no request."""
        sink = await opened(server.url)
        await sink.write(Batch([]))
        assert server.posts == []


class TestErrors:
    @pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 500, 501])
    async def test_permanent_statuses(self, server: IngestServer, opened: Any, status: int) -> None:
        """Other 4xx (and 5xx but 502-504) are final; the collector's error is in the message."""
        server.always = (status, {}, {"error": f"refused with {status}"})
        sink = await opened(server.url)
        with pytest.raises(HttpSinkError) as err:
            await sink.write(batch_of(3))
        verdict = sink.classify(err.value)
        assert not verdict.retryable and err.value.status == status
        assert f"refused with {status}" in str(err.value) and "batch of 3" in str(err.value)

    @pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
    async def test_retryable_statuses(self, server: IngestServer, opened: Any, status: int) -> None:
        """429, 502, 503, 504 (and 408) are worth retrying, after the server's Retry-After."""
        server.always = (status, {"Retry-After": "7"}, {"error": "busy"})
        sink = await opened(server.url)
        with pytest.raises(HttpSinkError) as err:
            await sink.write(batch_of(1))
        verdict = sink.classify(err.value)
        assert verdict.retryable and verdict.retry_after == 7.0
        assert "busy" in str(err.value)

    async def test_retry_after_http_date(self, server: IngestServer, opened: Any) -> None:
        """Retry-After as an HTTP-date becomes the seconds until then."""
        when = email.utils.formatdate(time.time() + 120, usegmt=True)
        server.always = (503, {"Retry-After": when}, {"error": "maintenance"})
        sink = await opened(server.url)
        with pytest.raises(HttpSinkError) as err:
            await sink.write(batch_of(1))
        retry_after = sink.classify(err.value).retry_after
        assert retry_after is not None and 60 < retry_after <= 120

    async def test_non_json_error_body(self, server: IngestServer, opened: Any) -> None:
        """An error body that is not the collector's JSON still reaches the message."""
        server.always = (502, {"Content-Type": "text/html"}, b"<h1>Bad Gateway</h1>")
        sink = await opened(server.url)
        with pytest.raises(HttpSinkError, match="Bad Gateway"):
            await sink.write(batch_of(1))

    async def test_huge_error_body_is_cut(self, server: IngestServer, opened: Any) -> None:
        """Only the start of an oversized error page reaches the message."""
        server.always = (404, {"Content-Type": "text/html"}, b"<p>not here</p>" + b"x" * 200_000)
        sink = await opened(server.url)
        with pytest.raises(HttpSinkError, match="not here") as err:
            await sink.write(batch_of(1))
        assert len(str(err.value)) < 2048 and not sink.classify(err.value).retryable

    async def test_connection_refused_is_retryable(self, opened: Any) -> None:
        """Nobody listening: a retryable error without a status."""
        down = IngestServer()
        await down.start()
        url = down.url
        await down.stop()
        sink = await opened(url)
        with pytest.raises(HttpSinkError) as err:
            await sink.write(batch_of(1))
        assert err.value.status is None and sink.classify(err.value).retryable

    async def test_server_that_never_answers(self, server: IngestServer, opened: Any) -> None:
        """A request without an answer times out after ``timeout``; the loop keeps running."""
        server.hang = True
        sink = await opened(server.url, timeout=0.3)
        ticks = 0

        async def app() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(app())
        try:
            with pytest.raises(HttpSinkError, match=r"no answer within 0\.3 s") as err:
                await asyncio.wait_for(sink.write(batch_of(5)), 20)
        finally:
            ticker.cancel()
        assert sink.classify(err.value).retryable and err.value.status is None
        assert len(server.posts) == 1 and ticks > 0

    async def test_close_under_a_write_in_flight(self, server: IngestServer) -> None:
        """Closing the sink while a POST waits (a failed write beside it does) is retryable."""
        server.hang = True
        sink = HttpSink(server.url, timeout=20)
        await sink.open()
        writing = asyncio.ensure_future(sink.write(batch_of(3)))
        await asyncio.wait_for(server.posted.wait(), 20)
        await sink.close()
        with pytest.raises(HttpSinkError) as err:
            await writing
        assert sink.classify(err.value).retryable

    async def test_unencodable_row_is_permanent(self, server: IngestServer, opened: Any) -> None:
        """A row the format cannot hold fails the same way every time: not retried."""
        sink = await opened(server.url)
        bad = Batch([tuple([object()] * len(COLUMNS))])
        with pytest.raises(TypeError) as err:
            await sink.write(bad)
        assert not sink.classify(err.value).retryable
        assert server.posts == []


class TestPipeline:
    async def test_503_then_200_delivers_once(self, server: IngestServer, tmp_path: Path) -> None:
        """Busy answers are retried after Retry-After; every record lands exactly once."""
        for _ in range(3):
            server.answers.append((503, {"Retry-After": "0"}, {"error": "busy"}))
        atrace.configure(
            service="http", sink=HttpSink(server.url), spill_dir=str(tmp_path), **FAST_RECOVERY
        )
        sent = [f"m{i}" for i in range(250)]
        for text in sent:
            atrace.info(text)
        await wait_until(lambda: atrace.metrics().written == len(sent))
        m = atrace.metrics()
        assert m.retries >= 1 and m.dropped == 0 and m.spilled_pending == 0
        assert len(server.posts) == len(server.stored) + 3 + server.repeats
        assert_each_once(server, sent)

    async def test_answer_lost_after_storing(self, server: IngestServer, tmp_path: Path) -> None:
        """A batch stored whose answer was an error is resent under its id and kept once."""
        server.store_then_fail = 1
        atrace.configure(
            service="http", sink=HttpSink(server.url), spill_dir=str(tmp_path), **FAST_RECOVERY
        )
        sent = [f"m{i}" for i in range(50)]
        for text in sent:
            atrace.info(text)
        await wait_until(lambda: atrace.metrics().written == len(sent))
        assert server.repeats == 1
        assert server.posts[0].batch_id == server.posts[1].batch_id
        assert_each_once(server, sent)

    async def test_long_retry_after_spills_then_replays(
        self, server: IngestServer, tmp_path: Path
    ) -> None:
        """A Retry-After past the retry deadline is not waited out: spilled, replayed later."""
        server.answers.append((429, {"Retry-After": "3600"}, {"error": "slow down"}))
        atrace.configure(
            service="http", sink=HttpSink(server.url), spill_dir=str(tmp_path), **FAST_RECOVERY
        )
        sent = [f"m{i}" for i in range(40)]
        for text in sent:
            atrace.info(text)
        await wait_until(lambda: atrace.metrics().spilled == len(sent))
        assert atrace.metrics().retries == 0  # the policy's short backoff was not used
        atrace.info("after")
        await wait_until(lambda: atrace.metrics().written == len(sent) + 1)
        m = atrace.metrics()
        assert m.replayed == len(sent) and m.spilled_pending == 0
        assert_each_once(server, [*sent, "after"])

    async def test_400_is_never_retried(self, server: IngestServer, tmp_path: Path) -> None:
        """A refused batch is sent once, counted as permanent and kept apart on disk."""
        server.always = (400, {}, {"error": "rows[0], column 'level': no"})
        sink = HttpSink(server.url)
        atrace.configure(service="http", sink=sink, spill_dir=str(tmp_path), **FAST_RECOVERY)
        for i in range(30):
            atrace.info(f"m{i}")
        await wait_until(lambda: atrace.metrics().dropped_permanent == 30)
        await atrace.ashutdown(timeout=10)
        m = atrace.metrics()
        assert (m.retries, m.written, m.spilled, m.dropped_permanent) == (0, 0, 0, 30)
        assert len(server.posts) == 1 and server.stored == {}
        (spill_dir,) = await asyncio.to_thread(lambda: list(tmp_path.iterdir()))
        assert Spill(spill_dir).stats().rejected_records == 30

    async def test_server_down_spills_then_replays(self, tmp_path: Path) -> None:
        """Connection refused: retried, spilled, and replayed once the server is back."""
        server = IngestServer()
        await server.start()
        port = server.port
        await server.stop()
        atrace.configure(
            service="http", sink=HttpSink(server.url), spill_dir=str(tmp_path), **FAST_RECOVERY
        )
        sent = [f"m{i}" for i in range(300)]
        for text in sent:
            atrace.info(text)
        await wait_until(lambda: atrace.metrics().spilled_pending == len(sent))
        m = atrace.metrics()
        assert m.retries >= 1 and m.written == 0 and m.dropped == 0
        await server.start(port)
        try:
            atrace.info("back")
            await wait_until(lambda: atrace.metrics().written == len(sent) + 1)
            m = atrace.metrics()
            # The breaker may still have been open for "back": spilled and replayed too.
            assert m.replayed >= len(sent) and m.spilled_pending == 0 and m.dropped == 0
            assert_each_once(server, [*sent, "back"])
        finally:
            await atrace.ashutdown(timeout=10)
            await server.stop()


class TestNoSecrets:
    async def test_a_failed_post_and_the_repr_hide_the_password(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A collector URL with a password: the sink's repr, its name and the error of a real
        failed POST (nothing listens on the port) never show the password."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        sink = HttpSink(f"http://app:s3cret-pw@127.0.0.1:{port}")
        await sink.open()
        try:
            with pytest.raises(SinkHTTPError) as info:
                await sink.write(batch_of(1))
        finally:
            await sink.close()
        shown = [str(info.value), repr(sink), sink.name]
        assert all("s3cret-pw" not in text for text in shown), shown
        assert "app:***@127.0.0.1" in repr(sink)
