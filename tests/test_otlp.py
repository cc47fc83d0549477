"""atrace._formats.otlp: rows as OTLP (protobuf and JSON), OTLP as rows, and what real SDKs send."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import atrace
from atrace._formats import otlp
from atrace._records import COLUMNS
from atrace.errors import WireError
from atrace.testing import MemorySink

PB = "application/x-protobuf"
JSON = "application/json"
T0 = 1_700_000_000_123_456_789
TRACE = "0190b2c3d4e5f60718293a4b5c6d7e8f"
ROOT = -0x1234_5678_9ABC_DEF0  # a negative signed id: its W3C bytes start at 0xed
CHILD = 0x0102_0304_0506_0708
SQL = "'; DROP TABLE atrace.records; --"


def row(**values: Any) -> tuple[Any, ...]:
    """A row with sensible defaults; keyword arguments name columns."""
    base: dict[str, Any] = {
        "ts": T0,
        "kind": 3,
        "level": 20,
        "trace_id": TRACE,
        "span_id": CHILD,
        "parent_id": ROOT,
        "duration_ns": 1_500_000,
        "status": 1,
        "service": "checkout",
        "environment": "prod",
        "host": "web-1",
        "pid": 4242,
        "name": "charge",
        "message": None,
        "attrs": None,
        "error_type": None,
        "error_message": None,
        "stack_trace": None,
        "location": "app/pay.py:42",
        "span_kind": 1,  # INTERNAL (a log row has none)
        "trace_state": None,
        "trace_flags": None,
        "status_message": None,
        "links": None,
        "otlp": None,
        "resource_id": None,
    }
    unknown = set(values) - set(COLUMNS)
    assert not unknown, unknown
    base.update(values)
    if base["kind"] == 0 and "span_kind" not in values:
        base["span_kind"] = None
    if isinstance(base["attrs"], dict):
        base["attrs"] = orjson.dumps(base["attrs"])
    return tuple(base[c] for c in COLUMNS)


def bare(r: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row without its resource_id: the resource travels apart (TestResources checks it)."""
    return (*r[:-1], None)


def as_dict(r: tuple[Any, ...]) -> dict[str, Any]:
    """A row by column name, attrs decoded, without its resource_id (see bare)."""
    out = dict(zip(COLUMNS, bare(r), strict=True))
    if out["attrs"] is not None:
        out["attrs"] = orjson.loads(out["attrs"])
    return out


def signed(raw: bytes) -> int:
    """An 8-byte span id as the signed int64 atrace stores."""
    return int.from_bytes(raw, "big", signed=True)


def attrs_of(kvs: Any) -> dict[str, Any]:
    """OTLP KeyValues as a dict of python values (via the official JSON mapping)."""
    out = {}
    for kv in kvs:
        out[kv.key] = any_value(json_format.MessageToDict(kv.value))
    return out


def any_value(d: dict[str, Any]) -> Any:
    """A python value for the standard JSON mapping of an AnyValue."""
    if not d:
        return None
    ((kind, value),) = d.items()
    if kind == "intValue":
        return int(value)
    if kind == "arrayValue":
        return [any_value(v) for v in value.get("values", [])]
    if kind == "kvlistValue":
        return {kv["key"]: any_value(kv.get("value", {})) for kv in value.get("values", [])}
    return value


def traces_pb(rows: list[tuple[Any, ...]]) -> Any:
    """What a peer sees: the serialised request parsed by the official class."""
    return ExportTraceServiceRequest.FromString(otlp.traces_request(rows).SerializeToString())


def logs_pb(rows: list[tuple[Any, ...]]) -> Any:
    return ExportLogsServiceRequest.FromString(otlp.logs_request(rows).SerializeToString())


