"""OtlpSink against a real OTLP/HTTP server on 127.0.0.1: encodings, settings, errors, retries."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gzip
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from google.protobuf import json_format
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import atrace
from _helpers import wait_until
from atrace._records import COLUMNS
from atrace.errors import ConfigError, SinkClosedError, SinkHTTPError
from atrace.sinks import Batch, Sink
from atrace.sinks import otlp as sink_module
from atrace.sinks.otlp import OtlpExportError, OtlpSink, classify

PB = "application/x-protobuf"
JSON = "application/json"
TRACE = "0190b2c3d4e5f60718293a4b5c6d7e8f"
T0 = 1_700_000_000_000_000_000


def row(**values: Any) -> tuple[Any, ...]:
    """A row with defaults (a complete span); keyword arguments name columns."""
    base: dict[str, Any] = dict.fromkeys(COLUMNS)
    base.update(
        ts=T0,
        kind=3,
        level=20,
        trace_id=TRACE,
        span_id=7,
        duration_ns=1000,
        status=1,
        service="svc",
        pid=1,
        name="work",
    )
    base.update(values)
    return tuple(base[c] for c in COLUMNS)


def span_rows(n: int) -> list[tuple[Any, ...]]:
    return [row(span_id=i + 1, name=f"s{i}") for i in range(n)]


def log_rows(n: int) -> list[tuple[Any, ...]]:
    return [
        row(kind=0, span_id=None, duration_ns=None, status=0, message=f"m{i}") for i in range(n)
    ]


class Captured:
    """One request the server received; ``body`` is inflated when it came gzipped."""

    def __init__(self, path: str, headers: Any, raw: bytes) -> None:
        self.path = path
        self.headers = headers
        self.raw = raw
        self.gzipped = headers.get("Content-Encoding") == "gzip"
        self.body = gzip.decompress(raw) if self.gzipped else raw

    def spans(self) -> list[Any]:
        if "json" in self.headers["Content-Type"]:
            request = json_format.Parse(_base64_ids(self.body), ExportTraceServiceRequest())
        else:
            request = ExportTraceServiceRequest.FromString(self.body)
        return [sp for rs in request.resource_spans for ss in rs.scope_spans for sp in ss.spans]

    def logs(self) -> list[Any]:
        if "json" in self.headers["Content-Type"]:
            request = json_format.Parse(_base64_ids(self.body), ExportLogsServiceRequest())
        else:
            request = ExportLogsServiceRequest.FromString(self.body)
        return [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]


def _base64_ids(body: bytes) -> bytes:
    """OTLP/JSON's hex ids as the base64 that the standard protobuf JSON mapping reads."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: base64.b64encode(bytes.fromhex(v)).decode()
                if k in ("traceId", "spanId", "parentSpanId")
                else walk(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return orjson.dumps(walk(orjson.loads(body)))


class OtlpServer:
    """A real OTLP/HTTP endpoint: keeps every request and answers as scripted (else 200)."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self.script: list[tuple[str, int, bytes, dict[str, str]]] = []
        self.always: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.hang = False
        self.release = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def answer(
        self,
        path: str,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        always: bool = False,
    ) -> None:
        """Answer the next request to ``path`` (or all of them) with this status and body."""
        if always:
            self.always[path] = (status, body, headers or {})
        else:
            self.script.append((path, status, body, headers or {}))

    def to(self, path: str) -> list[Captured]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(Captured(request.path, request.headers, await request.read()))
        if self.hang:
            await self.release.wait()
        scripted = [i for i, answer in enumerate(self.script) if answer[0] == request.path]
        if scripted:
            _, status, body, headers = self.script.pop(scripted[0])
        else:
            status, body, headers = self.always.get(request.path, (200, b"", {}))
        content_type = headers.pop("Content-Type", request.content_type)
        return web.Response(status=status, body=body, headers=headers, content_type=content_type)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        # The server inflates gzip bodies itself: the test sees the bytes as sent.
        self._runner = web.AppRunner(app, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sock: socket.socket = site._server.sockets[0]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[OtlpServer]:
    """An OTLP/HTTP server on 127.0.0.1, port 0."""
    srv = OtlpServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def make_sink() -> AsyncIterator[Callable[..., Any]]:
    """Builds opened sinks and closes them at the end of the test."""
    sinks: list[OtlpSink] = []

    async def make(*args: Any, **kwargs: Any) -> OtlpSink:
        sink = OtlpSink(*args, **kwargs)
        await sink.open()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class TestEncodings:
    async def test_protobuf_spans_and_logs_go_to_their_paths(
        self, server: OtlpServer, make_sink: Any
    ) -> None:
        """A batch with both signals is two protobuf requests the official classes parse."""
        sink = await make_sink(server.url)
        await sink.write(Batch(span_rows(3) + log_rows(2)))
        (traces,) = server.to("/v1/traces")
        (logs,) = server.to("/v1/logs")
        assert traces.headers["Content-Type"] == PB and not traces.gzipped
        assert [sp.name for sp in traces.spans()] == ["s0", "s1", "s2"]
        assert [r.body.string_value for r in logs.logs()] == ["m0", "m1"]
        assert traces.headers["User-Agent"].startswith("atrace/")
        assert (sink.spans_sent, sink.logs_sent) == (3, 2)

    async def test_json(self, server: OtlpServer, make_sink: Any) -> None:
        """protocol http/json posts OTLP/JSON with hex ids."""
        sink = await make_sink(server.url, protocol="http/json")
        await sink.write(Batch(span_rows(2) + log_rows(1)))
        (traces,) = server.to("/v1/traces")
        assert traces.headers["Content-Type"] == JSON
        document = orjson.loads(traces.body)
        assert document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == TRACE
        assert [sp.span_id.hex() for sp in traces.spans()] == [
            "0000000000000001",
            "0000000000000002",
        ]
        (logs,) = server.to("/v1/logs")
        assert [r.body.string_value for r in logs.logs()] == ["m0"]

    @pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
    async def test_span_kind_context_and_status(
        self, server: OtlpServer, make_sink: Any, protocol: str
    ) -> None:
        """Each span goes out with its kind, tracestate and trace flags; its status is unset
        unless set or failed, an error's description is its status message, else the exception
        as "Type: message"; only an exception makes an ``exception`` event."""
        sink = await make_sink(server.url, protocol=protocol)
        rows = [
            row(
                span_id=1,
                name="serve",
                span_kind=2,
                trace_state="v=1",
                trace_flags=1,
                status=2,
                status_message="quota exceeded",
                level=40,
            ),
            row(span_id=2, name="call", span_kind=3, trace_flags=3, status=0),
            row(
                span_id=3,
                name="fail",
                span_kind=1,
                trace_flags=3,
                status=2,
                level=40,
                error_type="ValueError",
                error_message="bad",
                stack_trace="Traceback: ...",
            ),
            row(span_id=4, name="fine", span_kind=5, status=1),
        ]
        await sink.write(Batch(rows))
        (traces,) = server.to("/v1/traces")
        got = {
            sp.name: (
                sp.kind,
                sp.trace_state,
                sp.flags,
                sp.status.code,
                sp.status.message,
                [e.name for e in sp.events],
            )
            for sp in traces.spans()
        }
        assert got == {
            "serve": (2, "v=1", 1, 2, "quota exceeded", []),
            "call": (3, "", 3, 0, "", []),
            "fail": (1, "", 3, 2, "ValueError: bad", ["exception"]),
            "fine": (5, "", 0, 1, "", []),
        }
        # The kind is the span's, not an attribute.
        assert all(a.key != "span.kind" for sp in traces.spans() for a in sp.attributes)

    @pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
    async def test_gzip(self, server: OtlpServer, make_sink: Any, protocol: str) -> None:
        """compression gzip sends gzip bodies with Content-Encoding; the server inflates them."""
        sink = await make_sink(server.url, compression="gzip", protocol=protocol)
        await sink.write(Batch(span_rows(50)))
        (traces,) = server.to("/v1/traces")
        assert traces.gzipped and traces.raw[:2] == b"\x1f\x8b"
        assert len(traces.spans()) == 50

    async def test_one_signal_one_request(self, server: OtlpServer, make_sink: Any) -> None:
        """A batch without logs sends no log request, and the other way round."""
        sink = await make_sink(server.url)
        await sink.write(Batch(span_rows(2)))
        await sink.write(Batch(log_rows(2)))
        assert [r.path for r in server.requests] == ["/v1/traces", "/v1/logs"]

    async def test_start_rows_are_counted_not_sent(
        self, server: OtlpServer, make_sink: Any
    ) -> None:
        """Span start rows have no OTLP form: nothing is sent for them, ``skipped`` counts them."""
        sink = await make_sink(server.url)
        await sink.write(Batch([row(kind=1, duration_ns=None, status=0)] * 3))
        assert server.requests == [] and sink.skipped == 3

    async def test_big_batch_is_encoded_off_the_loop_and_arrives_whole(
        self, server: OtlpServer, make_sink: Any
    ) -> None:
        """A batch above the off-loop threshold is delivered complete, in order."""
        n = sink_module.OFF_LOOP_ROWS * 4
        sink = await make_sink(server.url, compression="gzip")
        await sink.write(Batch(span_rows(n) + log_rows(n)))
        (traces,) = server.to("/v1/traces")
        (logs,) = server.to("/v1/logs")
        assert [sp.name for sp in traces.spans()] == [f"s{i}" for i in range(n)]
        assert len(logs.logs()) == n

    async def test_write_before_open(self) -> None:
        """Writing to a sink that is not open is a SinkClosedError, retried (the lane reopens)."""
        sink = OtlpSink("http://127.0.0.1:9")
        with pytest.raises(SinkClosedError) as err:
            await sink.write(Batch(span_rows(1)))
        assert classify(err.value).retryable


class TestSettings:
    def test_defaults(self) -> None:
        """Unset everywhere: localhost:4318, protobuf, no compression, 10 s."""
        sink = OtlpSink()
        assert sink.traces_url == "http://localhost:4318/v1/traces"
        assert sink.logs_url == "http://localhost:4318/v1/logs"
        assert sink.name == "otlp:localhost:4318"
        target = sink.targets["traces"]
        assert (target.protocol, target.compression, target.timeout) == (
            "http/protobuf",
            "none",
            10.0,
        )
        assert OtlpSink("https://otel.example.com/").name == "otlp:otel.example.com:443"
        assert isinstance(sink, Sink) and sink.spill_key.startswith("otlp-")

    def test_base_endpoint_gets_the_signal_path(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_EXPORTER_OTLP_ENDPOINT is a base: /v1/traces and /v1/logs go under its path."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/otlp/")
        sink = OtlpSink()
        assert sink.traces_url == "http://collector:4318/otlp/v1/traces"
        assert sink.logs_url == "http://collector:4318/otlp/v1/logs"
        assert OtlpSink("http://other:1234/x").traces_url == "http://other:1234/x/v1/traces"

    def test_signal_endpoints_are_used_as_given(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Per-signal endpoints, from the environment or the constructor, keep their own path."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9000/ingest")
        sink = OtlpSink()
        assert sink.traces_url == "http://base:4318/v1/traces"
        assert sink.logs_url == "http://logs:9000/ingest"
        # Arguments beat the environment.
        sink = OtlpSink("http://arg:1", traces_endpoint="http://t:2/custom")
        assert (sink.traces_url, sink.logs_url) == ("http://t:2/custom", "http://arg:1/v1/logs")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")  # empty means unset
        assert OtlpSink().traces_url == "http://base:4318/v1/traces"

    def test_timeout_variables_are_milliseconds(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_EXPORTER_OTLP_TIMEOUT is milliseconds (the spec); the argument is seconds."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "300")
        sink = OtlpSink()
        assert (sink.targets["traces"].timeout, sink.targets["logs"].timeout) == (2.5, 0.3)
        assert OtlpSink(timeout=4).targets["logs"].timeout == 4.0

    def test_protocol_and_compression_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Per-signal variables take precedence over the general ones."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP")
        sink = OtlpSink()
        assert sink.targets["traces"].protocol == "http/protobuf"
        assert sink.targets["logs"].protocol == "http/json"
        assert sink.targets["logs"].compression == "gzip"
        assert OtlpSink(compression="none").targets["logs"].compression == "none"

    @pytest.mark.parametrize(
        ("env", "kwargs", "named"),
        [
            ({}, {"protocol": "grpc"}, "protocol='grpc'"),
            ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, {}, "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"),
            ({}, {"compression": "br"}, "compression='br'"),
            ({"OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "zstd"}, {}, "LOGS_COMPRESSION='zstd'"),
            ({}, {"endpoint": "localhost:4318"}, "endpoint='localhost:4318'"),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x"}, {}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
            ({"OTEL_EXPORTER_OTLP_TIMEOUT": "10s"}, {}, "OTEL_EXPORTER_OTLP_TIMEOUT='10s'"),
            ({"OTEL_EXPORTER_OTLP_TIMEOUT": "0"}, {}, "expected milliseconds > 0"),
            ({}, {"timeout": -1}, "timeout=-1"),
            ({"OTEL_EXPORTER_OTLP_HEADERS": "a=1,novalue"}, {}, "header 2 has no '='"),
        ],
    )
    def test_bad_settings_name_the_field(
        self, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], kwargs: Any, named: str
    ) -> None:
        """A setting atrace cannot use is a ConfigError naming the argument or variable."""
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
            OtlpSink(**kwargs)

    async def test_headers_from_the_environment(
        self, server: OtlpServer, make_sink: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OTEL_EXPORTER_OTLP_HEADERS values are URL-decoded; per-signal ones replace them."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s%20e%3Dcret, X-Team=core")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "x-api-key=logs-key")
        sink = await make_sink(server.url)
        await sink.write(Batch(span_rows(1) + log_rows(1)))
        (traces,) = server.to("/v1/traces")
        (logs,) = server.to("/v1/logs")
        assert traces.headers["X-Api-Key"] == "s e=cret" and traces.headers["X-Team"] == "core"
        assert logs.headers["X-Api-Key"] == "logs-key" and "X-Team" not in logs.headers
        sink = await make_sink(server.url, headers={"X-Team": "ops"})
        await sink.write(Batch(span_rows(1)))
        assert server.to("/v1/traces")[-1].headers["X-Team"] == "ops"

    async def test_environment_endpoints_are_posted_to(
        self, server: OtlpServer, make_sink: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A base endpoint with a path and a per-signal endpoint reach the server as configured."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"{server.url}/base")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", f"{server.url}/custom/ingest")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        sink = await make_sink()
        await sink.write(Batch(span_rows(1) + log_rows(1)))
        assert sorted(r.path for r in server.requests) == ["/base/v1/traces", "/custom/ingest"]
        assert all(r.gzipped and r.headers["Content-Type"] == JSON for r in server.requests)
        assert len(server.to("/custom/ingest")[0].logs()) == 1


def trace_response(rejected: int, message: str) -> bytes:
    """A success answer carrying a partial success."""
    answer = ExportTraceServiceResponse()
    answer.partial_success.rejected_spans = rejected
    answer.partial_success.error_message = message
    return bytes(answer.SerializeToString())


class TestAnswers:
    @pytest.mark.parametrize("status", [429, 502, 503, 504])
    async def test_retryable_statuses(
        self, server: OtlpServer, make_sink: Any, status: int
    ) -> None:
        """429, 502, 503 and 504 are retryable, after Retry-After when the server gives one."""
        server.answer("/v1/traces", status, headers={"Retry-After": "7"})
        sink = await make_sink(server.url)
        with pytest.raises(OtlpExportError) as err:
            await sink.write(Batch(span_rows(1)))
        verdict = sink.classify(err.value)
        assert verdict.retryable and verdict.retry_after == 7.0
        assert err.value.status == status and err.value.batch_size == 1

    async def test_retry_after_as_an_http_date(self, server: OtlpServer, make_sink: Any) -> None:
        """Retry-After may be an HTTP date: the wait is the time until then."""
        when = email.utils.formatdate(time.time() + 120, usegmt=True)
        server.answer("/v1/traces", 503, headers={"Retry-After": when})
        sink = await make_sink(server.url)
        with pytest.raises(OtlpExportError) as err:
            await sink.write(Batch(span_rows(1)))
        delay = sink.classify(err.value).retry_after
        assert delay is not None and 60 < delay <= 121

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 413, 415, 500, 501])
    async def test_other_statuses_are_permanent(
        self, server: OtlpServer, make_sink: Any, status: int
    ) -> None:
        """Every status but the four retryable ones is permanent."""
        server.answer("/v1/traces", status)
        sink = await make_sink(server.url)
        with pytest.raises(OtlpExportError, match=f"HTTP {status}") as err:
            await sink.write(Batch(span_rows(1)))
        assert not sink.classify(err.value).retryable

    async def test_error_status_message_is_reported(
        self, server: OtlpServer, make_sink: Any
    ) -> None:
        """A 400 carrying a google.rpc.Status shows its message in the error."""
        body = Status(code=3, message="span 0 has no trace id").SerializeToString()
        server.answer("/v1/traces", 400, body, {"Content-Type": PB})
        sink = await make_sink(server.url)
        with pytest.raises(OtlpExportError, match="HTTP 400: span 0 has no trace id"):
            await sink.write(Batch(span_rows(1)))

    async def test_json_status_and_huge_error_pages_are_cut(
        self, server: OtlpServer, make_sink: Any
    ) -> None:
        """A JSON google.rpc.Status shows its message; a huge error page only its start."""
        status = orjson.dumps({"code": 3, "message": "bad   span\nname"})
        server.answer("/v1/traces", 400, status, {"Content-Type": JSON})
        page = b"<h1>proxy error</h1>" + b"x" * 200_000
        server.answer("/v1/logs", 502, page, {"Content-Type": "text/html"})
        sink = await make_sink(server.url)
        with pytest.raises(OtlpExportError, match="HTTP 400: bad span name") as refused:
            await sink.write(Batch(span_rows(1)))
        assert not sink.classify(refused.value).retryable
        with pytest.raises(OtlpExportError, match=r"HTTP 502: <h1>proxy error</h1>x+…") as busy:
            await sink.write(Batch(log_rows(1)))
        assert len(str(busy.value)) < 1024 and sink.classify(busy.value).retryable

    async def test_partial_success_is_counted_not_retried(
        self, server: OtlpServer, make_sink: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A 200 with rejected spans counts them and warns once; the write succeeds."""
        server.answer("/v1/traces", 200, trace_response(2, "2 spans too old"), {"Content-Type": PB})
        sink = await make_sink(server.url)
        with caplog.at_level(logging.WARNING, logger="atrace.sinks.otlp"):
            await sink.write(Batch(span_rows(5)))
        assert (sink.rejected_spans, sink.rejected_logs) == (2, 0)
        warnings = [r for r in caplog.records if r.name == "atrace.sinks.otlp"]
        assert len(warnings) == 1 and "2 spans too old" in warnings[0].getMessage()
        assert len(server.requests) == 1

    async def test_json_partial_success_for_logs(
        self, server: OtlpServer, make_sink: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The JSON form of a partial success (int64 as a string) is read too."""
        body = orjson.dumps({"partialSuccess": {"rejectedLogRecords": "3", "errorMessage": "x"}})
        server.answer("/v1/logs", 200, body, {"Content-Type": JSON})
        sink = await make_sink(server.url, protocol="http/json")
        with caplog.at_level(logging.WARNING, logger="atrace.sinks.otlp"):
            await sink.write(Batch(log_rows(4)))
        assert sink.rejected_logs == 3
        assert len([r for r in caplog.records if r.name == "atrace.sinks.otlp"]) == 1

    async def test_empty_success_answers(self, server: OtlpServer, make_sink: Any) -> None:
        """A full success (empty body, or an empty response message) counts nothing."""
        server.answer("/v1/logs", 200, ExportLogsServiceResponse().SerializeToString())
        sink = await make_sink(server.url)
        await sink.write(Batch(span_rows(1) + log_rows(1)))
        assert (sink.rejected_spans, sink.rejected_logs) == (0, 0)

    async def test_server_that_never_answers_times_out(
        self, server: OtlpServer, make_sink: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With no answer, the request fails at the timeout (here 150 ms from the environment)."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "150")
        server.hang = True
        sink = await make_sink(server.url)
        with pytest.raises(OtlpExportError, match=r"no answer within 0\.15 s") as err:
            await sink.write(Batch(span_rows(1)))
        assert sink.classify(err.value).retryable and err.value.status is None
        assert len(server.requests) == 1

    async def test_refused_connection_is_retryable(self, make_sink: Any) -> None:
        """Nothing listening: a retryable error naming the endpoint."""
        port = free_port()
        sink = await make_sink(f"http://127.0.0.1:{port}")
        with pytest.raises(OtlpExportError, match=f"127.0.0.1:{port}/v1/traces") as err:
            await sink.write(Batch(span_rows(1)))
        assert sink.classify(err.value).retryable

    async def test_retry_sends_only_the_signal_that_failed(
        self, server: OtlpServer, make_sink: Any
    ) -> None:
        """Traces accepted and logs refused: the retry of that batch posts only the logs."""
        server.answer("/v1/logs", 503)
        sink = await make_sink(server.url)
        batch = Batch(span_rows(2) + log_rows(2))
        with pytest.raises(OtlpExportError):
            await sink.write(batch)
        await sink.write(batch)
        assert [r.path for r in server.requests] == ["/v1/traces", "/v1/logs", "/v1/logs"]
        assert (sink.spans_sent, sink.logs_sent) == (2, 2)


PIPELINE: dict[str, Any] = {
    "service": "otlp-test",
    "flush_interval": 0.05,
    "retry_attempts": 3,
    "retry_deadline": 5.0,
    "breaker_threshold": 10,
}


class TestPipeline:
    async def test_503_then_success_is_delivered_once(self, server: OtlpServer) -> None:
        """A 503 with Retry-After is retried after the wait; the span arrives once."""
        server.answer("/v1/traces", 503, headers={"Retry-After": "1"})
        atrace.configure(sink=OtlpSink(server.url, timeout=2), **PIPELINE)
        async with atrace.span("checkout", order=1):
            pass
        await wait_until(lambda: atrace.metrics().written == 1, describe=atrace.metrics)
        m = atrace.metrics()
        assert (m.retries, m.dropped, m.spilled) == (1, 0, 0)
        first, second = server.to("/v1/traces")
        assert first.body == second.body
        assert [sp.name for sp in second.spans()] == ["checkout"]

    async def test_400_is_never_retried(self, server: OtlpServer) -> None:
        """A 400 is refused for good: one request, the batch kept apart as rejected."""
        server.answer("/v1/logs", 400, always=True)
        atrace.configure(sink=OtlpSink(server.url, timeout=2), **PIPELINE)
        atrace.info("refused")
        await wait_until(lambda: atrace.metrics().dropped_permanent == 1, describe=atrace.metrics)
        m = atrace.metrics()
        assert (m.retries, m.written, m.spilled) == (0, 0, 0)
        assert len(server.to("/v1/logs")) == 1

    async def test_partial_success_is_not_retried(self, server: OtlpServer) -> None:
        """A partial success counts as delivered: no retry, the sink counts the rejects."""
        server.answer("/v1/traces", 200, trace_response(1, "one too old"), {"Content-Type": PB})
        sink = OtlpSink(server.url, timeout=2)
        atrace.configure(sink=sink, **PIPELINE)
        async with atrace.span("a"):
            pass
        await wait_until(lambda: atrace.metrics().written == 1, describe=atrace.metrics)
        assert atrace.metrics().retries == 0 and sink.rejected_spans == 1
        assert len(server.to("/v1/traces")) == 1


class TestPublicSurface:
    def test_all_matches_the_module(self) -> None:
        """__all__ names the public names the module defines, and the error users catch."""
        public = {
            name
            for name, value in vars(sink_module).items()
            if not name.startswith("_")
            and callable(value)
            and getattr(value, "__module__", None) == sink_module.__name__
        }
        assert public <= set(sink_module.__all__)
        assert all(hasattr(sink_module, name) for name in sink_module.__all__)

    def test_export_error_is_the_sink_http_error(self) -> None:
        """OtlpExportError is SinkHTTPError under its old name: catching either catches both."""
        assert OtlpExportError is SinkHTTPError
