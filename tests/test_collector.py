"""The collector end to end: real clients, the real app, rows read back from PostgreSQL."""

# The fixture is imported from its helper module, so each test parameter redefines that name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import gzip
import signal
import socket
import subprocess
import time
from typing import Any

import aiohttp
import orjson
import pytest

import atrace
from _collector import (
    CollectorServer,
    atrace_command,
    child_env,
    collector_server,  # noqa: F401
    make_rows,
    native_body,
    wait_until,
)
from _pg import PgServer
from _proxy import TCPProxy
from atrace._emit.context import format_traceparent, parse_traceparent
from atrace._emit.ids import format_span_id, parse_span_id
from atrace._records import COLUMNS
from atrace.collector._app import KEYS
from atrace.collector._ingest import INGEST

# What a stored record looks like next to the row that was posted.
_TEXT_COLUMNS = COLUMNS[8:]

# Timestamps of the OTLP bodies: recent, inside the collector's window of accepted times.
_NOW_S = int(time.time())


def _as_row(record: Any) -> tuple[Any, ...]:
    values = []
    for name in COLUMNS:
        value = record[name]
        if name == "trace_id" and value is not None:
            value = value.hex
        values.append(value)
    return tuple(values)


def _same_attrs(a: bytes | None, b: bytes | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(orjson.loads(a) == orjson.loads(b))


def _assert_stored(records: list[Any], rows: list[tuple[Any, ...]]) -> None:
    assert len(records) == len(rows)
    stored = sorted((_as_row(r) for r in records), key=lambda r: (r[0], r[4] or 0, r[1]))
    posted = sorted(rows, key=lambda r: (r[0], r[4] or 0, r[1]))
    for got, want in zip(stored, posted, strict=True):
        attrs = COLUMNS.index("attrs")
        assert got[:attrs] == want[:attrs]
        assert got[attrs + 1 :] == want[attrs + 1 :]
        assert _same_attrs(got[attrs], want[attrs])


class TestNativeIngest:
    async def test_msgpack_batch_stored_with_keys_project(
        self, collector_server: CollectorServer
    ) -> None:
        """A msgpack batch is answered 200 with the count and stored under the key's project."""
        key = await collector_server.create_key("alpha")
        rows = make_rows(40)
        _, body = native_body(rows)
        resp = await collector_server.post(
            "/v1/ingest", body, key, content_type="application/msgpack"
        )
        assert resp.status == 200, resp
        assert resp.json() == {"accepted": 40, "duplicate": False}
        records = await collector_server.records()
        assert {r["project"] for r in records} == {"alpha"}
        _assert_stored(records, rows)

    async def test_json_batch_stored(self, collector_server: CollectorServer) -> None:
        """A JSON batch is stored the same way, attributes and all."""
        key = await collector_server.create_key("alpha")
        rows = make_rows(25)
        _, body = native_body(rows, "json")
        resp = await collector_server.post("/v1/ingest", body, key, content_type="application/json")
        assert resp.status == 200, resp
        _assert_stored(await collector_server.records("alpha"), rows)

    async def test_default_content_type_is_msgpack(self, collector_server: CollectorServer) -> None:
        """A body sent without a Content-Type is read as msgpack; X-API-Key works as well."""
        key = await collector_server.create_key("alpha")
        _, body = native_body(make_rows(3))
        resp = await collector_server.post("/v1/ingest", body, None, headers={"X-API-Key": key})
        assert resp.status == 200, resp
        assert await collector_server.count("alpha") == 3

    async def test_same_batch_twice_stored_once(self, collector_server: CollectorServer) -> None:
        """Posting the same batch again answers 200 as a duplicate and writes nothing more."""
        key = await collector_server.create_key("alpha")
        _, body = native_body(make_rows(10))
        first = await collector_server.post("/v1/ingest", body, key)
        second = await collector_server.post("/v1/ingest", body, key)
        assert (first.status, second.status) == (200, 200)
        assert second.json() == {"accepted": 10, "duplicate": True}
        assert await collector_server.count() == 10
        ledger = await collector_server.fetch("SELECT project, records FROM {schema}.batches")
        assert [tuple(r) for r in ledger] == [("alpha", 10)]
        assert collector_server.metrics.value("duplicates", endpoint="ingest") == 1

    async def test_concurrent_duplicates_stored_once(
        self, collector_server: CollectorServer
    ) -> None:
        """The same batch posted by several clients at once is stored exactly once."""
        key = await collector_server.create_key("alpha")
        _, body = native_body(make_rows(200))
        answers = await asyncio.gather(
            *(collector_server.post("/v1/ingest", body, key) for _ in range(6))
        )
        assert [a.status for a in answers] == [200] * 6
        assert sum(not a.json()["duplicate"] for a in answers) == 1
        assert await collector_server.count() == 200

    async def test_gzip_body(self, collector_server: CollectorServer) -> None:
        """A gzip-encoded body is inflated and stored."""
        key = await collector_server.create_key("alpha")
        rows = make_rows(30)
        _, body = native_body(rows)
        resp = await collector_server.post(
            "/v1/ingest", gzip.compress(body), key, headers={"Content-Encoding": "gzip"}
        )
        assert resp.status == 200, resp
        _assert_stored(await collector_server.records(), rows)

    async def test_empty_batch(self, collector_server: CollectorServer) -> None:
        """A batch with no rows is accepted and writes nothing, not even a ledger entry."""
        key = await collector_server.create_key("alpha")
        _, body = native_body([])
        resp = await collector_server.post("/v1/ingest", body, key)
        assert resp.status == 200
        assert resp.json()["accepted"] == 0
        assert await collector_server.fetch("SELECT * FROM {schema}.batches") == []

    async def test_published_to_tail(self, collector_server: CollectorServer) -> None:
        """Committed rows are handed to the live tail with the key's project."""
        from atrace.collector._state import TAIL

        assert collector_server.app is not None
        hub = collector_server.app[TAIL]
        seen: list[tuple[str, int]] = []
        original = hub.publish

        def spy(project: str, rows: list[Any]) -> None:
            seen.append((project, len(rows)))
            original(project, rows)

        hub.publish = spy
        try:
            key = await collector_server.create_key("alpha")
            _, body = native_body(make_rows(5))
            assert (await collector_server.post("/v1/ingest", body, key)).status == 200
            assert (await collector_server.post("/v1/ingest", body, key)).status == 200
        finally:
            hub.publish = original
        assert seen == [("alpha", 5)]


class TestHttpSinkPipeline:
    async def test_pipeline_through_collector(self, collector_server: CollectorServer) -> None:
        """atrace with an HttpSink → collector → PostgreSQL keeps a trace carried by traceparent."""
        from atrace.sinks.http import HttpSink

        key = await collector_server.create_key("shop")
        sink = HttpSink(collector_server.url, api_key=key)
        atrace.configure(service="checkout", sink=sink, flush_interval=0.05)
        async with atrace.span("client-call") as client:
            header = format_traceparent()
            atrace.info("calling the server")
        assert header is not None
        remote = parse_traceparent(header)
        assert remote is not None
        # The far side of the call: a handler continuing the client's trace.
        with atrace.trace_context(remote.trace_id, parent_id=remote.span_id):
            async with atrace.span("handler"):
                atrace.info("handled")
        assert await atrace.aflush(timeout=20)
        records = await collector_server.records("shop")
        by_name = {r["name"]: r for r in records if r["kind"] in (2, 3)}
        assert set(by_name) >= {"client-call", "handler"}
        trace_ids = {r["trace_id"].hex for r in records}
        assert trace_ids == {client.trace_id}
        assert by_name["handler"]["parent_id"] == by_name["client-call"]["span_id"]
        assert format_span_id(by_name["client-call"]["span_id"]) == header.split("-")[2]
        assert {r["message"] for r in records if r["kind"] == 0} == {
            "calling the server",
            "handled",
        }
        assert {r["project"] for r in records} == {"shop"}


# ---- OTLP ------------------------------------------------------------------------------------


def _signed(span_id: int) -> int:
    value = parse_span_id(f"{span_id:016x}")
    assert value is not None
    return value


class TestOtlp:
    async def test_sdk_spans(self, collector_server: CollectorServer) -> None:
        """Spans from the OpenTelemetry SDK's OTLP/HTTP exporter are stored with ids, names,
        durations, statuses and attributes intact."""
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.trace import Status, StatusCode

        key = await collector_server.create_key("otel")
        provider = TracerProvider(resource=Resource.create({"service.name": "orders"}))
        exporter = OTLPSpanExporter(
            endpoint=f"{collector_server.url}/v1/traces",
            headers={"Authorization": f"Bearer {key}"},
            compression=Compression.Gzip,
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        finished: list[Any] = []

        def work() -> None:
            with tracer.start_as_current_span("parent", attributes={"order.id": 42}) as parent:
                with tracer.start_as_current_span("child") as child:
                    child.set_attribute("sql", "SELECT 1")
                    child.set_status(Status(StatusCode.ERROR, "boom"))
                finished.extend([parent, child])
            provider.shutdown()

        # The exporter is synchronous: it runs in a thread while this loop serves it.
        await asyncio.to_thread(work)
        parent, child = finished
        records = await collector_server.records("otel")
        spans = {r["name"]: r for r in records if r["kind"] == 3}
        assert set(spans) == {"parent", "child"}
        for name, sdk_span in (("parent", parent), ("child", child)):
            row = spans[name]
            ctx = sdk_span.get_span_context()
            assert row["trace_id"].hex == f"{ctx.trace_id:032x}"
            assert row["span_id"] == _signed(ctx.span_id)
            assert row["duration_ns"] == sdk_span.end_time - sdk_span.start_time
            assert row["ts"] // 1000 == sdk_span.start_time // 1000
            assert row["service"] == "orders"
        assert spans["child"]["parent_id"] == spans["parent"]["span_id"]
        assert spans["parent"]["parent_id"] is None
        assert spans["child"]["status"] == 2
        assert spans["parent"]["status"] in (0, 1)
        assert orjson.loads(spans["parent"]["attrs"])["order.id"] == 42
        assert orjson.loads(spans["child"]["attrs"])["sql"] == "SELECT 1"
        assert collector_server.metrics.value("records", endpoint="otlp_traces") == 2

    async def test_sdk_logs(self, collector_server: CollectorServer) -> None:
        """Log records from the SDK's OTLP/HTTP log exporter are stored with level, message,
        logger name, trace link and attributes."""
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        key = await collector_server.create_key("otel")
        provider = LoggerProvider(resource=Resource.create({"service.name": "billing"}))
        provider.add_log_record_processor(
            SimpleLogRecordProcessor(
                OTLPLogExporter(
                    endpoint=f"{collector_server.url}/v1/logs", headers={"X-API-Key": key}
                )
            )
        )
        logger = provider.get_logger("billing.app")
        tracer = TracerProvider().get_tracer("test")
        ids: list[Any] = []

        def work() -> None:
            try:
                logger.emit(
                    severity_number=SeverityNumber.INFO,
                    severity_text="INFO",
                    body="plain info",
                    attributes={"user": "ann"},
                )
                with tracer.start_as_current_span("in-span") as span:
                    ids.append(span.get_span_context())
                    logger.emit(
                        severity_number=SeverityNumber.ERROR,
                        severity_text="ERROR",
                        body="failed in span",
                    )
            finally:
                provider.shutdown()

        await asyncio.to_thread(work)
        records = await collector_server.records("otel")
        logs = {r["message"]: r for r in records}
        assert set(logs) == {"plain info", "failed in span"}
        assert all(r["kind"] == 0 and r["service"] == "billing" for r in records)
        assert {r["name"] for r in records} == {"billing.app"}
        assert logs["plain info"]["level"] == 20
        assert logs["failed in span"]["level"] == 40
        assert orjson.loads(logs["plain info"]["attrs"])["user"] == "ann"
        ctx = ids[0]
        assert logs["failed in span"]["trace_id"].hex == f"{ctx.trace_id:032x}"
        assert logs["failed in span"]["span_id"] == _signed(ctx.span_id)
        assert logs["plain info"]["trace_id"] is None

    async def test_protobuf_answer_and_retry_stored_once(
        self, collector_server: CollectorServer
    ) -> None:
        """A protobuf export is answered with an empty ExportTraceServiceResponse; the same
        request sent again (an SDK's retry) stores nothing twice."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        key = await collector_server.create_key("otel")
        body = _otlp_traces_json_body()
        pb = _json_to_protobuf(body)
        for _ in range(2):
            resp = await collector_server.post(
                "/v1/traces", pb, key, content_type="application/x-protobuf"
            )
            assert resp.status == 200, resp
            assert resp.headers["Content-Type"].startswith("application/x-protobuf")
            answer = ExportTraceServiceResponse()
            answer.ParseFromString(resp.body)
            assert not answer.HasField("partial_success")
        assert await collector_server.count("otel") == 1
        # The same spans sent under another project are that project's own.
        other = await collector_server.create_key("other")
        resp = await collector_server.post(
            "/v1/traces", pb, other, content_type="application/x-protobuf"
        )
        assert resp.status == 200
        assert await collector_server.count("other") == 1

    async def test_json_export(self, collector_server: CollectorServer) -> None:
        """An OTLP/JSON export is stored and answered with ``{}`` as JSON."""
        key = await collector_server.create_key("otel")
        resp = await collector_server.post(
            "/v1/traces", _otlp_traces_json_body(), key, content_type="application/json"
        )
        assert resp.status == 200, resp
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.json() == {}
        (row,) = await collector_server.records("otel")
        assert row["name"] == "json-span"
        assert row["trace_id"].hex == "5b8efff798038103d269b633813fc60c"
        assert row["span_id"] == _signed(0xEEE19B7EC3C1B174)
        assert row["duration_ns"] == 1_000_000
        assert row["status"] == 2
        assert orjson.loads(row["attrs"])["http.method"] == "GET"

    async def test_logs_json_export(self, collector_server: CollectorServer) -> None:
        """An OTLP/JSON logs export is stored and answered with ``{}``."""
        key = await collector_server.create_key("otel")
        doc = {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]
                    },
                    "scopeLogs": [
                        {
                            "scope": {"name": "app"},
                            "logRecords": [
                                {
                                    "timeUnixNano": str(_NOW_S * 10**9),
                                    "severityNumber": 17,
                                    "body": {"stringValue": "disk full"},
                                }
                            ],
                        }
                    ],
                }
            ]
        }
        resp = await collector_server.post(
            "/v1/logs", orjson.dumps(doc), key, content_type="application/json"
        )
        assert resp.status == 200, resp
        assert resp.json() == {}
        (row,) = await collector_server.records("otel")
        assert (row["message"], row["level"], row["service"]) == ("disk full", 40, "web")


def _otlp_traces_json_body() -> bytes:
    doc = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "json-span",
                                "kind": 2,
                                "startTimeUnixNano": str(_NOW_S * 10**9),
                                "endTimeUnixNano": str(_NOW_S * 10**9 + 1_000_000),
                                "attributes": [
                                    {"key": "http.method", "value": {"stringValue": "GET"}}
                                ],
                                "status": {"code": 2, "message": "failed"},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    return orjson.dumps(doc)


def _json_to_protobuf(body: bytes) -> bytes:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    doc = orjson.loads(body)
    # Protobuf's JSON mapping wants ids in base64; OTLP/JSON puts them in hex.
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for field in ("traceId", "spanId"):
                    import base64

                    span[field] = base64.b64encode(bytes.fromhex(span[field])).decode()
    message = json_format.ParseDict(doc, ExportTraceServiceRequest())
    return bytes(message.SerializeToString())


# ---- health, metrics ---------------------------------------------------------------------------


class TestHealthAndMetrics:
    async def test_healthz_needs_no_key(self, collector_server: CollectorServer) -> None:
        """/healthz answers 200 without a key while PostgreSQL is reachable."""
        resp = await collector_server.request("GET", "/healthz")
        assert resp.status == 200
        body = resp.json()
        assert body["status"] == "ok"
        assert body["tail"]["status"] == "ok" and body["tail"]["restarts"] == 0

    async def test_metrics_move(self, collector_server: CollectorServer) -> None:
        """/metrics (no key) counts requests by route and status, ingested records, errors and
        latency."""
        key = await collector_server.create_key("alpha")
        _, body = native_body(make_rows(12))
        assert (await collector_server.post("/v1/ingest", body, key)).status == 200
        assert (await collector_server.post("/v1/ingest", b"\xc1", key)).status == 400
        assert (await collector_server.post("/v1/ingest", body, "nope")).status == 401
        resp = await collector_server.request("GET", "/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.body.decode()
        lines = set(text.splitlines())
        assert 'atrace_collector_records_ingested_total{endpoint="ingest"} 12' in lines
        assert (
            'atrace_collector_requests_total{route="/v1/ingest",method="POST",status="200"} 1'
            in lines
        )
        assert (
            'atrace_collector_requests_total{route="/v1/ingest",method="POST",status="400"} 1'
            in lines
        )
        assert 'atrace_collector_errors_total{reason="unauthorized"} 1' in lines
        assert 'atrace_collector_errors_total{reason="bad_request"} 1' in lines
        assert 'atrace_collector_request_duration_seconds_count{route="/v1/ingest"} 3' in lines
        assert (
            'atrace_collector_request_duration_seconds_bucket{route="/v1/ingest",le="+Inf"} 3'
            in lines
        )
        assert "# TYPE atrace_collector_request_duration_seconds histogram" in lines

    async def test_unknown_path_is_json(self, collector_server: CollectorServer) -> None:
        """An unknown path or a wrong method answers with a JSON error body."""
        key = await collector_server.create_key("alpha")
        missing = await collector_server.request("GET", "/v1/nothing", key=key)
        assert missing.status == 404
        assert "error" in missing.json()
        wrong = await collector_server.request("GET", "/v1/ingest", key=key)
        assert wrong.status == 405
        assert "error" in wrong.json()
        assert "POST" in wrong.headers["Allow"]


# ---- keys from the command line ----------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*atrace_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )


class TestKeysCommand:
    async def test_create_list_revoke(self, collector_server: CollectorServer) -> None:
        """`atrace keys create` prints a working key once; `list` never shows secrets; `revoke`
        makes it stop working."""
        dsn, schema = collector_server.db_dsn, collector_server.schema
        done = await asyncio.to_thread(
            _cli, "keys", "create", "--project", "cli", "--name", "ci", "--dsn", dsn,
            "--schema", schema,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        key = done.stdout.strip()
        assert key.startswith("atk_")
        key_id, secret = key[4:].split("_", 1)
        _, body = native_body(make_rows(2))
        assert (await collector_server.post("/v1/ingest", body, key)).status == 200
        listing = await asyncio.to_thread(_cli, "keys", "list", "--dsn", dsn, "--schema", schema)
        assert listing.returncode == 0, listing.stderr
        assert key_id in listing.stdout and "cli" in listing.stdout and "active" in listing.stdout
        assert secret not in listing.stdout and secret not in listing.stderr
        revoked = await asyncio.to_thread(
            _cli, "keys", "revoke", key_id, "--dsn", dsn, "--schema", schema
        )
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout.strip() == f"revoked {key_id}"
        again = await asyncio.to_thread(
            _cli, "keys", "list", "--project", "cli", "--dsn", dsn, "--schema", schema
        )
        assert "revoked" in again.stdout
        # This process forgets the cached key at once when told (another process: within ttl).
        assert collector_server.app is not None
        collector_server.app[KEYS].forget(key_id)
        assert (await collector_server.post("/v1/ingest", body, key)).status == 401

    async def test_revoke_unknown(self, collector_server: CollectorServer) -> None:
        """Revoking a key that does not exist is an error (exit 1)."""
        done = await asyncio.to_thread(
            _cli, "keys", "revoke", "0123456789abcdef", "--dsn", collector_server.db_dsn,
            "--schema", collector_server.schema,
        )  # fmt: skip
        assert done.returncode == 1
        assert "no API key" in done.stderr

    def test_bad_project_name(self, pg_schema: tuple[str, str]) -> None:
        """A project name with spaces is refused with a one-line error."""
        dsn, schema = pg_schema
        done = _cli("keys", "create", "--project", "a b", "--dsn", dsn, "--schema", schema)
        assert done.returncode == 2
        assert done.stderr.startswith("atrace: project=") and "Traceback" not in done.stderr


# ---- shutdown ----------------------------------------------------------------------------------


class TestGracefulShutdown:
    async def test_request_in_flight_completes(
        self, pg_server: PgServer, pg_schema: tuple[str, str]
    ) -> None:
        """Shutting down while a request waits on PostgreSQL lets it finish and be stored."""
        dsn, schema = pg_schema
        async with TCPProxy(pg_server.host, pg_server.port) as proxy:
            server = CollectorServer(dsn, schema, app_dsn=proxy.url_for(dsn))
            await server.start()
            try:
                key = await server.create_key("alpha")
                _, warm = native_body(make_rows(5))
                assert (await server.post("/v1/ingest", warm, key)).status == 200
                assert server.app is not None
                admission = server.app[INGEST].admission
                proxy.pause()  # the next write waits on the database
                _, body = native_body(make_rows(50))
                answer = asyncio.ensure_future(server.post("/v1/ingest", body, key))

                async def in_flight() -> bool:
                    return admission.records == 50

                await wait_until(in_flight)
                stopping = asyncio.ensure_future(server.stop())
                await asyncio.sleep(0.2)
                assert not stopping.done()  # waiting for the request in flight
                proxy.resume()
                resp = await answer
                await stopping
            finally:
                proxy.resume()
                await server.stop()
        assert resp.status == 200, resp
        assert await server.count() == 55

    async def test_tail_after_the_hub_stopped_is_503(
        self, collector_server: CollectorServer
    ) -> None:
        """Once the live tail has stopped, asking for a tail is 503, counted as stopping."""
        from atrace.collector._state import TAIL

        key = await collector_server.create_key("alpha")
        assert collector_server.app is not None
        await collector_server.app[TAIL].stop()
        resp = await collector_server.request("GET", "/v1/tail", key=key)
        assert resp.status == 503
        assert resp.json() == {"error": "the collector is stopping"}
        assert collector_server.metrics.value("errors", reason="unavailable_stopping") == 1


class TestServeCommand:
    async def test_serve_ingest_then_sigterm(
        self, pg_server: PgServer, pg_schema: tuple[str, str]
    ) -> None:
        """`atrace serve` prints its address, stores what it is sent, and at SIGTERM finishes a
        request in flight, then exits 0."""
        dsn, schema = pg_schema
        async with TCPProxy(pg_server.host, pg_server.port) as proxy:
            proc = await asyncio.create_subprocess_exec(
                *atrace_command(), "serve", "--dsn", proxy.url_for(dsn), "--schema", schema,
                "--port", "0",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(),
            )  # fmt: skip
            try:
                assert proc.stdout is not None and proc.stderr is not None
                line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
                assert line.startswith("atrace collector listening on http://127.0.0.1:"), (
                    line + (await proc.stderr.read()).decode()
                )
                url = line.split()[4]
                helper = CollectorServer(dsn, schema)  # only for its database helpers
                key = await helper.create_key("cli")
                headers = {"Authorization": f"Bearer {key}"}
                _, body = native_body(make_rows(20))
                _, slow = native_body(make_rows(30))
                async with aiohttp.ClientSession() as session:
                    async with session.post(f"{url}/v1/ingest", data=body, headers=headers) as r:
                        assert r.status == 200, await r.text()
                    async with session.get(f"{url}/healthz") as r:
                        assert r.status == 200
                    proxy.pause()
                    answer = asyncio.ensure_future(
                        session.post(f"{url}/v1/ingest", data=slow, headers=headers)
                    )

                    async def in_flight() -> bool:
                        async with session.get(f"{url}/metrics") as r:
                            text = await r.text()
                        return "atrace_collector_inflight_records 30" in text.splitlines()

                    await wait_until(in_flight)
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.sleep(0.3)
                    assert proc.returncode is None  # still finishing the request
                    proxy.resume()
                    resp = await answer
                    assert resp.status == 200, await resp.text()
                    resp.release()
                code = await asyncio.wait_for(proc.wait(), 30)
                assert code == 0, (await proc.stderr.read()).decode()
                assert await helper.count("cli") == 50
            finally:
                proxy.resume()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    async def test_port_in_use(self, pg_schema: tuple[str, str]) -> None:
        """A port another socket holds is a one-line error with exit code 2."""
        dsn, schema = pg_schema
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = await asyncio.to_thread(
                _cli, "serve", "--dsn", dsn, "--schema", schema, "--port", str(port)
            )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"atrace: port={port}: cannot listen on 127.0.0.1:{port}")
        assert "Traceback" not in done.stderr


def test_bad_schema_refused() -> None:
    """make_app refuses a schema name that is not a plain identifier."""
    from atrace.collector._app import make_app
    from atrace.errors import ConfigError

    with pytest.raises(ConfigError, match="schema"):
        make_app("postgresql://x@127.0.0.1:1/x", schema="x; DROP TABLE y")


def test_module_all() -> None:
    """Each collector module's __all__ names what it defines."""
    from atrace.collector import _app as app
    from atrace.collector import _auth as auth
    from atrace.collector import _ingest as ingest
    from atrace.collector import _limits as limits
    from atrace.collector import _prometheus as metrics

    for module in (app, auth, ingest, limits, metrics):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)


class TestDatabaseErrors:
    def test_only_errors_worth_retrying_become_unavailable(self) -> None:
        """Around a PostgreSQL call, a lost connection becomes Unavailable (503); a bug, or data
        PostgreSQL refuses, goes on as it is (a logged 500, or its own status)."""
        import asyncpg

        from atrace.collector._state import database
        from atrace.errors import Unavailable

        with pytest.raises(Unavailable) as lost, database():
            raise asyncpg.ConnectionDoesNotExistError("connection was closed")
        assert lost.value.reason == "database"
        assert str(lost.value).startswith("database unavailable: ")
        for error in (KeyError("bug"), asyncpg.UniqueViolationError("duplicate key")):
            with pytest.raises(type(error)), database():
                raise error
