"""What OpenTelemetry sends comes back as it was sent: span kind, W3C trace state and flags,
status and its message, times to the nanosecond; through the collector, its query API and
atrace's own OTLP encoding, compared field by field with the official proto classes."""

from __future__ import annotations

import gzip
import time
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from _collector import CollectorServer, collector_server  # noqa: F401
from atrace._formats.otlp import traces_request
from atrace._records import COLUMNS

# An hour ago, with nanoseconds that a microsecond timestamp would lose (…789).
START = (time.time_ns() // 10**9 - 3600) * 10**9 + 123_456_789
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
STATUS = trace_pb2.Status

# (name, kind, trace_state, flags, status code, status message)
SPANS = [
    ("internal", trace_pb2.Span.SPAN_KIND_INTERNAL, "", 0x01, STATUS.STATUS_CODE_UNSET, ""),
    ("server", trace_pb2.Span.SPAN_KIND_SERVER, "rojo=00f067aa0ba902b7", 0x03, 1, ""),
    ("client", trace_pb2.Span.SPAN_KIND_CLIENT, "congo=t61rcWkgMzE,rojo=1", 0x01, 2, "gave up"),
    ("producer", trace_pb2.Span.SPAN_KIND_PRODUCER, "", 0x00, 0, ""),
    ("consumer", trace_pb2.Span.SPAN_KIND_CONSUMER, "tenant@vendor=x", 0x02, 2, ""),
]


def _request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "otel-app"
    spans = rs.scope_spans.add().spans
    for i, (name, kind, state, flags, code, message) in enumerate(SPANS):
        sp = spans.add()
        sp.trace_id = TRACE
        sp.span_id = bytes([0, 0, 0, 0, 0, 0, 0, i + 1])
        sp.name = name
        sp.kind = kind
        sp.trace_state = state
        # OTLP's flags: the W3C byte, and bit 8 "whether the parent is remote is known".
        sp.flags = flags | 0x100
        sp.start_time_unix_nano = START + i * 1_000_001
        sp.end_time_unix_nano = START + i * 1_000_001 + 987_654_321
        sp.status.code = code
        sp.status.message = message
    return request


@pytest.mark.parametrize("gzipped", [False, True])
async def test_span_context_and_status_round_trip(
    collector_server: CollectorServer,  # noqa: F811
    gzipped: bool,
) -> None:
    """OTLP protobuf in → PostgreSQL → the query API and atrace's OTLP encoding out: kind,
    trace state, W3C flags, status code and message, start and end to the nanosecond."""
    key = await collector_server.create_key("otel")
    body = _request().SerializeToString()
    headers = {"Content-Encoding": "gzip"} if gzipped else None
    resp = await collector_server.post(
        "/v1/traces",
        gzip.compress(body) if gzipped else body,
        key,
        content_type="application/x-protobuf",
        headers=headers,
    )
    assert resp.status == 200, resp

    found = await collector_server.request("GET", "/v1/search?kind=span&limit=100", key=key)
    assert found.status == 200, found
    by_name = {r["name"]: r for r in found.json()["records"]}
    assert set(by_name) == {name for name, *_ in SPANS}
    names = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
    for i, (name, kind, state, flags, code, message) in enumerate(SPANS):
        rec = by_name[name]
        assert rec["ts"] == START + i * 1_000_001, name  # exact, below the microsecond
        assert rec["duration_ns"] == 987_654_321
        assert rec["span_kind"] == names[kind]
        assert rec["trace_state"] == (state or None)
        assert rec["trace_flags"] == flags  # sent with bit 8 set: 0 is a value
        assert rec["status"] == {0: 0, 1: 1, 2: 2}[code]
        assert rec["status_message"] == (message or None)
        assert rec["error_message"] is None  # the status message is not an exception's

    server = await collector_server.request("GET", "/v1/search?span_kind=server", key=key)
    assert [r["name"] for r in server.json()["records"]] == ["server"]
    refused = await collector_server.request("GET", "/v1/search?span_kind=sideways", key=key)
    assert refused.status == 400 and refused.json()["field"] == "span_kind"

    # Stored rows, read back with their nanoseconds, out through atrace's OTLP encoder.
    stored = await collector_server.fetch(
        f"SELECT {', '.join(COLUMNS)}, ts_frac FROM {{schema}}.records WHERE project = 'otel'"
    )
    rows = [(r["ts"] + (r["ts_frac"] or 0), *tuple(r)[1 : len(COLUMNS)]) for r in stored]
    out = traces_request(rows)
    sent = {sp.name: sp for sp in _request().resource_spans[0].scope_spans[0].spans}
    again = [sp for rs in out.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    assert len(again) == len(SPANS)
    for sp in again:
        want = sent[sp.name]
        assert sp.kind == want.kind, sp.name
        assert sp.trace_state == want.trace_state, sp.name
        assert sp.flags & 0xFF == want.flags & 0xFF, sp.name
        assert sp.start_time_unix_nano == want.start_time_unix_nano, sp.name
        assert sp.end_time_unix_nano == want.end_time_unix_nano, sp.name
        assert sp.status.code == want.status.code, sp.name
        assert sp.status.message == want.status.message, sp.name
        assert not [e for e in sp.events if e.name == "exception"], sp.name


def test_an_error_status_without_an_exception_exports_no_exception_event() -> None:
    """A failed span with a status message and no exception goes out as an error status with
    that message and no ``exception`` event; one with an exception gets the event, and its
    status message says the exception as OpenTelemetry's SDKs do."""
    base: list[Any] = [None] * len(COLUMNS)
    base[:8] = [START, 3, 40, TRACE.hex(), 7, None, 1000, 2]
    base[COLUMNS.index("service")] = "svc"
    base[COLUMNS.index("name")] = "op"
    plain = list(base)
    plain[COLUMNS.index("status_message")] = "quota exhausted"
    raised = list(base)
    raised[COLUMNS.index("span_id")] = 8
    raised[COLUMNS.index("error_type")] = "ValueError"
    raised[COLUMNS.index("error_message")] = "bad order"
    out = traces_request([tuple(plain), tuple(raised)])
    spans = {sp.span_id[-1]: sp for sp in out.resource_spans[0].scope_spans[0].spans}
    assert spans[7].status.code == STATUS.STATUS_CODE_ERROR
    assert spans[7].status.message == "quota exhausted"
    assert list(spans[7].events) == []
    assert spans[8].status.message == "ValueError: bad order"
    assert [e.name for e in spans[8].events] == ["exception"]