def hex_to_base64(document: Any) -> Any:
    """OTLP/JSON's hex ids turned into the base64 the standard protobuf JSON mapping expects."""
    if isinstance(document, dict):
        out = {}
        for key, value in document.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                out[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                out[key] = hex_to_base64(value)
        return out
    if isinstance(document, list):
        return [hex_to_base64(v) for v in document]
    return document


def base64_to_hex(document: Any) -> Any:
    """The standard protobuf JSON mapping's base64 ids turned into OTLP/JSON's hex."""
    if isinstance(document, dict):
        return {
            key: base64.b64decode(value).hex()
            if key in ("traceId", "spanId", "parentSpanId")
            else base64_to_hex(value)
            for key, value in document.items()
        }
    if isinstance(document, list):
        return [base64_to_hex(v) for v in document]
    return document


def otlp_json(request: Any) -> bytes:
    """A request as OTLP/JSON: the standard JSON mapping (enum names, integers as it writes
    them), with hex ids."""
    return orjson.dumps(base64_to_hex(json_format.MessageToDict(request)))


def decoded(request: Any, encoding: str) -> list[dict[str, Any]]:
    """A request's rows by column name, decoded from protobuf or from OTLP/JSON."""
    logs = isinstance(request, ExportLogsServiceRequest)
    decode = otlp.decode_logs if logs else otlp.decode_traces
    if encoding == "protobuf":
        return [as_dict(r) for r in decode(request.SerializeToString(), PB)]
    return [as_dict(r) for r in decode(otlp_json(request), JSON)]


def spans_request(count: int) -> tuple[Any, list[Any]]:
    """A request with ``count`` spans of one trace (span ids 1, 2, ...), and the spans."""
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for i in range(count):
        sp = spans.add()
        sp.trace_id, sp.span_id = bytes.fromhex(TRACE), (i + 1).to_bytes(8, "big")
        sp.start_time_unix_nano, sp.end_time_unix_nano = T0, T0 + 1
    return request, list(spans)


def add_exception(sp: Any, etype: str, message: str) -> None:
    """An ``exception`` event on ``sp``."""
    event = sp.events.add()
    event.name, event.time_unix_nano = "exception", T0 + 1
    for key, value in (("exception.type", etype), ("exception.message", message)):
        kv = event.attributes.add()
        kv.key, kv.value.string_value = key, value


def json_keys(document: Any) -> Iterator[str]:
    if isinstance(document, dict):
        for key, value in document.items():
            yield key
            yield from json_keys(value)
    elif isinstance(document, list):
        for value in document:
            yield from json_keys(value)


EVERY_TYPE = {
    "s": "text",
    "empty": "",
    "t": True,
    "f": False,
    "i": -7,
    "big": 2**62,
    "x": 2.5,
    "arr": [1, "two", None, 3.5, [True]],
    "obj": {"a": 1, "b": {"c": "d"}, "skip": None},
    "none": None,
    "sql": SQL,
}
EVERY_TYPE_BACK = {k: v for k, v in EVERY_TYPE.items() if v is not None}
EVERY_TYPE_BACK["obj"] = {"a": 1, "b": {"c": "d"}}


class TestProtobufEncoding:
    def test_span_ids_times_status_and_resource(self) -> None:
        """A complete span carries hex-equal ids, ns times, status, kind and its resource."""
        request = traces_pb([row(span_kind=2, attrs={"order": 42})])
        (rs,) = request.resource_spans
        assert attrs_of(rs.resource.attributes) == {
            "service.name": "checkout",
            "deployment.environment.name": "prod",
            "host.name": "web-1",
            "process.pid": 4242,
        }
        (ss,) = rs.scope_spans
        assert ss.scope.name == "atrace" and ss.scope.version == atrace.__version__
        (sp,) = ss.spans
        assert sp.trace_id.hex() == TRACE
        assert signed(sp.span_id) == CHILD and signed(sp.parent_span_id) == ROOT
        assert sp.parent_span_id.hex() == "edcba98765432110"
        assert sp.start_time_unix_nano == T0
        assert sp.end_time_unix_nano == T0 + 1_500_000
        assert sp.name == "charge" and sp.kind == 2  # SPAN_KIND_SERVER
        assert sp.status.code == 1 and not sp.status.message
        assert attrs_of(sp.attributes) == {
            "order": 42,
            "code.filepath": "app/pay.py",
            "code.lineno": 42,
        }

    def test_failed_span_has_error_status_and_exception_event(self) -> None:
        """status 2 is ERROR with the error message; the error fields make an exception event."""
        failed = row(
            status=2,
            level=40,
            parent_id=None,
            location=None,
            error_type="ValueError",
            error_message="bad amount",
            stack_trace="Traceback (most recent call last):\n  ...\nValueError: bad amount\n",
            status_message="bad amount",
        )
        (sp,) = traces_pb([failed]).resource_spans[0].scope_spans[0].spans
        assert sp.status.code == 2 and sp.status.message == "bad amount"
        assert sp.parent_span_id == b"" and sp.kind == 1  # INTERNAL
        (event,) = sp.events
        assert event.name == "exception" and event.time_unix_nano == T0 + 1_500_000
        assert attrs_of(event.attributes) == {
            "exception.type": "ValueError",
            "exception.message": "bad amount",
            "exception.stacktrace": failed[COLUMNS.index("stack_trace")],
        }

    def test_unset_status_and_end_rows(self) -> None:
        """status 0 stays UNSET; a kind 2 end row is a span like a complete one."""
        request = traces_pb([row(status=0), row(kind=2, span_id=99, duration_ns=7)])
        first, second = request.resource_spans[0].scope_spans[0].spans
        assert not first.HasField("status") or first.status.code == 0
        assert signed(second.span_id) == 99 and second.end_time_unix_nano == T0 + 7

    def test_attributes_of_every_value_type(self) -> None:
        """Strings, booleans, ints, doubles, arrays (nulls kept in place), kvlists; null skipped."""
        (sp,) = (
            traces_pb([row(attrs=EVERY_TYPE, location=None)]).resource_spans[0].scope_spans[0].spans
        )
        kinds = {kv.key: kv.value.WhichOneof("value") for kv in sp.attributes}
        assert kinds == {
            "s": "string_value",
            "empty": "string_value",
            "t": "bool_value",
            "f": "bool_value",
            "i": "int_value",
            "big": "int_value",
            "x": "double_value",
            "arr": "array_value",
            "obj": "kvlist_value",
            "sql": "string_value",
        }
        assert attrs_of(sp.attributes) == EVERY_TYPE_BACK

    def test_start_rows_are_skipped_and_counted(self) -> None:
        """A start row has no OTLP form; partition counts it, the request leaves it out."""
        rows = [row(kind=1, duration_ns=None, status=0), row(), row(kind=0, name="log")]
        parts = otlp.partition(rows)
        assert (len(parts.spans), len(parts.logs), parts.skipped) == (1, 1, 1)
        assert len(traces_pb(rows).resource_spans[0].scope_spans[0].spans) == 1
        assert len(logs_pb(rows).resource_logs[0].scope_logs[0].log_records) == 1

    def test_rows_grouped_per_resource(self) -> None:
        """Rows of two services (or two processes) go under two resources."""
        rows = [row(), row(service="billing", span_id=5), row(span_id=6), row(pid=1, span_id=7)]
        request = traces_pb(rows)
        services = [
            (attrs_of(rs.resource.attributes)["service.name"], len(rs.scope_spans[0].spans))
            for rs in request.resource_spans
        ]
        assert services == [("checkout", 2), ("billing", 1), ("checkout", 1)]

    @pytest.mark.parametrize(
        ("level", "number", "text"),
        [
            (10, 5, "DEBUG"),
            (20, 9, "INFO"),
            (30, 13, "WARNING"),
            (40, 17, "ERROR"),
            (50, 21, "CRITICAL"),
            (25, 13, "Level 25"),
            (44, 17, "Level 44"),
            (70, 21, "Level 70"),
        ],
    )
    def test_log_severity(self, level: int, number: int, text: str) -> None:
        """Levels map to severity numbers (others to the nearest) and keep their own text."""
        (rec,) = logs_pb([row(kind=0, level=level)]).resource_logs[0].scope_logs[0].log_records
        assert (rec.severity_number, rec.severity_text) == (number, text)

    def test_log_severity_text_follows_logging_names(self) -> None:
        """A level registered with logging (uvicorn registers 5 as TRACE) keeps that name."""
        (rec,) = logs_pb([row(kind=0, level=5)]).resource_logs[0].scope_logs[0].log_records
        assert (rec.severity_number, rec.severity_text) == (5, logging.getLevelName(5))

    def test_log_record_fields(self) -> None:
        """A log is linked to its span, its message is the body, errors and code are attributes."""
        log = row(
            kind=0,
            level=40,
            parent_id=None,
            duration_ns=None,
            status=0,
            name="shop.payments",
            message="card declined",
            attrs={"card": "visa", "retry": 2},
            error_type="CardError",
            error_message="declined",
            stack_trace="Traceback ...",
        )
        (rl,) = logs_pb([log]).resource_logs
        assert rl.scope_logs[0].scope.name == "atrace"
        (rec,) = rl.scope_logs[0].log_records
        assert rec.time_unix_nano == T0 and rec.observed_time_unix_nano == T0
        assert rec.body.string_value == "card declined"
        assert rec.trace_id.hex() == TRACE and signed(rec.span_id) == CHILD
        assert attrs_of(rec.attributes) == {
            "card": "visa",
            "retry": 2,
            "logger.name": "shop.payments",
            "exception.type": "CardError",
            "exception.message": "declined",
            "exception.stacktrace": "Traceback ...",
            "code.filepath": "app/pay.py",
            "code.lineno": 42,
        }

    def test_log_outside_a_trace_has_no_ids(self) -> None:
        """A log emitted outside any span carries no trace or span id."""
        log = row(kind=0, trace_id=None, span_id=None, parent_id=None, message="boot")
        (rec,) = logs_pb([log]).resource_logs[0].scope_logs[0].log_records
        assert rec.trace_id == b"" and rec.span_id == b""


class TestJsonEncoding:
    def rows(self) -> list[tuple[Any, ...]]:
        return [
            row(attrs=EVERY_TYPE),
            row(
                span_id=77,
                parent_id=None,
                status=2,
                error_type="KeyError",
                error_message="'sku'",
                status_message="'sku'",
            ),
            row(span_id=78, status=0),
        ]

    def test_follows_the_otlp_json_rules(self) -> None:
        """Hex ids, 64-bit integers as strings, integer enums, camelCase keys, defaults omitted."""
        document = orjson.loads(otlp.traces_json(self.rows()))
        spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
        first, failed, unset = spans
        assert first["traceId"] == TRACE
        assert first["spanId"] == "0102030405060708"
        assert first["parentSpanId"] == "edcba98765432110"
        assert first["startTimeUnixNano"] == str(T0)
        assert first["endTimeUnixNano"] == str(T0 + 1_500_000)
        assert first["kind"] == 1 and first["status"] == {"code": 1}
        attrs = {kv["key"]: kv["value"] for kv in first["attributes"]}
        assert attrs["i"] == {"intValue": "-7"} and attrs["big"] == {"intValue": str(2**62)}
        assert attrs["t"] == {"boolValue": True} and attrs["x"] == {"doubleValue": 2.5}
        assert attrs["arr"]["arrayValue"]["values"][2] == {}
        assert "parentSpanId" not in failed and failed["status"] == {"code": 2, "message": "'sku'"}
        assert "status" not in unset
        assert failed["events"][0]["timeUnixNano"] == str(T0 + 1_500_000)
        resource = {
            kv["key"]: kv["value"] for kv in document["resourceSpans"][0]["resource"]["attributes"]
        }
        assert resource["process.pid"] == {"intValue": "4242"}
        assert all("_" not in key for key in json_keys(document))

    def test_parses_into_the_official_classes(self) -> None:
        """After the spec's hex-to-bytes step, json_format.Parse gives the protobuf request."""
        rows = self.rows()
        parsed = json_format.Parse(
            orjson.dumps(hex_to_base64(orjson.loads(otlp.traces_json(rows)))),
            ExportTraceServiceRequest(),
        )
        assert parsed == otlp.traces_request(rows)

    def test_logs_parse_into_the_official_classes(self) -> None:
        """Log JSON: hex ids, string times, integer severity, and the same content as protobuf."""
        rows = [
            row(kind=0, level=30, message="slow", name="db", attrs={"ms": 812}),
            row(kind=0, trace_id=None, span_id=None, message=None),
        ]
        document = orjson.loads(otlp.logs_json(rows))
        linked, bare = document["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
        assert linked["traceId"] == TRACE and linked["spanId"] == "0102030405060708"
        assert linked["severityNumber"] == 13 and linked["timeUnixNano"] == str(T0)
        assert "traceId" not in bare and "body" not in bare
        parsed = json_format.Parse(
            orjson.dumps(hex_to_base64(document)), ExportLogsServiceRequest()
        )
        assert parsed == otlp.logs_request(rows)


@pytest.fixture
async def emitted(configure_memory: MemorySink) -> list[tuple[Any, ...]]:
    """Rows atrace itself made: nested spans, a failure, logs in and out of spans."""
    async with atrace.span(
        "checkout", kind="server", order_id=42, tags=["a", "b"], meta={"k": 1.5}
    ):
        with atrace.span("reserve", sku="X-1", sql=SQL):
            atrace.info("reserved", qty=3, ok=True)
        try:
            with atrace.span("charge"):
                raise ValueError("card declined")
        except ValueError:
            atrace.exception("charge failed", attempt=1)
        atrace.warning("unicode ✓ text", note="é")
    atrace.info("outside any span")
    assert await atrace.aflush()
    rows = list(configure_memory.rows)
    assert {r[1] for r in rows} == {0, 3}
    return rows


class TestRoundTrip:
    @pytest.mark.parametrize("encoding", ["protobuf", "json"])
    async def test_rows_survive_both_encodings(
        self, emitted: list[tuple[Any, ...]], encoding: str
    ) -> None:
        """atrace rows → OTLP → decode gives the same rows back, in both encodings."""
        spans = [r for r in emitted if r[1] == 3]
        logs = [r for r in emitted if r[1] == 0]
        if encoding == "protobuf":
            back_spans = otlp.decode_traces(otlp.traces_request(emitted).SerializeToString(), PB)
            back_logs = otlp.decode_logs(otlp.logs_request(emitted).SerializeToString(), PB)
        else:
            back_spans = otlp.decode_traces(otlp.traces_json(emitted), JSON)
            back_logs = otlp.decode_logs(otlp.logs_json(emitted), JSON)
        key = lambda r: (r[0], r[4] or 0)  # noqa: E731
        expected = [as_dict(r) for r in sorted(spans, key=key)]
        for d in expected:
            # OTLP describes a failure in the status: a failed span without a description of its
            # own comes back with the one its exception gave it, as OpenTelemetry's SDKs word it.
            if d["status"] == 2 and d["status_message"] is None:
                d["status_message"] = f"{d['error_type']}: {d['error_message']}"
        assert [as_dict(r) for r in sorted(back_spans, key=key)] == expected
        assert [as_dict(r) for r in sorted(back_logs, key=key)] == [
            as_dict(r) for r in sorted(logs, key=key)
        ]
        failed = [as_dict(r) for r in back_spans if r[7] == 2]
        assert [(f["name"], f["error_type"], f["error_message"]) for f in failed] == [
            ("charge", "ValueError", "card declined")
        ]
        assert {r[COLUMNS.index("span_kind")] for r in back_spans} == {1, 2}

    def test_end_row_comes_back_as_a_complete_span(self) -> None:
        """A kind 2 end row carries all a span has, so it returns as kind 3."""
        end = row(kind=2, attrs={"a": 1})
        (back,) = otlp.decode_traces(otlp.traces_request([end]).SerializeToString(), PB)
        assert bare(back) == (*end[:1], 3, *end[2:])

    def test_seeded_random_rows_round_trip(self) -> None:
        """Random ids, times, attributes and texts round-trip through protobuf and JSON."""
        seed = int.from_bytes(os.urandom(4), "big")
        print(f"seed={seed}")
        rng = random.Random(seed)
        alphabet = "abc xyz/:'\"\\é✓\U0001f600"
        rows = []
        for _ in range(200):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
            status = rng.choice((0, 1, 2))
            error_type = rng.choice((None, "ValueError")) if status == 2 else None
            attrs = {
                "s": text,
                "i": rng.randint(-(2**63), 2**63 - 1),
                "f": rng.uniform(-1e6, 1e6),
                "l": [rng.randint(0, 9) for _ in range(rng.randint(0, 4))],
            }
            rows.append(
                row(
                    ts=rng.randint(1, 2**62),
                    trace_id=f"{rng.getrandbits(128) | 1:032x}",
                    span_id=rng.randint(-(2**63), 2**63 - 1) or 1,
                    parent_id=rng.choice((None, rng.randint(1, 2**63 - 1))),
                    duration_ns=rng.randint(0, 10**12),
                    status=status,
                    level=40 if status == 2 else 20,
                    error_type=error_type,
                    error_message=text[::-1] if error_type else None,
                    # (only an error's description travels: OTLP drops it from other statuses)
                    status_message=text if status == 2 else None,
                    name=text,
                    attrs=attrs,
                    location=rng.choice((None, f"{text}.py:{rng.randint(1, 999)}")),
                    span_kind=rng.randint(0, 5),
                    trace_state=rng.choice((None, text)),
                    trace_flags=rng.choice((None, 1, 2, 3, 255)),
                )
            )
        pb = otlp.decode_traces(otlp.traces_request(rows).SerializeToString(), PB)
        js = otlp.decode_traces(otlp.traces_json(rows), JSON)
        assert [bare(r) for r in pb] == rows
        assert [bare(r) for r in js] == rows


class TestDecode:
    def test_resource_attributes_fill_columns_and_stay_the_resources(self) -> None:
        """service/environment/host/pid become columns; the resource, all of it, is kept
        apart (once), not merged into the records' attributes."""
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        for key, value in (("service.name", "api"), ("deployment.environment", "staging")):
            kv = rs.resource.attributes.add()
            kv.key, kv.value.string_value = key, value
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.version", "2.1"
        sp = rs.scope_spans.add().spans.add()
        sp.trace_id, sp.span_id = bytes.fromhex(TRACE), bytes(7) + b"\x01"
        sp.start_time_unix_nano, sp.end_time_unix_nano = T0, T0 - 5  # a skewed clock
        sp.kind = 3
        resources: dict[int, bytes] = {}
        (back,) = otlp.decode_traces(request.SerializeToString(), PB, resources=resources)
        d = as_dict(back)
        assert (d["service"], d["environment"], d["host"], d["pid"]) == (
            "api",
            "staging",
            None,
            None,
        )
        assert d["attrs"] is None and d["span_kind"] == 3
        assert orjson.loads(resources[back[-1]]) == {
            "resource": {
                "attrs": {
                    "service.name": "api",
                    "deployment.environment": "staging",
                    "service.version": "2.1",
                }
            }
        }
        assert (d["duration_ns"], d["status"], d["level"], d["name"]) == (0, 0, 20, None)

    def test_unnamed_service(self) -> None:
        """A resource without service.name is unknown_service."""
        body = orjson.dumps(
            {
                "resourceSpans": [
                    {
                        "scopeSpans": [
                            {
                                "spans": [
                                    {
                                        "traceId": TRACE.upper(),
                                        "spanId": "00000000000000ff",
                                        "startTimeUnixNano": T0,
                                        "endTimeUnixNano": str(T0 + 1),
                                        "kind": "SPAN_KIND_PRODUCER",
                                        "futureField": {"ignored": True},
                                    }
                                ]
                            }
                        ]
                    }
                ]
            }
        )
        (back,) = otlp.decode_traces(body, "application/json; charset=utf-8")
        d = as_dict(back)
        assert d["service"] == "unknown_service" and d["trace_id"] == TRACE
        assert d["span_id"] == 255 and d["duration_ns"] == 1
        assert d["attrs"] is None and d["span_kind"] == 4

    def test_events_become_linked_log_rows(self) -> None:
        """Span events are kind 0 rows linked to the span; an exception event has level 40."""
        request = ExportTraceServiceRequest()
        sp = request.resource_spans.add().scope_spans.add().spans.add()
        sp.trace_id, sp.span_id = bytes.fromhex(TRACE), (5).to_bytes(8, "big")
        sp.start_time_unix_nano, sp.end_time_unix_nano = T0, T0 + 100
        sp.status.code = 1
        ev = sp.events.add()
        ev.time_unix_nano, ev.name = T0 + 10, "cache.miss"
        kv = ev.attributes.add()
        kv.key, kv.value.string_value = "key", "user:1"
        ex = sp.events.add()
        ex.name = "exception"
        for key, value in (("exception.type", "TimeoutError"), ("exception.message", "slow")):
            kv = ex.attributes.add()
            kv.key, kv.value.string_value = key, value
        span_row, miss, handled = (
            as_dict(r) for r in otlp.decode_traces(request.SerializeToString(), PB)
        )
        assert span_row["kind"] == 3 and span_row["error_type"] is None
        assert (miss["kind"], miss["level"], miss["ts"], miss["message"]) == (
            0,
            20,
            T0 + 10,
            "cache.miss",
        )
        assert (miss["trace_id"], miss["span_id"], miss["attrs"]) == (TRACE, 5, {"key": "user:1"})
        assert (
            handled["level"],
            handled["ts"],
            handled["error_type"],
            handled["error_message"],
        ) == (
            40,
            T0,
            "TimeoutError",
            "slow",
        )

    def test_log_severity_text_and_structured_body(self) -> None:
        """Severity numbers map back to levels; without one the text decides; a map body is JSON."""
        request = ExportLogsServiceRequest()
        sl = request.resource_logs.add().scope_logs.add()
        sl.scope.name = "my.module"
        cases = [(3, "", 10), (6, "", 10), (10, "", 20), (14, "", 30), (18, "", 40), (23, "", 50)]
        cases += [(0, "warning", 30), (0, "Critical", 50), (0, "", 20)]
        for number, text, _ in cases:
            rec = sl.log_records.add()
            rec.observed_time_unix_nano = T0
            rec.severity_number, rec.severity_text = number, text
        structured = sl.log_records.add()
        structured.time_unix_nano = T0
        kv = structured.body.kvlist_value.values.add()
        kv.key = "user"
        kv.value.int_value = 7
        back = [as_dict(r) for r in otlp.decode_logs(request.SerializeToString(), PB)]
        assert [b["level"] for b in back[:-1]] == [level for _, _, level in cases]
        assert all(b["name"] == "my.module" and b["ts"] == T0 for b in back)
        assert back[-1]["message"] == '{"user":7}'


ENCODINGS = pytest.mark.parametrize("encoding", ["protobuf", "json"])
# A span with an event takes the decoders' general path; one without, their common-span path.
WITH_EVENT = pytest.mark.parametrize("with_event", [False, True], ids=["plain", "event"])
SPAN_CONTEXT = ("span_kind", "trace_state", "trace_flags", "status_message")


class TestSpanColumns:
    @ENCODINGS
    @WITH_EVENT
    def test_span_kind_is_a_column(self, encoding: str, with_event: bool) -> None:
        """Each OTLP span kind (0-5) lands in span_kind, an unknown one as 0, none in attrs."""
        kinds = (0, 1, 2, 3, 4, 5, 7)
        request, spans = spans_request(len(kinds))
        for sp, kind in zip(spans, kinds, strict=True):
            sp.kind = kind
            if with_event:
                sp.events.add().name = "tick"
        back = decoded(request, encoding)
        got = [(d["span_kind"], d["attrs"]) for d in back if d["kind"] == 3]
        assert got == [(k, None) for k in (0, 1, 2, 3, 4, 5, 0)]
        events = [d for d in back if d["kind"] == 0]
        assert len(events) == (len(kinds) if with_event else 0)
        assert all(d[column] is None for d in events for column in SPAN_CONTEXT)

    @ENCODINGS
    @WITH_EVENT
    def test_trace_state_and_flags(self, encoding: str, with_event: bool) -> None:
        """trace_state is kept as clean text (none when empty); trace_flags is the low byte of
        flags, none when flags is not sent."""
        cases = [
            ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", 0x01, 1),
            ("", 0x301, 1),  # (bits 8 and 9: the parent is remote, and that is known)
            ("k=v\x00", 0x100, 0),
            ("v=" + "x" * 600, 0, None),
            ("é=✓", 0xFFFF_FFFF, 255),
        ]
        request, spans = spans_request(len(cases))
        for sp, (state, flags, _) in zip(spans, cases, strict=True):
            sp.trace_state, sp.flags = state, flags
            if with_event:
                sp.events.add().name = "tick"
        back = [d for d in decoded(request, encoding) if d["kind"] == 3]
        assert [d["trace_flags"] for d in back] == [flags for _, _, flags in cases]
        states = [d["trace_state"] for d in back]
        assert states[:3] == ["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", None, "k=v\ufffd"]
        assert states[3] == "v=" + "x" * 510 + "…[truncated 90 chars]" and states[4] == "é=✓"

    @ENCODINGS
    def test_status_message_is_kept_apart_from_the_error(self, encoding: str) -> None:
        """The status message is kept whatever the code; the error columns come from an
        exception event alone."""
        cases: list[tuple[int, str, tuple[str, str] | None]] = [
            (1, "fine", None),
            (0, "unset, still said", None),
            (2, "boom", None),
        ]
        cases += [(2, "boom", ("E", "exc says")), (2, "", ("E", "exc says")), (1, "", None)]
        request, spans = spans_request(len(cases))
        for sp, (code, message, exception) in zip(spans, cases, strict=True):
            sp.status.code, sp.status.message = code, message
            if exception is not None:
                add_exception(sp, *exception)
        back = decoded(request, encoding)
        assert [d["kind"] for d in back] == [3] * len(cases)  # (exceptions of failed spans)
        got = [
            (d["status"], d["level"], d["status_message"], d["error_type"], d["error_message"])
            for d in back
        ]
        assert got == [
            (1, 20, "fine", None, None),
            (0, 20, "unset, still said", None, None),
            (2, 40, "boom", None, None),
            (2, 40, "boom", "E", "exc says"),
            (2, 40, None, "E", "exc says"),
            (1, 20, None, None, None),
        ]

    @ENCODINGS
    def test_an_exception_on_a_span_that_did_not_fail(self, encoding: str) -> None:
        """An exception event on a span that did not fail stays an error log row; the span keeps
        its status message and no error."""
        request, (sp,) = spans_request(1)
        sp.status.code, sp.status.message = 1, "recovered"
        add_exception(sp, "TimeoutError", "slow")
        span_row, event = decoded(request, encoding)
        assert (span_row["status_message"], span_row["error_message"]) == ("recovered", None)
        assert (event["level"], event["error_type"], event["error_message"]) == (
            40,
            "TimeoutError",
            "slow",
        )
        assert all(event[column] is None for column in SPAN_CONTEXT)

    @ENCODINGS
    def test_log_rows_take_trace_flags_alone(self, encoding: str) -> None:
        """A log record's flags give its trace_flags (none when not sent); it has no span kind,
        trace state or status message."""
        request = ExportLogsServiceRequest()
        records = request.resource_logs.add().scope_logs.add().log_records
        for flags in (0x01, 0x103, 0):
            rec = records.add()
            rec.time_unix_nano, rec.flags = T0, flags
            rec.trace_id, rec.span_id = bytes.fromhex(TRACE), (1).to_bytes(8, "big")
        back = decoded(request, encoding)
        assert [d["trace_flags"] for d in back] == [1, 3, None]
        assert all(d[c] is None for d in back for c in SPAN_CONTEXT if c != "trace_flags")


@pytest.fixture
async def capture_server() -> AsyncIterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A real HTTP server on 127.0.0.1 that keeps every OTLP body it is sent."""
    bodies: list[tuple[str, str, bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append((request.path, request.content_type, await request.read()))
        return web.Response(body=b"", content_type=PB)

    app = web.Application()
    app.router.add_post("/v1/traces", handle)
    app.router.add_post("/v1/logs", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sock: socket.socket = site._server.sockets[0]  # type: ignore[union-attr]
    port = sock.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", bodies
    finally:
        await runner.cleanup()


def _run_sdk(url: str) -> tuple[str, dict[str, str]]:
    """Emit spans and logs with the real OpenTelemetry SDK and its OTLP/HTTP exporters."""
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    resource = Resource.create(
        {
            "service.name": "sdk-svc",
            "deployment.environment.name": "test",
            "host.name": "sdk-host",
            "process.pid": 4321,
            "service.version": "1.2.3",
        }
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces"))
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{url}/v1/logs"))
    )
    tracer = tracer_provider.get_tracer("sdk.test")
    logger = logger_provider.get_logger("sdk.logger")
    ids: dict[str, str] = {}
    with tracer.start_as_current_span(
        "GET /orders", kind=SpanKind.SERVER, attributes={"http.route": "/orders", "n": 3}
    ) as root:
        ctx = root.get_span_context()
        ids["trace"] = f"{ctx.trace_id:032x}"
        ids["root"] = f"{ctx.span_id:016x}"
        with tracer.start_as_current_span("db.query") as child:
            child.set_attribute("db.statement", SQL)
            child.set_attribute("rows", [1, 2, 3])
            child.set_status(Status(StatusCode.OK))
            ids["child"] = f"{child.get_span_context().span_id:016x}"
            logger.emit(
                body="query ran",
                severity_number=SeverityNumber.WARN,
                severity_text="WARN",
                attributes={"ms": 12.5},
            )
        try:
            with tracer.start_as_current_span("charge"):
                raise ValueError("card declined")
        except ValueError:
            pass
        root.add_event("cache.miss", {"key": "orders:1"})
    logger.emit(body={"event": "shutdown", "codes": [1, 2]}, severity_number=SeverityNumber.ERROR)
    assert tracer_provider.force_flush() and logger_provider.force_flush()
    tracer_provider.shutdown()
    logger_provider.shutdown()
    return ids["trace"], ids


class TestOpenTelemetrySdk:
    async def test_decodes_what_the_sdk_exporters_send(
        self, capture_server: tuple[str, list[tuple[str, str, bytes]]]
    ) -> None:
        """Spans and logs from OTLPSpanExporter / OTLPLogExporter decode into the right rows."""
        url, bodies = capture_server
        trace_id, ids = await asyncio.to_thread(_run_sdk, url)
        spans: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        resources: dict[int, bytes] = {}
        for path, content_type, body in bodies:
            assert content_type == PB
            if path == "/v1/traces":
                rows = otlp.decode_traces(body, content_type, resources=resources)
            else:
                rows = otlp.decode_logs(body, content_type, resources=resources)
            for r in rows:
                (spans if r[1] == 3 else logs).append({**as_dict(r), "rid": r[-1]})
        by_name = {s["name"]: s for s in spans}
        assert set(by_name) == {"GET /orders", "db.query", "charge"}
        root, child, charge = by_name["GET /orders"], by_name["db.query"], by_name["charge"]
        for s in spans:
            assert s["trace_id"] == trace_id
            assert (s["service"], s["environment"], s["host"], s["pid"]) == (
                "sdk-svc",
                "test",
                "sdk-host",
                4321,
            )
            resource = orjson.loads(resources[s["rid"]])["resource"]["attrs"]
            assert resource["service.version"] == "1.2.3"
            assert resource["telemetry.sdk.name"] == "opentelemetry"
            assert "service.version" not in (s["attrs"] or {})
            assert s["duration_ns"] >= 0 and s["ts"] > 1_600_000_000 * 10**9
        assert root["span_id"] == int.from_bytes(bytes.fromhex(ids["root"]), "big", signed=True)
        assert root["parent_id"] is None
        assert child["parent_id"] == root["span_id"] == charge["parent_id"]
        assert root["span_kind"] == 2 and root["attrs"]["n"] == 3
        assert "span.kind" not in root["attrs"] and child["span_kind"] == 1
        assert root["status"] == 0 and root["level"] == 20
        assert child["attrs"]["db.statement"] == SQL and child["attrs"]["rows"] == [1, 2, 3]
        assert child["status"] == 1
        assert (charge["status"], charge["level"], charge["error_type"]) == (2, 40, "ValueError")
        assert charge["error_message"] == "card declined"
        assert charge["status_message"] == "ValueError: card declined"
        assert "ValueError: card declined" in charge["stack_trace"]
        event_logs = [lg for lg in logs if lg["message"] == "cache.miss"]
        assert [(e["span_id"], e["attrs"]["key"]) for e in event_logs] == [
            (root["span_id"], "orders:1")
        ]
        linked = next(lg for lg in logs if lg["message"] == "query ran")
        assert (linked["level"], linked["name"], linked["trace_id"]) == (30, "sdk.logger", trace_id)
        assert linked["span_id"] == child["span_id"] and linked["attrs"]["ms"] == 12.5
        assert linked["trace_flags"] & 1  # sampled (its other bits are the SDK's choice)
        assert linked["service"] == "sdk-svc"
        loose = next(lg for lg in logs if lg["level"] == 40)
        assert orjson.loads(loose["message"]) == {"event": "shutdown", "codes": [1, 2]}
        assert loose["trace_id"] is None and loose["span_id"] is None
        assert loose["trace_flags"] is None


def span_request(**fields: Any) -> Any:
    """A one-span request; ``fields`` set on the span."""
    request = ExportTraceServiceRequest()
    sp = request.resource_spans.add().scope_spans.add().spans.add()
    sp.trace_id, sp.span_id = bytes.fromhex(TRACE), (1).to_bytes(8, "big")
    sp.start_time_unix_nano, sp.end_time_unix_nano = T0, T0 + 1
    for key, value in fields.items():
        setattr(sp, key, value)
    return request


def json_span(**fields: Any) -> bytes:
    """A one-span OTLP/JSON request; ``fields`` replace the span's."""
    span = {"traceId": TRACE, "spanId": "0000000000000001", "startTimeUnixNano": str(T0)}
    span.update(fields)
    return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})


