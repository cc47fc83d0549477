"""The OTLP data model kept whole: what an OpenTelemetry SDK sends to ``atrace serve`` comes back
out of atrace's OTLP encoders field for field and type for type (resources and instrumentation
scopes, span events, links and flags, the exception event's own time and attributes, log
severity number and text, observed time, typed bodies and event names, bytes and non-finite
doubles), through protobuf and JSON, gzip and not. Built and read with the official
``opentelemetry-proto`` classes."""

from __future__ import annotations

import base64
import gzip
import math
import time
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from _collector import CollectorServer, collector_server  # noqa: F401
from atrace._formats import otlp
from atrace._records import COLUMNS

T0 = (time.time_ns() // 10**9 - 1800) * 10**9 + 111_222_333
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
OTHER_TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
NAN_BITS = "nan"  # what a NaN compares as, below: NaN never equals itself


def _set(av: common_pb2.AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        av.bool_value = value
    elif isinstance(value, int):
        av.int_value = value
    elif isinstance(value, float):
        av.double_value = value
    elif isinstance(value, bytes):
        av.bytes_value = value
    elif isinstance(value, str):
        av.string_value = value
    elif isinstance(value, list):
        av.array_value.SetInParent()
        for item in value:
            _set(av.array_value.values.add(), item)
    else:
        av.kvlist_value.SetInParent()
        _fill(av.kvlist_value.values, value)


def _fill(target: Any, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        kv = target.add()
        kv.key = key
        _set(kv.value, value)


def py(av: common_pb2.AnyValue) -> Any:
    """An AnyValue as a comparable Python value, its type kept (1.0 stays a float)."""
    which = av.WhichOneof("value")
    if which == "array_value":
        return [py(v) for v in av.array_value.values]
    if which == "kvlist_value":
        return attrs_of(av.kvlist_value.values)
    if which == "double_value":
        value = av.double_value
        return ("double", NAN_BITS if math.isnan(value) else value)
    if which is None:
        return None
    return (which, getattr(av, which))


def attrs_of(kvs: Any) -> dict[str, Any]:
    return {kv.key: py(kv.value) for kv in kvs}


# Every attribute type OTLP has, and the values JSON cannot hold.
ATTRS = {
    "text": "plain",
    "count": 42,
    "big": -(2**63),
    "ratio": 0.25,
    "whole": 1.0,  # a double, not an int
    "ok": True,
    "blob": b"\x00\xffbinary",
    "nan": math.nan,
    "inf": math.inf,
    "minus_inf": -math.inf,
    "list": [1, "two", 3.5, b"\x01", [math.inf]],
    "map": {"inner": b"\x02\x03", "n": 7, "deeper": {"x": -math.inf}},
}


RESOURCE = {
    "service.name": "otel-app",
    "service.version": "2.4.1",
    "deployment.environment.name": "staging",
    "host.name": "web-3",
    "process.pid": 4242,
    "telemetry.sdk.name": "opentelemetry",
    "k8s.pod.uid": b"\x12\x34",  # bytes in a resource too
    "ratio": math.nan,
}
RESOURCE_URL = "https://opentelemetry.io/schemas/1.26.0"
SCOPE_URL = "https://opentelemetry.io/schemas/1.24.0"


def _origin(envelope: Any, scoped: Any, name: str) -> None:
    _fill(envelope.resource.attributes, RESOURCE)
    envelope.schema_url = RESOURCE_URL
    scoped.scope.name, scoped.scope.version = name, "0.52.1"
    _fill(scoped.scope.attributes, {"library.kind": "http", "weight": 1.0})
    scoped.schema_url = SCOPE_URL


def traces() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    ss = rs.scope_spans.add()
    _origin(rs, ss, "@opentelemetry/instrumentation-http")
    spans = ss.spans
    # A second scope of the same resource, with nothing in it but its name.
    other = rs.scope_spans.add()
    other.scope.name = "orders.db"
    lone = other.spans.add()
    lone.trace_id, lone.span_id = TRACE, bytes.fromhex("3333333333333333")
    lone.name, lone.start_time_unix_nano, lone.end_time_unix_nano = "SELECT", T0 + 6, T0 + 7

    server = spans.add()
    server.trace_id, server.span_id = TRACE, bytes.fromhex("00f067aa0ba902b7")
    server.name, server.kind = "GET /orders", trace_pb2.Span.SPAN_KIND_SERVER
    server.trace_state, server.flags = "congo=t61rcWkgMzE", 0x301  # remote parent, sampled
    server.start_time_unix_nano, server.end_time_unix_nano = T0, T0 + 9_000_001
    _fill(server.attributes, ATTRS)
    miss = server.events.add()
    miss.time_unix_nano, miss.name = T0 + 1_000_007, "cache.miss"
    _fill(miss.attributes, {"key": "k1", "raw": b"\x09", "score": math.nan})
    retry = server.events.add()
    retry.time_unix_nano, retry.name = T0 + 2_000_003, "retry"
    link = server.links.add()
    link.trace_id, link.span_id = OTHER_TRACE, bytes.fromhex("b7ad6b7169203331")
    link.trace_state, link.flags = "rojo=00f067aa0ba902b7", 0x101
    _fill(link.attributes, {"messaging.batch.index": 3, "token": b"\xaa"})
    bare = server.links.add()
    bare.trace_id, bare.span_id = TRACE, bytes.fromhex("0000000000000001")

    client = spans.add()
    client.trace_id, client.span_id = TRACE, bytes.fromhex("1111111111111111")
    client.parent_span_id = server.span_id
    client.name, client.kind = "POST /pay", trace_pb2.Span.SPAN_KIND_CLIENT
    client.flags = 0x100
    client.start_time_unix_nano, client.end_time_unix_nano = T0 + 3_000_000, T0 + 8_000_000
    client.status.code, client.status.message = trace_pb2.Status.STATUS_CODE_ERROR, "gave up"
    failure = client.events.add()
    failure.time_unix_nano, failure.name = T0 + 7_500_009, "exception"
    _fill(
        failure.attributes,
        {
            "exception.type": "TimeoutError",
            "exception.message": "no answer",
            "exception.stacktrace": "Traceback ...",
            "exception.escaped": True,
        },
    )

    handled = spans.add()
    handled.trace_id, handled.span_id = TRACE, bytes.fromhex("2222222222222222")
    handled.parent_span_id = server.span_id
    handled.name, handled.kind = "retry", trace_pb2.Span.SPAN_KIND_INTERNAL
    handled.start_time_unix_nano, handled.end_time_unix_nano = T0 + 4_000_000, T0 + 5_000_000
    handled.status.code = trace_pb2.Status.STATUS_CODE_OK
    caught = handled.events.add()
    caught.time_unix_nano, caught.name = T0 + 4_500_000, "exception"
    _fill(caught.attributes, {"exception.type": "KeyError", "exception.message": "'k1'"})
    return request


def logs() -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    sl = rl.scope_logs.add()
    _origin(rl, sl, "orders.logger")  # a logging bridge's logger name
    records = sl.log_records

    info2 = records.add()  # a severity atrace has no level of its own for
    info2.time_unix_nano, info2.observed_time_unix_nano = T0 + 10, T0 + 999_999
    info2.severity_number, info2.severity_text = 10, "Information"
    info2.body.string_value = "order placed"
    info2.trace_id, info2.span_id, info2.flags = TRACE, bytes.fromhex("00f067aa0ba902b7"), 1
    _fill(info2.attributes, {"order.id": 7, "sig": b"\x01\x02"})

    structured = records.add()  # a map body and an event name; no severity at all
    structured.time_unix_nano = structured.observed_time_unix_nano = T0 + 20
    _set(structured.body, {"user": "ann", "tags": ["a", 1.5], "raw": b"\xfe", "r": math.inf})
    structured.event_name = "app.started"

    binary = records.add()  # a bytes body, text severity only
    binary.time_unix_nano, binary.observed_time_unix_nano = T0 + 30, T0 + 30
    binary.severity_text = "WARN"
    binary.body.bytes_value = b"\x00\x01\x02"

    untimed = records.add()  # no time: the observed time stands in, and 0 goes back out
    untimed.observed_time_unix_nano = T0 + 40
    untimed.severity_number = 21
    untimed.body.double_value = -math.inf
    return request


def span_view(sp: trace_pb2.Span) -> dict[str, Any]:
    return {
        "trace_id": sp.trace_id,
        "span_id": sp.span_id,
        "parent": sp.parent_span_id,
        "name": sp.name,
        "kind": sp.kind,
        "trace_state": sp.trace_state,
        "flags": sp.flags,
        "start": sp.start_time_unix_nano,
        "end": sp.end_time_unix_nano,
        "attrs": attrs_of(sp.attributes),
        "events": [(e.time_unix_nano, e.name, attrs_of(e.attributes)) for e in sp.events],
        "links": [
            (k.trace_id, k.span_id, k.trace_state, k.flags, attrs_of(k.attributes))
            for k in sp.links
        ],
        "status": (sp.status.code, sp.status.message),
    }


def log_view(rec: Any) -> dict[str, Any]:
    return {
        "time": rec.time_unix_nano,
        "observed": rec.observed_time_unix_nano,
        "severity": (rec.severity_number, rec.severity_text),
        "body": py(rec.body),
        "attrs": attrs_of(rec.attributes),
        "trace_id": rec.trace_id,
        "span_id": rec.span_id,
        "flags": rec.flags,
        "event_name": rec.event_name,
    }


def origin_view(envelope: Any, scoped: Any) -> dict[str, Any]:
    return {
        "resource": attrs_of(envelope.resource.attributes),
        "resource_url": envelope.schema_url,
        "scope": (scoped.scope.name, scoped.scope.version, attrs_of(scoped.scope.attributes)),
        "scope_url": scoped.schema_url,
    }


def spans_of(request: ExportTraceServiceRequest) -> dict[str, dict[str, Any]]:
    out = {}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out[sp.name] = {**span_view(sp), "origin": origin_view(rs, ss)}
    return out


def logs_of(request: ExportLogsServiceRequest) -> list[dict[str, Any]]:
    out = [
        {**log_view(rec), "origin": origin_view(rl, sl)}
        for rl in request.resource_logs
        for sl in rl.scope_logs
        for rec in sl.log_records
    ]
    return sorted(out, key=lambda v: v["observed"])


# ---- OTLP/JSON, as the specification writes it: ids in hex -----------------------------------

_ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def _ids(document: Any, convert: Any) -> Any:
    if isinstance(document, dict):
        return {
            k: convert(v) if k in _ID_KEYS and isinstance(v, str) else _ids(v, convert)
            for k, v in document.items()
        }
    if isinstance(document, list):
        return [_ids(v, convert) for v in document]
    return document


def to_otlp_json(message: Any) -> bytes:
    document = json_format.MessageToDict(message)
    return orjson.dumps(_ids(document, lambda v: base64.b64decode(v).hex()))


def from_otlp_json(body: bytes, message: Any) -> Any:
    document = _ids(orjson.loads(body), lambda v: base64.b64encode(bytes.fromhex(v)).decode())
    return json_format.ParseDict(document, message)


# ---- the round trip ----------------------------------------------------------------------------


async def _stored(server: CollectorServer, project: str) -> list[tuple[Any, ...]]:
    rows = await server.fetch(
        f"SELECT {', '.join(COLUMNS)}, ts_frac FROM {{schema}}.records "
        f"WHERE project = '{project}' ORDER BY ts"
    )
    return [(r["ts"] + (r["ts_frac"] or 0), *tuple(r)[1 : len(COLUMNS)]) for r in rows]


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_every_field_round_trips(
    collector_server: CollectorServer,  # noqa: F811
    encoding: str,
    gzipped: bool,
) -> None:
    """OTLP in (protobuf or JSON, gzip or not) → PostgreSQL → atrace's OTLP encoders out (both
    encodings): every span, event, link and log record field, values and types, as sent."""
    project = f"fid-{encoding}-{gzipped}"
    key = await collector_server.create_key(project)
    sent_traces, sent_logs = traces(), logs()
    for path, message in (("/v1/traces", sent_traces), ("/v1/logs", sent_logs)):
        if encoding == "protobuf":
            body, content_type = message.SerializeToString(), "application/x-protobuf"
        else:
            body, content_type = to_otlp_json(message), "application/json"
        headers = {"Content-Encoding": "gzip"} if gzipped else None
        resp = await collector_server.post(
            path,
            gzip.compress(body) if gzipped else body,
            key,
            content_type=content_type,
            headers=headers,
        )
        assert resp.status == 200, resp

    rows = await _stored(collector_server, project)
    stored = await collector_server.fetch(
        f"SELECT resource_id, doc FROM {{schema}}.resources WHERE project = '{project}'"
    )
    resources = {r["resource_id"]: r["doc"] for r in stored}
    # One document per resource and scope: two scopes of spans, one of logs.
    assert len(resources) == 3
    assert {row[-1] for row in rows} == set(resources)
    want_spans, want_logs = spans_of(sent_traces), logs_of(sent_logs)
    # A span's events go out on it, so that none of them comes back as a log record.
    parts = otlp.partition(rows)
    assert len(parts.spans) == len(want_spans) + 3 and not parts.skipped  # + 3 events
    out_spans = [
        otlp.traces_request(parts.spans, resources),
        from_otlp_json(otlp.traces_json(parts.spans, resources), ExportTraceServiceRequest()),
    ]
    out_logs = [
        otlp.logs_request(parts.logs, resources),
        from_otlp_json(otlp.logs_json(parts.logs, resources), ExportLogsServiceRequest()),
    ]
    for got_spans, got_logs in zip(out_spans, out_logs, strict=True):
        got = spans_of(got_spans)
        assert set(got) == set(want_spans)
        for name, want in want_spans.items():
            # Attribute order is not part of the data model: compared as maps.
            assert got[name] == want, name
        assert logs_of(got_logs) == want_logs


async def test_the_query_api_shows_links_events_and_log_fields(
    collector_server: CollectorServer,  # noqa: F811
) -> None:
    """What the model holds beyond atrace's columns reads back through the query API: links
    with hex ids, span events marked as events of their span, a log's severity as sent."""
    key = await collector_server.create_key("fid-api")
    for path, message in (("/v1/traces", traces()), ("/v1/logs", logs())):
        resp = await collector_server.post(
            path, message.SerializeToString(), key, content_type="application/x-protobuf"
        )
        assert resp.status == 200, resp
    found = await collector_server.request("GET", f"/v1/traces/{TRACE.hex()}", key=key)
    assert found.status == 200, found
    tree = found.json()
    server = next(s for s in tree["spans"] if s["name"] == "GET /orders")
    assert server["span_kind"] == "server" and server["trace_flags"] == 1
    # Resource attributes are the resource's, once, not every record's.
    assert "telemetry.sdk.name" not in server["attrs"]
    doc = tree["resources"][server["resource_id"]]
    assert doc["resource"]["attrs"]["service.version"] == "2.4.1"
    assert doc["resource"]["schema_url"] == RESOURCE_URL
    assert doc["scope"] == {
        "name": "@opentelemetry/instrumentation-http",
        "version": "0.52.1",
        "attrs": {"library.kind": "http", "weight": 1.0},
        "schema_url": SCOPE_URL,
    }
    assert doc["types"] == {
        "/resource/attrs/k8s.pod.uid": "bytes",
        "/resource/attrs/ratio": "double",
    }
    assert server["links"][0] == {
        "trace_id": OTHER_TRACE.hex(),
        "span_id": "b7ad6b7169203331",
        "trace_state": "rojo=00f067aa0ba902b7",
        "flags": 0x101,
        "attrs": {"messaging.batch.index": 3, "token": "qg=="},
    }
    assert server["otlp"]["flags"] == 0x301
    assert server["otlp"]["types"]["/attrs/blob"] == "bytes"
    assert server["otlp"]["types"]["/attrs/nan"] == "double"
    assert server["attrs"]["nan"] == "NaN" and server["attrs"]["minus_inf"] == "-Infinity"
    events = {log["message"]: log for log in server["logs"]}
    assert events["cache.miss"]["ts"] == T0 + 1_000_007
    assert events["cache.miss"]["otlp"]["event"] is True
    (client,) = [c for c in server["children"] if c["name"] == "POST /pay"]
    assert client["status_message"] == "gave up" and client["error_type"] == "TimeoutError"
    assert client["otlp"]["exception"] == {
        "time": T0 + 7_500_009,
        "attrs": {"exception.escaped": True},
    }
    searched = await collector_server.request(
        "GET", "/v1/search?kind=log&q=placed&limit=10", key=key
    )
    answer = searched.json()
    (placed,) = answer["records"]
    assert placed["name"] == "orders.logger"
    assert answer["resources"][placed["resource_id"]]["scope"]["name"] == "orders.logger"
    assert placed["level"] == 20
    assert placed["otlp"]["severity_number"] == 10
    assert placed["otlp"]["severity_text"] == "Information"
    assert placed["otlp"]["observed_time"] == T0 + 999_999