class TestMalformed:
    @pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05abc", b"\x0a"])
    def test_invalid_protobuf(self, body: bytes) -> None:
        """Bytes that are not an ExportTraceServiceRequest are a 400 WireError."""
        with pytest.raises(WireError, match="invalid protobuf") as err:
            otlp.decode_traces(body, PB)
        assert err.value.status == 400

    def test_truncated_protobuf(self) -> None:
        """A body cut inside a field is refused whole, not decoded in part."""
        request = span_request(name="n" * 500)
        body = request.SerializeToString()
        cut = body.index(b"n" * 500) + 250
        with pytest.raises(WireError, match="invalid protobuf"):
            otlp.decode_traces(body[:cut], PB)
        logs = otlp.logs_request([row(kind=0, message="m" * 300)]).SerializeToString()
        with pytest.raises(WireError, match="invalid protobuf ExportLogsServiceRequest"):
            otlp.decode_logs(logs[: logs.index(b"m" * 300) + 10], PB)

    @pytest.mark.parametrize(
        ("field", "value", "named"),
        [
            ("trace_id", bytes(7), "trace_id: expected 16 bytes, got 7"),
            ("trace_id", bytes(16), "trace_id: all zero"),
            ("trace_id", b"", "trace_id: expected 16 bytes, got 0"),
            ("span_id", b"\x01" * 9, "span_id: expected 8 bytes, got 9"),
            ("parent_span_id", b"\x01" * 3, "parent_span_id: expected 8 bytes, got 3"),
            ("start_time_unix_nano", 0, "start_time_unix_nano: missing"),
        ],
    )
    def test_bad_protobuf_fields_are_named(self, field: str, value: Any, named: str) -> None:
        """A wrong-sized id or a missing start is refused with the field's path."""
        body = span_request(**{field: value}).SerializeToString()
        with pytest.raises(WireError, match=named) as err:
            otlp.decode_traces(body, PB)
        assert "resource_spans[0].scope_spans[0].spans[0]" in str(err.value)

    @pytest.mark.parametrize(
        ("body", "named"),
        [
            (b"{not json", "invalid JSON"),
            (b"[]", "request body: expected an object"),
            (b'{"resourceSpans": {}}', r"request.resourceSpans: expected an array"),
            (json_span(traceId=12), r"spans\[0\].traceId: expected a hex string, got a number"),
            (json_span(traceId="zz" * 16), r"traceId: expected 32 hex digits"),
            (json_span(traceId=TRACE[:30]), r"traceId: expected 32 hex digits"),
            (json_span(traceId=base64.b64encode(bytes(16)).decode()), "traceId: expected 32 hex"),
            (json_span(spanId="00000000000000000001"), r"spanId: expected 16 hex digits"),
            (json_span(startTimeUnixNano=True), r"startTimeUnixNano: expected an integer"),
            (json_span(startTimeUnixNano="12ab"), r"startTimeUnixNano: expected an integer"),
            (json_span(endTimeUnixNano=-1), r"endTimeUnixNano: -1 is out of range"),
            (json_span(name=5), r"spans\[0\].name: expected a string, got a number"),
            (json_span(kind="server"), r"kind: expected an integer enum value"),
            (json_span(traceState=5), r"spans\[0\].traceState: expected a string"),
            (json_span(flags=-1), r"spans\[0\].flags: -1 is out of range"),
            (json_span(flags=2**32), r"spans\[0\].flags: 4294967296 is out of range"),
            (json_span(flags="x"), r"spans\[0\].flags: expected an integer"),
            (json_span(status=[]), r"status: expected an object, got an array"),
            (
                json_span(attributes=[{"key": "k", "value": {"intValue": "x1"}}]),
                r"attributes\[0\].value.intValue",
            ),
            (
                json_span(attributes=[{"key": 1, "value": {}}]),
                r"attributes\[0\].key: expected a string",
            ),
            (
                json_span(attributes=[{"key": "k", "value": {"boolValue": "yes"}}]),
                r"boolValue: expected a boolean",
            ),
            (
                json_span(
                    attributes=[
                        {"key": "k", "value": {"arrayValue": {"values": [{"doubleValue": "x"}]}}}
                    ]
                ),
                r"attributes\[0\].value.arrayValue.values\[0\].doubleValue",
            ),
            (json_span(events=[{"name": 3}]), r"events\[0\].name: expected a string"),
        ],
    )
    def test_wrong_json_types_are_named(self, body: bytes, named: str) -> None:
        """JSON with a wrong type or a bad id is a 400 naming the field."""
        with pytest.raises(WireError, match=named) as err:
            otlp.decode_traces(body, JSON)
        assert err.value.status == 400

    def test_lone_surrogate_escape_in_json(self) -> None:
        """A JSON string with a lone surrogate escape is refused as invalid JSON."""
        with pytest.raises(WireError, match="invalid JSON"):
            otlp.decode_traces(json_span(name="x").replace(b'"x"', b'"\\ud800"'), JSON)

    @pytest.mark.parametrize("encoding", ["protobuf", "json"])
    def test_long_keys_and_values_are_cut(self, encoding: str) -> None:
        """A 10k-character attribute key is cut to 256 characters, a long value to 4096."""
        attrs = {"k" * 10_000: "v", "long": "x" * 10_000}
        rows = [row(attrs=attrs, location=None)]
        if encoding == "protobuf":
            (back,) = otlp.decode_traces(otlp.traces_request(rows).SerializeToString(), PB)
        else:
            (back,) = otlp.decode_traces(otlp.traces_json(rows), JSON)
        decoded = as_dict(back)["attrs"]
        assert decoded["k" * 256] == "v" and len(decoded) == 2
        assert decoded["long"].startswith("x" * 4096)
        assert decoded["long"].endswith("[truncated 5904 chars]")

    @pytest.mark.parametrize("encoding", ["protobuf", "json"])
    def test_long_errors_keep_their_column_limits(self, encoding: str) -> None:
        """A long stack trace or error message is not cut to an attribute value's limit."""
        stack = "Traceback (most recent call last):\n" + "  frame\n" * 3000
        message = "m" * 20_000
        failed = row(
            status=2,
            level=40,
            error_type="E",
            error_message=message,
            stack_trace=stack,
            status_message=message[::2],
        )
        log = row(
            kind=0,
            parent_id=None,
            duration_ns=None,
            status=0,
            level=40,
            error_type="E",
            error_message=message,
            stack_trace=stack,
        )
        if encoding == "protobuf":
            (span,) = otlp.decode_traces(otlp.traces_request([failed]).SerializeToString(), PB)
            (lg,) = otlp.decode_logs(otlp.logs_request([log]).SerializeToString(), PB)
        else:
            (span,) = otlp.decode_traces(otlp.traces_json([failed]), JSON)
            (lg,) = otlp.decode_logs(otlp.logs_json([log]), JSON)
        assert (bare(span), bare(lg)) == (failed, log)

    @pytest.mark.parametrize("encoding", ["protobuf", "json"])
    def test_nul_characters_are_replaced(self, encoding: str) -> None:
        """NUL in any text (PostgreSQL refuses it) becomes U+FFFD; the rest is kept."""
        nul_row = row(
            service="svc\x00",
            name="span\x00name",
            attrs={"k\x00": "v\x00", "nested": ["a\x00"]},
            status=2,
            level=40,
            error_type="E",
            error_message="bad\x00",
            status_message="said\x00",
            trace_state="k=v\x00",
        )
        log = row(kind=0, message="hello\x00world", name="lg\x00", attrs={"x": "\x00"})
        if encoding == "protobuf":
            spans = otlp.decode_traces(otlp.traces_request([nul_row]).SerializeToString(), PB)
            logs = otlp.decode_logs(otlp.logs_request([log]).SerializeToString(), PB)
        else:
            spans = otlp.decode_traces(otlp.traces_json([nul_row]), JSON)
            logs = otlp.decode_logs(otlp.logs_json([log]), JSON)
        span, lg = as_dict(spans[0]), as_dict(logs[0])
        assert span["service"] == "svc\ufffd" and span["name"] == "span\ufffdname"
        assert span["attrs"] == {"k\ufffd": "v\ufffd", "nested": ["a\ufffd"]}
        assert span["error_message"] == "bad\ufffd" and span["status_message"] == "said\ufffd"
        assert span["trace_state"] == "k=v\ufffd"
        assert (lg["message"], lg["name"], lg["attrs"]) == (
            "hello\ufffdworld",
            "lg\ufffd",
            {"x": "\ufffd"},
        )
        for r in (*spans, *logs):
            assert all("\x00" not in v for v in r if isinstance(v, str))
            assert b"\\u0000" not in (r[14] or b"")

    @pytest.mark.parametrize("encoding", ["protobuf", "json"])
    def test_too_many_records_is_413(self, encoding: str) -> None:
        """More spans, events or log records than max_records is refused with status 413."""
        rows = [row(span_id=i + 1) for i in range(11)]
        logs = [row(kind=0) for _ in range(11)]
        failing = [row(span_id=i + 1, status=0, error_type="E") for i in range(6)]
        if encoding == "protobuf":
            cases = [
                (otlp.decode_traces, otlp.traces_request(rows).SerializeToString(), "11 spans"),
                (otlp.decode_logs, otlp.logs_request(logs).SerializeToString(), "11 log records"),
                (otlp.decode_traces, otlp.traces_request(failing).SerializeToString(), "events"),
            ]
            content_type = PB
        else:
            cases = [
                (otlp.decode_traces, otlp.traces_json(rows), "11 spans"),
                (otlp.decode_logs, otlp.logs_json(logs), "11 log records"),
                (otlp.decode_traces, otlp.traces_json(failing), "events"),
            ]
            content_type = JSON
        for decode, body, named in cases:
            with pytest.raises(WireError, match=named) as err:
                decode(body, content_type, max_records=10)
            assert err.value.status == 413
        assert len(otlp.decode_traces(cases[0][1], content_type, max_records=11)) == 11

    def test_unsupported_content_type_is_415(self) -> None:
        """Only protobuf and JSON bodies are understood."""
        with pytest.raises(WireError, match="unsupported content type") as err:
            otlp.decode_logs(b"", "text/plain")
        assert err.value.status == 415

    def test_empty_protobuf_body_is_no_rows(self) -> None:
        """An empty request is valid and decodes to nothing."""
        assert otlp.decode_traces(b"", PB) == [] and otlp.decode_logs(b"{}", JSON) == []

    def test_sql_looking_text_is_plain_data(self) -> None:
        """Text that looks like SQL comes through unchanged, as data."""
        rows = [row(name=SQL, attrs={SQL: SQL})]
        (back,) = otlp.decode_traces(otlp.traces_json(rows), JSON)
        assert bare(back) == rows[0]


class TestPublicSurface:
    def test_all_matches_the_module(self) -> None:
        """__all__ names exactly the public names the module defines."""
        public = {
            name
            for name, value in vars(otlp).items()
            if not name.startswith("_")
            and getattr(value, "__module__", otlp.__name__) == otlp.__name__
            and (callable(value) or name.isupper())
        }
        assert set(otlp.__all__) == public
