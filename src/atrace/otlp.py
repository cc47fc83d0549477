"""OTLP both ways: atrace rows as OTLP requests (protobuf and JSON), OTLP requests as atrace rows.

Encoding follows the OTLP data model: a complete span (kind 3) or the end row of an announced
span (kind 2) is one ``Span``; a log (kind 0) is one ``LogRecord``; a start row (kind 1) has no
OTLP form and is left out (:func:`partition` counts it). Rows are grouped per resource
(``service.name``, ``deployment.environment.name``, ``host.name``, ``process.pid``) under the
instrumentation scope ``atrace``.

Decoding is what the collector runs for ``POST /v1/traces`` and ``/v1/logs``: a body is turned
into rows whole or refused whole with a :class:`~atrace.errors.WireError` naming what is wrong.
It walks the protobuf objects with plain loops; every text goes through ``sanitize_text``.

Choices where OTLP and atrace differ:

* A span's kind other than INTERNAL is kept in ``attrs`` as ``span.kind`` (``"server"`` …) and
  read back from there when encoding.
* An ``exception`` event on a span whose status is ERROR is the span's own failure: it fills the
  span row's error columns (as atrace records a failed span) instead of becoming a log row. Any
  other event becomes a log row linked to the span; an ``exception`` event then has level 40.
* A log's ``name`` (its logger) travels as the ``logger.name`` attribute; logs without it take
  the instrumentation scope's name, which is what OpenTelemetry's logging bridges put there.
* ``location`` travels as ``code.filepath`` / ``code.lineno``; decoding also reads the newer
  ``code.file.path`` / ``code.line.number``.
"""

from __future__ import annotations

import base64
import logging
import math
import struct
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson

from ._version import __version__
from .encode import Row, sanitize_text, sanitize_value
from .errors import MissingExtraError, WireError

try:
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
except ImportError:  # pragma: no cover - depends on the installed extras
    raise MissingExtraError("opentelemetry-proto", "otlp") from None

__all__ = (
    "SCOPE_NAME",
    "Partition",
    "decode_logs",
    "decode_traces",
    "level_from_severity",
    "logs_json",
    "logs_request",
    "partition",
    "severity_number",
    "traces_json",
    "traces_request",
)

SCOPE_NAME = "atrace"

# Positions in a row (COLUMNS order).
_TS, _KIND, _LEVEL, _TRACE_ID, _SPAN_ID, _PARENT_ID, _DURATION, _STATUS = range(8)
_SERVICE, _ENVIRONMENT, _HOST, _PID, _NAME, _MESSAGE, _ATTRS = range(8, 15)
_ERROR_TYPE, _ERROR_MESSAGE, _STACK_TRACE, _LOCATION = range(15, 19)

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
_ZERO_TRACE = "0" * 32
_ZERO16 = bytes(16)
_ZERO8 = bytes(8)
_pack_q = struct.Struct(">q").pack
_unpack_q = struct.Struct(">q").unpack

# Limits on decoded text, in characters (the encoder's defaults for rows atrace makes itself).
_KEY_LIMIT = 256
_VALUE_LIMIT = 4096
_SHORT_LIMIT = 256  # service, environment, host
_NAME_LIMIT = 1024
_MESSAGE_LIMIT = 32_768
_STACK_LIMIT = 4 * _MESSAGE_LIMIT
_LOCATION_LIMIT = 4096
# Nesting of array / kvlist values kept before the rest is replaced by a marker.
_MAX_DEPTH = 32

# Resource attributes that have a column of their own.
_SERVICE_KEY = "service.name"
_ENV_KEYS = ("deployment.environment.name", "deployment.environment")
_HOST_KEY = "host.name"
_PID_KEY = "process.pid"
_DEFAULT_SERVICE = "unknown_service"

_KIND_KEY = "span.kind"
_KIND_NAMES = {2: "server", 3: "client", 4: "producer", 5: "consumer"}
_KIND_NUMBERS = {v: k for k, v in _KIND_NAMES.items()}
_SPAN_KIND_INTERNAL = 1
_STATUS_ERROR = 2

_LOGGER_KEY = "logger.name"
_EXC_TYPE, _EXC_MESSAGE, _EXC_STACK = "exception.type", "exception.message", "exception.stacktrace"
# Attributes that become error columns keep those columns' limits, not an attribute's.
_LONG_VALUES = {_EXC_MESSAGE: _MESSAGE_LIMIT, _EXC_STACK: _STACK_LIMIT}
_FILE_KEYS = ("code.filepath", "code.file.path")
_LINE_KEYS = ("code.lineno", "code.line.number")

# atrace levels and OTLP severity numbers (the first of each range: DEBUG 5, INFO 9, ...).
_SEVERITIES = ((10, 5), (20, 9), (30, 13), (40, 17), (50, 21))
_TEXT_LEVELS = (
    ("TRACE", 10),
    ("DEBUG", 10),
    ("INFO", 20),
    ("WARN", 30),
    ("ERR", 40),
    ("FATAL", 50),
    ("CRIT", 50),
)


class Partition(NamedTuple):
    """A batch split by OTLP signal; ``skipped`` counts rows with no OTLP form."""

    spans: list[Row]
    logs: list[Row]
    skipped: int


# ---- levels ---------------------------------------------------------------------------------


def severity_number(level: Any) -> int:
    """The OTLP severity number for an atrace level (10→5 … 50→21; others to the nearest).

    A level halfway between two takes the more severe one, so that nothing is understated.
    """
    if not isinstance(level, (int, float)) or isinstance(level, bool):
        return 9
    best = min(_SEVERITIES, key=lambda pair: (abs(level - pair[0]), -pair[0]))
    return best[1]


def level_from_severity(number: int, text: str = "") -> int:
    """The atrace level for an OTLP severity number (its text when the number is unspecified)."""
    if number <= 0:
        upper = text.strip().upper()
        for prefix, level in _TEXT_LEVELS:
            if upper.startswith(prefix):
                return level
        return 20
    if number <= 8:
        return 10  # TRACE and DEBUG: atrace has nothing below debug
    if number >= 21:
        return 50
    return (number - 1) // 4 * 10  # 9-12 → 20, 13-16 → 30, 17-20 → 40


def _severity_text(level: Any) -> str:
    name = logging.getLevelName(level) if isinstance(level, int) else None
    return name if isinstance(name, str) else "INFO"


# ---- rows to OTLP ---------------------------------------------------------------------------


def _trace_bytes(value: Any) -> bytes | None:
    if type(value) is str:
        text = value.replace("-", "") if len(value) != 32 else value
        if len(text) != 32 or not text.isalnum():
            return None
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return None
        return None if raw == bytes(16) else raw
    if isinstance(value, uuid.UUID):
        return value.bytes if value.int else None
    if isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return bytes(value)
    return None


def _span_bytes(value: Any) -> bytes | None:
    if type(value) is not int or value == 0 or not _INT64_MIN <= value <= _UINT64_MAX:
        return None
    return _pack_q(value if value <= _INT64_MAX else value - (1 << 64))


def partition(rows: Iterable[Row]) -> Partition:
    """Split rows into those that become spans and those that become log records.

    Start rows (kind 1), and span rows without a valid trace or span id, have no OTLP form and
    are only counted.
    """
    spans: list[Row] = []
    logs: list[Row] = []
    skipped = 0
    for row in rows:
        kind = row[_KIND]
        if kind == 0:
            logs.append(row)
        elif (
            (kind == 3 or kind == 2)
            and _trace_bytes(row[_TRACE_ID]) is not None
            and _span_bytes(row[_SPAN_ID]) is not None
        ):
            spans.append(row)
        else:
            skipped += 1
    return Partition(spans, logs, skipped)


def _row_attrs(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        return {"attrs": text}
    return value if isinstance(value, dict) else {"attrs": value}


def _split_location(location: Any) -> tuple[str | None, int | None]:
    if not isinstance(location, str) or not location:
        return None, None
    path, sep, line = location.rpartition(":")
    if sep and path and line.isdigit():
        return path, int(line)
    return location, None


def _resource_key(row: Row) -> tuple[Any, Any, Any, Any]:
    return (row[_SERVICE], row[_ENVIRONMENT], row[_HOST], row[_PID])


def _resource_items(key: tuple[Any, Any, Any, Any]) -> list[tuple[str, Any]]:
    service, environment, host, pid = key
    items: list[tuple[str, Any]] = [
        (_SERVICE_KEY, service if isinstance(service, str) else _DEFAULT_SERVICE)
    ]
    if environment is not None:
        items.append((_ENV_KEYS[0], str(environment)))
    if host is not None:
        items.append((_HOST_KEY, str(host)))
    if type(pid) is int:
        items.append((_PID_KEY, pid))
    return items


def _span_attrs(row: Row) -> tuple[dict[str, Any], int]:
    """A span's attributes for OTLP, and its span kind (taken out of ``span.kind``)."""
    attrs = _row_attrs(row[_ATTRS])
    kind = _SPAN_KIND_INTERNAL
    named = attrs.get(_KIND_KEY)
    if isinstance(named, str) and named in _KIND_NUMBERS:
        kind = _KIND_NUMBERS[named]
        del attrs[_KIND_KEY]
    path, line = _split_location(row[_LOCATION])
    if path is not None:
        attrs[_FILE_KEYS[0]] = path
    if line is not None:
        attrs[_LINE_KEYS[0]] = line
    return attrs, kind


def _log_attrs(row: Row) -> dict[str, Any]:
    attrs = _row_attrs(row[_ATTRS])
    if row[_NAME] is not None:
        attrs[_LOGGER_KEY] = row[_NAME]
    for key, col in ((_EXC_TYPE, _ERROR_TYPE), (_EXC_MESSAGE, _ERROR_MESSAGE)):
        if row[col] is not None:
            attrs[key] = row[col]
    if row[_STACK_TRACE] is not None:
        attrs[_EXC_STACK] = row[_STACK_TRACE]
    path, line = _split_location(row[_LOCATION])
    if path is not None:
        attrs[_FILE_KEYS[0]] = path
    if line is not None:
        attrs[_LINE_KEYS[0]] = line
    return attrs


def _exception_attrs(row: Row) -> dict[str, Any] | None:
    if row[_ERROR_TYPE] is None and row[_ERROR_MESSAGE] is None and row[_STACK_TRACE] is None:
        return None
    out: dict[str, Any] = {}
    if row[_ERROR_TYPE] is not None:
        out[_EXC_TYPE] = row[_ERROR_TYPE]
    if row[_ERROR_MESSAGE] is not None:
        out[_EXC_MESSAGE] = row[_ERROR_MESSAGE]
    if row[_STACK_TRACE] is not None:
        out[_EXC_STACK] = row[_STACK_TRACE]
    return out


def _end_ns(row: Row) -> int:
    duration = row[_DURATION]
    return int(row[_TS]) + (duration if type(duration) is int and duration > 0 else 0)


# -- protobuf


def _pb_value(av: Any, value: Any, depth: int = 0) -> None:
    t = type(value)
    if t is str:
        av.string_value = value
    elif t is bool:
        av.bool_value = value
    elif t is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            av.int_value = value
        else:
            av.string_value = str(value)
    elif t is float:
        av.double_value = value
    elif depth >= _MAX_DEPTH:
        av.string_value = "<too deep>"
    elif t is list or t is tuple:
        arr = av.array_value
        arr.SetInParent()
        add = arr.values.add
        for item in value:
            # A null keeps its place in an array as an empty value.
            _pb_value(add(), item, depth + 1)
    elif t is dict:
        kvl = av.kvlist_value
        kvl.SetInParent()
        _pb_attrs(kvl.values, value, depth + 1)
    elif value is not None:
        av.string_value = str(value)


def _pb_attrs(target: Any, attrs: Mapping[str, Any], depth: int = 0) -> None:
    add = target.add
    for key, value in attrs.items():
        if value is None:
            continue
        kv = add()
        kv.key = key if type(key) is str else str(key)
        _pb_value(kv.value, value, depth)


def _pb_resource(resource: Any, key: tuple[Any, Any, Any, Any]) -> None:
    _pb_attrs(resource.attributes, dict(_resource_items(key)))


def traces_request(rows: Iterable[Row]) -> ExportTraceServiceRequest:
    """An ``ExportTraceServiceRequest`` with a ``Span`` for every kind 2 and 3 row.

    Other rows (logs, start rows, spans without valid ids) are left out; see :func:`partition`.
    """
    request = ExportTraceServiceRequest()
    groups: dict[tuple[Any, Any, Any, Any], Any] = {}
    for row in rows:
        kind = row[_KIND]
        if kind != 3 and kind != 2:
            continue
        trace_id = _trace_bytes(row[_TRACE_ID])
        span_id = _span_bytes(row[_SPAN_ID])
        if trace_id is None or span_id is None:
            continue
        key = _resource_key(row)
        spans = groups.get(key)
        if spans is None:
            rs = request.resource_spans.add()
            _pb_resource(rs.resource, key)
            ss = rs.scope_spans.add()
            ss.scope.name = SCOPE_NAME
            ss.scope.version = __version__
            spans = groups[key] = ss.spans
        sp = spans.add()
        sp.trace_id = trace_id
        sp.span_id = span_id
        parent = _span_bytes(row[_PARENT_ID])
        if parent is not None:
            sp.parent_span_id = parent
        if row[_NAME] is not None:
            sp.name = row[_NAME]
        attrs, span_kind = _span_attrs(row)
        sp.kind = span_kind
        sp.start_time_unix_nano = row[_TS]
        end = _end_ns(row)
        sp.end_time_unix_nano = end
        if attrs:
            _pb_attrs(sp.attributes, attrs)
        status = row[_STATUS]
        if status == 2:
            sp.status.code = _STATUS_ERROR
            if row[_ERROR_MESSAGE] is not None:
                sp.status.message = row[_ERROR_MESSAGE]
        elif status == 1:
            sp.status.code = 1
        exc = _exception_attrs(row)
        if exc is not None:
            event = sp.events.add()
            event.time_unix_nano = end
            event.name = "exception"
            _pb_attrs(event.attributes, exc)
    return request


def logs_request(rows: Iterable[Row]) -> ExportLogsServiceRequest:
    """An ``ExportLogsServiceRequest`` with a ``LogRecord`` for every kind 0 row."""
    request = ExportLogsServiceRequest()
    groups: dict[tuple[Any, Any, Any, Any], Any] = {}
    for row in rows:
        if row[_KIND] != 0:
            continue
        key = _resource_key(row)
        records = groups.get(key)
        if records is None:
            rl = request.resource_logs.add()
            _pb_resource(rl.resource, key)
            sl = rl.scope_logs.add()
            sl.scope.name = SCOPE_NAME
            sl.scope.version = __version__
            records = groups[key] = sl.log_records
        rec = records.add()
        rec.time_unix_nano = row[_TS]
        rec.observed_time_unix_nano = row[_TS]
        level = row[_LEVEL]
        rec.severity_number = severity_number(level)
        rec.severity_text = _severity_text(level)
        if row[_MESSAGE] is not None:
            rec.body.string_value = row[_MESSAGE]
        attrs = _log_attrs(row)
        if attrs:
            _pb_attrs(rec.attributes, attrs)
        trace_id = _trace_bytes(row[_TRACE_ID])
        if trace_id is not None:
            rec.trace_id = trace_id
            span_id = _span_bytes(row[_SPAN_ID])
            if span_id is not None:
                rec.span_id = span_id
    return request


# -- OTLP/JSON: ids as hex, 64-bit integers as decimal strings, enums as integers, defaults
# omitted, lowerCamelCase keys (the spec's "JSON Protobuf Encoding").


def _json_value(value: Any, depth: int = 0) -> dict[str, Any]:
    t = type(value)
    if t is str:
        return {"stringValue": value}
    if t is bool:
        return {"boolValue": value}
    if t is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}
    if t is float:
        if math.isfinite(value):
            return {"doubleValue": value}
        return {
            "doubleValue": "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
        }
    if value is None:
        return {}
    if depth >= _MAX_DEPTH:
        return {"stringValue": "<too deep>"}
    if t is list or t is tuple:
        items = [_json_value(item, depth + 1) for item in value]
        return {"arrayValue": {"values": items} if items else {}}
    if t is dict:
        kvs = _json_attrs(value, depth + 1)
        return {"kvlistValue": {"values": kvs} if kvs else {}}
    return {"stringValue": str(value)}


def _json_attrs(attrs: Mapping[str, Any], depth: int = 0) -> list[dict[str, Any]]:
    return [
        {"key": key if type(key) is str else str(key), "value": _json_value(value, depth)}
        for key, value in attrs.items()
        if value is not None
    ]


def _json_resource(key: tuple[Any, Any, Any, Any]) -> dict[str, Any]:
    return {"attributes": _json_attrs(dict(_resource_items(key)))}


_JSON_SCOPE = {"name": SCOPE_NAME, "version": __version__}


def _dumps(document: Any) -> bytes:
    try:
        return orjson.dumps(document)
    except (orjson.JSONEncodeError, TypeError):
        # Lone surrogates in a hand-made row: the same replacement the encoder makes.
        return orjson.dumps(sanitize_value(document, 1 << 30))


def traces_json(rows: Iterable[Row]) -> bytes:
    """The OTLP/JSON form of :func:`traces_request`."""
    groups: dict[tuple[Any, Any, Any, Any], list[dict[str, Any]]] = {}
    for row in rows:
        kind = row[_KIND]
        if kind != 3 and kind != 2:
            continue
        trace_id = _trace_bytes(row[_TRACE_ID])
        span_id = _span_bytes(row[_SPAN_ID])
        if trace_id is None or span_id is None:
            continue
        attrs, span_kind = _span_attrs(row)
        end = _end_ns(row)
        span: dict[str, Any] = {"traceId": trace_id.hex(), "spanId": span_id.hex()}
        parent = _span_bytes(row[_PARENT_ID])
        if parent is not None:
            span["parentSpanId"] = parent.hex()
        if row[_NAME]:
            span["name"] = row[_NAME]
        span["kind"] = span_kind
        if row[_TS]:
            span["startTimeUnixNano"] = str(row[_TS])
        if end:
            span["endTimeUnixNano"] = str(end)
        if attrs:
            span["attributes"] = _json_attrs(attrs)
        exc = _exception_attrs(row)
        if exc is not None:
            span["events"] = [
                {"timeUnixNano": str(end), "name": "exception", "attributes": _json_attrs(exc)}
            ]
        status = row[_STATUS]
        if status == 2:
            span["status"] = {"code": _STATUS_ERROR}
            if row[_ERROR_MESSAGE]:
                span["status"]["message"] = row[_ERROR_MESSAGE]
        elif status == 1:
            span["status"] = {"code": 1}
        groups.setdefault(_resource_key(row), []).append(span)
    return _dumps(
        {
            "resourceSpans": [
                {
                    "resource": _json_resource(key),
                    "scopeSpans": [{"scope": _JSON_SCOPE, "spans": s}],
                }
                for key, s in groups.items()
            ]
        }
    )


def logs_json(rows: Iterable[Row]) -> bytes:
    """The OTLP/JSON form of :func:`logs_request`."""
    groups: dict[tuple[Any, Any, Any, Any], list[dict[str, Any]]] = {}
    for row in rows:
        if row[_KIND] != 0:
            continue
        level = row[_LEVEL]
        rec: dict[str, Any] = {}
        if row[_TS]:
            rec["timeUnixNano"] = str(row[_TS])
            rec["observedTimeUnixNano"] = str(row[_TS])
        rec["severityNumber"] = severity_number(level)
        rec["severityText"] = _severity_text(level)
        if row[_MESSAGE] is not None:
            rec["body"] = {"stringValue": row[_MESSAGE]}
        attrs = _log_attrs(row)
        if attrs:
            rec["attributes"] = _json_attrs(attrs)
        trace_id = _trace_bytes(row[_TRACE_ID])
        if trace_id is not None:
            rec["traceId"] = trace_id.hex()
            span_id = _span_bytes(row[_SPAN_ID])
            if span_id is not None:
                rec["spanId"] = span_id.hex()
        groups.setdefault(_resource_key(row), []).append(rec)
    return _dumps(
        {
            "resourceLogs": [
                {
                    "resource": _json_resource(key),
                    "scopeLogs": [{"scope": _JSON_SCOPE, "logRecords": r}],
                }
                for key, r in groups.items()
            ]
        }
    )


# ---- OTLP to rows ---------------------------------------------------------------------------


def _text(value: str, limit: int) -> str:
    if value.isascii() and len(value) <= limit and "\x00" not in value:
        return value
    return sanitize_text(value, limit)


def _key(key: str) -> str:
    if key.isascii() and len(key) <= _KEY_LIMIT and "\x00" not in key:
        return key
    # Cut, without a marker: a key is a name, and the marker would push it past the limit.
    return sanitize_text(key, len(key))[:_KEY_LIMIT]


class _Resource:
    """One resource's columns, and its other attributes (they go into every row's attrs)."""

    __slots__ = ("environment", "extra", "host", "pid", "service")

    def __init__(self, attrs: dict[str, Any]) -> None:
        service = attrs.get(_SERVICE_KEY)
        if isinstance(service, str):
            del attrs[_SERVICE_KEY]
        self.service = (
            _text(service, _SHORT_LIMIT) if isinstance(service, str) and service else None
        ) or _DEFAULT_SERVICE
        environment = None
        for key in _ENV_KEYS:
            value = attrs.get(key)
            if isinstance(value, str):
                del attrs[key]
                if environment is None and value:
                    environment = _text(value, _SHORT_LIMIT)
        self.environment = environment
        host = attrs.get(_HOST_KEY)
        if isinstance(host, str):
            del attrs[_HOST_KEY]
        self.host = _text(host, _SHORT_LIMIT) if isinstance(host, str) and host else None
        pid = attrs.get(_PID_KEY)
        if type(pid) is str and pid.isdigit() and len(pid) < 19:
            pid = int(pid)
        if type(pid) is int and _INT64_MIN <= pid <= _INT64_MAX:
            del attrs[_PID_KEY]
            self.pid: int | None = pid
        else:
            self.pid = None
        self.extra = attrs


def _attrs_json(attrs: dict[str, Any]) -> bytes | None:
    if not attrs:
        return None
    try:
        return orjson.dumps(attrs)
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps(sanitize_value(attrs, _VALUE_LIMIT))


def _pop_location(attrs: dict[str, Any]) -> str | None:
    path: Any = None
    for key in _FILE_KEYS:
        if key in attrs:
            value = attrs.pop(key)
            if path is None:
                path = value
    if path is None:
        return None
    line: Any = None
    for key in _LINE_KEYS:
        if key in attrs:
            value = attrs.pop(key)
            if line is None:
                line = value
    where = str(path) if line is None else f"{path}:{line}"
    return _text(where, _LOCATION_LIMIT)


def _pop_error(attrs: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    etype = attrs.pop(_EXC_TYPE, None)
    emsg = attrs.pop(_EXC_MESSAGE, None)
    stack = attrs.pop(_EXC_STACK, None)
    return (
        None if etype is None else _text(str(etype), _NAME_LIMIT),
        None if emsg is None else _text(str(emsg), _MESSAGE_LIMIT),
        None if stack is None else _text(str(stack), _STACK_LIMIT),
    )


class _Event(NamedTuple):
    ts: int
    name: str
    attrs: dict[str, Any]


def _span_rows(
    out: list[Row],
    res: _Resource,
    trace_id: str,
    span_id: int,
    parent_id: int | None,
    name: str,
    kind: int,
    start: int,
    end: int,
    code: int,
    status_message: str,
    attrs: dict[str, Any],
    events: list[_Event],
) -> None:
    """The span's row, then a log row for each of its events (shared by both decoders)."""
    if kind != _SPAN_KIND_INTERNAL and kind != 0:
        attrs[_KIND_KEY] = _KIND_NAMES.get(kind, kind)
    location = _pop_location(attrs) if attrs else None
    etype = emsg = stack = None
    failed = code == _STATUS_ERROR
    if failed:
        for i in range(len(events) - 1, -1, -1):
            if events[i].name == "exception":
                etype, emsg, stack = _pop_error(events.pop(i).attrs)
                break
        if emsg is None and status_message:
            emsg = _text(status_message, _MESSAGE_LIMIT)
    out.append(
        (
            start,
            3,
            40 if failed else 20,
            trace_id,
            span_id,
            parent_id,
            end - start if end > start else 0,
            code if code == 1 or code == 2 else 0,
            res.service,
            res.environment,
            res.host,
            res.pid,
            _text(name, _NAME_LIMIT) if name else None,
            None,
            _attrs_json(attrs),
            etype,
            emsg,
            stack,
            location,
        )
    )
    for event in events:
        ev_attrs = event.attrs
        is_exception = event.name == "exception"
        etype = emsg = stack = None
        if is_exception:
            etype, emsg, stack = _pop_error(ev_attrs)
        if res.extra:
            ev_attrs = {**res.extra, **ev_attrs}
        out.append(
            (
                event.ts or start,
                0,
                40 if is_exception else 20,
                trace_id,
                span_id,
                None,
                None,
                0,
                res.service,
                res.environment,
                res.host,
                res.pid,
                None,
                _text(event.name, _MESSAGE_LIMIT) if event.name else None,
                _attrs_json(ev_attrs),
                etype,
                emsg,
                stack,
                None,
            )
        )


def _log_row(
    res: _Resource,
    scope_name: str,
    ts: int,
    number: int,
    severity_text: str,
    message: str | None,
    attrs: dict[str, Any],
    trace_id: str | None,
    span_id: int | None,
    event_name: str,
) -> Row:
    logger = attrs.get(_LOGGER_KEY)
    if isinstance(logger, str):
        del attrs[_LOGGER_KEY]
    if isinstance(logger, str) and logger:
        name: str | None = _text(logger, _NAME_LIMIT)
    elif scope_name and scope_name != SCOPE_NAME:
        name = _text(scope_name, _NAME_LIMIT)
    else:
        name = None
    if event_name:
        attrs.setdefault("event.name", _text(event_name, _VALUE_LIMIT))
    location = _pop_location(attrs) if attrs else None
    etype, emsg, stack = _pop_error(attrs) if attrs else (None, None, None)
    if number <= 0 and not severity_text and (etype is not None or emsg is not None):
        level = 40
    else:
        level = level_from_severity(number, severity_text)
    return (
        ts or time.time_ns(),
        0,
        level,
        trace_id,
        span_id if trace_id is not None else None,
        None,
        None,
        0,
        res.service,
        res.environment,
        res.host,
        res.pid,
        name,
        message,
        _attrs_json(attrs),
        etype,
        emsg,
        stack,
        location,
    )


def _too_many(count: int, max_records: int, what: str) -> WireError:
    return WireError(f"{count} {what} in one request; at most {max_records} accepted", status=413)


def _format(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("application/x-protobuf", "application/protobuf"):
        return "protobuf"
    if media == "application/json":
        return "json"
    raise WireError(
        f"unsupported content type {content_type!r}: expected application/x-protobuf "
        "or application/json",
        status=415,
    )


# -- protobuf


def _pb_any(av: Any, depth: int) -> Any:
    which = av.WhichOneof("value")
    if which == "string_value":
        return _text(av.string_value, _VALUE_LIMIT)
    if which == "int_value":
        return av.int_value
    if which == "bool_value":
        return av.bool_value
    if which == "double_value":
        return av.double_value
    if which is None:
        return None
    if depth >= _MAX_DEPTH:
        return "<too deep>"
    if which == "array_value":
        return [_pb_any(item, depth + 1) for item in av.array_value.values]
    if which == "kvlist_value":
        out: dict[str, Any] = {}
        _pb_into(out, av.kvlist_value.values, depth + 1)
        return out
    if which == "bytes_value":
        return base64.b64encode(av.bytes_value).decode("ascii")
    return None


def _pb_into(out: dict[str, Any], kvs: Any, depth: int = 0) -> None:
    # The hot loop of decoding. Most attribute values are strings, and a non-empty
    # ``string_value`` answers in one call what WhichOneof and getattr answer in two.
    for kv in kvs:
        key = kv.key
        if not key.isascii() or len(key) > _KEY_LIMIT or "\x00" in key:
            key = _key(key)
        av = kv.value
        value = av.string_value
        if value:
            if not value.isascii() or len(value) > _VALUE_LIMIT or "\x00" in value:
                value = sanitize_text(value, _LONG_VALUES.get(key, _VALUE_LIMIT))
        else:
            which = av.WhichOneof("value")
            if which is None:
                continue
            value = getattr(av, which)
            t = type(value)
            if t is not int and t is not bool and t is not float and t is not str:
                value = _pb_any(av, depth)
        out[key] = value


def _pb_resource_of(resource: Any) -> _Resource:
    attrs: dict[str, Any] = {}
    _pb_into(attrs, resource.attributes)
    return _Resource(attrs)


def _pb_trace_id(raw: bytes, where: str) -> str | None:
    """A log's optional trace id: absent, or 16 bytes (all zero counts as absent)."""
    if not raw:
        return None
    if len(raw) != 16:
        raise WireError(f"{where}.trace_id: expected 16 bytes, got {len(raw)}")
    return None if raw == _ZERO16 else raw.hex()


def _pb_span_id(raw: bytes, where: str, field: str) -> int | None:
    """An optional span id: absent, or 8 bytes (all zero counts as absent)."""
    if not raw:
        return None
    if len(raw) != 8:
        raise WireError(f"{where}.{field}: expected 8 bytes, got {len(raw)}")
    value: int = _unpack_q(raw)[0]
    return value or None


def _pb_required(raw: bytes, where: str, field: str, size: int) -> WireError:
    if len(raw) != size:
        return WireError(f"{where}.{field}: expected {size} bytes, got {len(raw)}")
    return WireError(f"{where}.{field}: all zero (not a valid id)")


def _parse(message: Any, body: bytes, what: str) -> None:
    try:
        message.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError, TypeError) as exc:
        raise WireError(f"invalid protobuf {what}: {exc or 'cannot parse'}") from None


def _decode_traces_pb(body: bytes, max_records: int) -> list[Row]:
    request = ExportTraceServiceRequest()
    _parse(request, body, "ExportTraceServiceRequest")
    count = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            count += len(ss.spans)
    if count > max_records:
        raise _too_many(count, max_records, "spans")
    out: list[Row] = []
    append = out.append
    budget = max_records - count  # rows beyond one per span: span events
    last_raw: bytes | None = None  # None never equals a trace id, not even an empty one
    trace_id = ""
    for i, rs in enumerate(request.resource_spans):
        res = _pb_resource_of(rs.resource)
        extra = res.extra
        service, environment, host, pid = res.service, res.environment, res.host, res.pid
        for j, ss in enumerate(rs.scope_spans):
            for k, sp in enumerate(ss.spans):
                raw = sp.trace_id
                if raw != last_raw:
                    # Spans of one trace travel together: their hex text is made once, shared.
                    if len(raw) != 16 or raw == _ZERO16:
                        raise _pb_required(raw, _pb_where(i, j, k), "trace_id", 16)
                    last_raw, trace_id = raw, raw.hex()
                raw = sp.span_id
                if len(raw) != 8 or raw == _ZERO8:
                    raise _pb_required(raw, _pb_where(i, j, k), "span_id", 8)
                span_id: int = _unpack_q(raw)[0]
                raw = sp.parent_span_id
                if not raw:
                    parent_id = None
                elif len(raw) == 8:
                    parent_id = _unpack_q(raw)[0] or None
                else:
                    parent_id = _pb_span_id(raw, _pb_where(i, j, k), "parent_span_id")
                start = sp.start_time_unix_nano
                if not start:
                    raise WireError(f"{_pb_where(i, j, k)}.start_time_unix_nano: missing")
                attrs: dict[str, Any] = dict(extra) if extra else {}
                _pb_into(attrs, sp.attributes)
                code = sp.status.code
                n_events = len(sp.events)
                if n_events or code == _STATUS_ERROR:
                    events: list[_Event] = []
                    budget -= n_events
                    if budget < 0:
                        raise _too_many(max_records - budget, max_records, "spans and events")
                    for ev in sp.events:
                        ev_attrs: dict[str, Any] = {}
                        _pb_into(ev_attrs, ev.attributes)
                        events.append(_Event(ev.time_unix_nano, ev.name, ev_attrs))
                    _span_rows(
                        out,
                        res,
                        trace_id,
                        span_id,
                        parent_id,
                        sp.name,
                        sp.kind,
                        start,
                        sp.end_time_unix_nano,
                        code,
                        sp.status.message,
                        attrs,
                        events,
                    )
                    continue
                # The common span, no events and no failure: its row is built right here.
                kind = sp.kind
                if kind > 1:
                    attrs[_KIND_KEY] = _KIND_NAMES.get(kind, kind)
                location = (
                    _pop_location(attrs)
                    if _FILE_KEYS[0] in attrs or _FILE_KEYS[1] in attrs
                    else None
                )
                name = sp.name
                if not name.isascii() or len(name) > _NAME_LIMIT or "\x00" in name:
                    name = _text(name, _NAME_LIMIT)
                end = sp.end_time_unix_nano
                append(
                    (
                        start,
                        3,
                        20,
                        trace_id,
                        span_id,
                        parent_id,
                        end - start if end > start else 0,
                        1 if code == 1 else 0,
                        service,
                        environment,
                        host,
                        pid,
                        name or None,
                        None,
                        _attrs_json(attrs),
                        None,
                        None,
                        None,
                        location,
                    )
                )
    return out


def _pb_where(i: int, j: int, k: int) -> str:
    return f"resource_spans[{i}].scope_spans[{j}].spans[{k}]"


def _pb_body(av: Any) -> str | None:
    which = av.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        return _text(av.string_value, _MESSAGE_LIMIT)
    value = _pb_any(av, 0)
    text = orjson.dumps(value).decode("utf-8")
    return _text(text, _MESSAGE_LIMIT)


def _decode_logs_pb(body: bytes, max_records: int) -> list[Row]:
    request = ExportLogsServiceRequest()
    _parse(request, body, "ExportLogsServiceRequest")
    count = 0
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            count += len(sl.log_records)
    if count > max_records:
        raise _too_many(count, max_records, "log records")
    out: list[Row] = []
    for i, rl in enumerate(request.resource_logs):
        res = _pb_resource_of(rl.resource)
        extra = res.extra
        for j, sl in enumerate(rl.scope_logs):
            scope_name = sl.scope.name
            for k, rec in enumerate(sl.log_records):
                where = f"resource_logs[{i}].scope_logs[{j}].log_records[{k}]"
                trace_id = _pb_trace_id(rec.trace_id, where)
                span_id = _pb_span_id(rec.span_id, where, "span_id")
                attrs: dict[str, Any] = dict(extra) if extra else {}
                _pb_into(attrs, rec.attributes)
                out.append(
                    _log_row(
                        res,
                        scope_name,
                        rec.time_unix_nano or rec.observed_time_unix_nano,
                        rec.severity_number,
                        rec.severity_text,
                        _pb_body(rec.body),
                        attrs,
                        trace_id,
                        span_id,
                        rec.event_name,
                    )
                )
    return out


# -- JSON


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _j_list(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise WireError(f"{where}.{key}: expected an array, got {_jtype(value)}")
    return value


def _j_obj(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise WireError(f"{where}: expected an object, got {_jtype(value)}")
    return value


def _j_sub(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    return _j_obj(value, f"{where}.{key}")


def _j_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise WireError(f"{where}.{key}: expected a string, got {_jtype(value)}")
    return value


def _j_int(value: Any, where: str, lo: int, hi: int) -> int:
    """A 64-bit integer field: a JSON number or a decimal string (the encoders write strings)."""
    if type(value) is int:
        number = value
    elif type(value) is str:
        text = value.strip()
        digits = text[1:] if text[:1] == "-" else text
        if not digits.isdigit() or not digits.isascii():
            raise WireError(f"{where}: expected an integer, got {value[:40]!r}")
        number = int(text)
    elif type(value) is float and value.is_integer():
        number = int(value)
    else:
        raise WireError(f"{where}: expected an integer, got {_jtype(value)}")
    if not lo <= number <= hi:
        raise WireError(f"{where}: {number} is out of range")
    return number


def _j_u64(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    return _j_int(value, f"{where}.{key}", 0, _UINT64_MAX)


def _j_enum(obj: dict[str, Any], key: str, where: str, names: Mapping[str, int]) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if type(value) is int:
        return value
    if type(value) is str and value in names:
        return names[value]
    raise WireError(f"{where}.{key}: expected an integer enum value, got {_jtype(value)}")


def _j_hex(obj: dict[str, Any], key: str, where: str, size: int) -> bytes | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise WireError(f"{where}.{key}: expected a hex string, got {_jtype(value)}")
    if len(value) == 2 * size and value.isascii() and value.isalnum():
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise WireError(f"{where}.{key}: expected {2 * size} hex digits, got {value[:40]!r}")


def _j_any(value: Any, where: str, depth: int, limit: int = _VALUE_LIMIT) -> Any:
    av = _j_obj(value, where)
    if not av:
        return None
    if "stringValue" in av:
        return _text(_j_str(av, "stringValue", where), limit)
    if "intValue" in av:
        return _j_int(av["intValue"], f"{where}.intValue", _INT64_MIN, _INT64_MAX)
    if "boolValue" in av:
        flag = av["boolValue"]
        if type(flag) is not bool:
            raise WireError(f"{where}.boolValue: expected a boolean, got {_jtype(flag)}")
        return flag
    if "doubleValue" in av:
        number = av["doubleValue"]
        if type(number) in (int, float):
            return float(number)
        if number in ("NaN", "Infinity", "-Infinity"):
            return float(number)
        raise WireError(f"{where}.doubleValue: expected a number, got {_jtype(number)}")
    if depth >= _MAX_DEPTH:
        return "<too deep>"
    if "arrayValue" in av:
        arr = _j_sub(av, "arrayValue", where)
        inner = f"{where}.arrayValue.values"
        return [
            _j_any(item, f"{inner}[{n}]", depth + 1)
            for n, item in enumerate(_j_list(arr, "values", f"{where}.arrayValue"))
        ]
    if "kvlistValue" in av:
        kvl = _j_sub(av, "kvlistValue", where)
        out: dict[str, Any] = {}
        values = _j_list(kvl, "values", f"{where}.kvlistValue")
        _j_into(out, values, f"{where}.kvlistValue.values", depth + 1)
        return out
    if "bytesValue" in av:
        raw = _j_str(av, "bytesValue", where)
        try:
            base64.b64decode(raw, validate=True)
        except ValueError:
            raise WireError(f"{where}.bytesValue: expected base64") from None
        return raw
    return None  # an unknown kind of value: ignored, as unknown fields are


def _j_into(out: dict[str, Any], kvs: list[Any], where: str, depth: int = 0) -> None:
    for n, item in enumerate(kvs):
        at = f"{where}[{n}]"
        kv = _j_obj(item, at)
        key = _j_str(kv, "key", at)
        limit = _LONG_VALUES.get(key, _VALUE_LIMIT) if depth == 0 else _VALUE_LIMIT
        value = _j_any(kv.get("value") or {}, f"{at}.value", depth, limit)
        if value is not None:
            out[_key(key)] = value


def _j_attrs(out: dict[str, Any], obj: dict[str, Any], where: str) -> None:
    items = obj.get("attributes")
    if items:
        _j_into(out, _j_list(obj, "attributes", where), f"{where}.attributes")


def _j_resource(obj: dict[str, Any], where: str) -> _Resource:
    resource = _j_sub(obj, "resource", where)
    attrs: dict[str, Any] = {}
    _j_attrs(attrs, resource, f"{where}.resource")
    return _Resource(attrs)


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"invalid JSON: {exc}") from None
    return _j_obj(document, "request body")


_SPAN_KINDS = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_SEVERITY_NAMES = {
    f"SEVERITY_NUMBER_{name}{'' if n == 1 else n}": base + n - 1
    for name, base in (
        ("TRACE", 1),
        ("DEBUG", 5),
        ("INFO", 9),
        ("WARN", 13),
        ("ERROR", 17),
        ("FATAL", 21),
    )
    for n in range(1, 5)
}


def _j_count(document: dict[str, Any], outer: str, middle: str, inner: str) -> int:
    count = 0
    for res in document.get(outer) or ():
        if type(res) is dict:
            for scope in res.get(middle) or ():
                if type(scope) is dict and type(scope.get(inner)) is list:
                    count += len(scope[inner])
    return count


def _decode_traces_json(body: bytes, max_records: int) -> list[Row]:
    document = _load_json(body)
    count = _j_count(document, "resourceSpans", "scopeSpans", "spans")
    if count > max_records:
        raise _too_many(count, max_records, "spans")
    budget = max_records - count
    out: list[Row] = []
    for i, item in enumerate(_j_list(document, "resourceSpans", "request")):
        where_r = f"resourceSpans[{i}]"
        rs = _j_obj(item, where_r)
        res = _j_resource(rs, where_r)
        for j, scope_item in enumerate(_j_list(rs, "scopeSpans", where_r)):
            where_s = f"{where_r}.scopeSpans[{j}]"
            ss = _j_obj(scope_item, where_s)
            for k, span_item in enumerate(_j_list(ss, "spans", where_s)):
                where = f"{where_s}.spans[{k}]"
                sp = _j_obj(span_item, where)
                trace_raw = _j_hex(sp, "traceId", where, 16)
                if trace_raw is None or trace_raw == bytes(16):
                    raise WireError(f"{where}.traceId: missing or all zero")
                span_raw = _j_hex(sp, "spanId", where, 8)
                if span_raw is None or span_raw == bytes(8):
                    raise WireError(f"{where}.spanId: missing or all zero")
                parent_raw = _j_hex(sp, "parentSpanId", where, 8)
                start = _j_u64(sp, "startTimeUnixNano", where)
                if not start:
                    raise WireError(f"{where}.startTimeUnixNano: missing")
                attrs: dict[str, Any] = dict(res.extra) if res.extra else {}
                _j_attrs(attrs, sp, where)
                events: list[_Event] = []
                ev_items = _j_list(sp, "events", where)
                budget -= len(ev_items)
                if budget < 0:
                    raise _too_many(max_records - budget, max_records, "spans and events")
                for n, ev_item in enumerate(ev_items):
                    where_e = f"{where}.events[{n}]"
                    ev = _j_obj(ev_item, where_e)
                    ev_attrs: dict[str, Any] = {}
                    _j_attrs(ev_attrs, ev, where_e)
                    events.append(
                        _Event(
                            _j_u64(ev, "timeUnixNano", where_e),
                            _j_str(ev, "name", where_e),
                            ev_attrs,
                        )
                    )
                status = _j_sub(sp, "status", where)
                _span_rows(
                    out,
                    res,
                    trace_raw.hex(),
                    _unpack_q(span_raw)[0],
                    _unpack_q(parent_raw)[0] or None if parent_raw is not None else None,
                    _j_str(sp, "name", where),
                    _j_enum(sp, "kind", where, _SPAN_KINDS),
                    start,
                    _j_u64(sp, "endTimeUnixNano", where),
                    _j_enum(status, "code", f"{where}.status", _STATUS_CODES),
                    _j_str(status, "message", f"{where}.status"),
                    attrs,
                    events,
                )
    return out


def _j_body(rec: dict[str, Any], where: str) -> str | None:
    if rec.get("body") is None:
        return None
    value = _j_any(rec["body"], f"{where}.body", 0)
    if value is None:
        return None
    if isinstance(value, str):
        return _text(value, _MESSAGE_LIMIT)
    return _text(orjson.dumps(value).decode("utf-8"), _MESSAGE_LIMIT)


def _decode_logs_json(body: bytes, max_records: int) -> list[Row]:
    document = _load_json(body)
    count = _j_count(document, "resourceLogs", "scopeLogs", "logRecords")
    if count > max_records:
        raise _too_many(count, max_records, "log records")
    out: list[Row] = []
    for i, item in enumerate(_j_list(document, "resourceLogs", "request")):
        where_r = f"resourceLogs[{i}]"
        rl = _j_obj(item, where_r)
        res = _j_resource(rl, where_r)
        for j, scope_item in enumerate(_j_list(rl, "scopeLogs", where_r)):
            where_s = f"{where_r}.scopeLogs[{j}]"
            sl = _j_obj(scope_item, where_s)
            scope_name = _j_str(_j_sub(sl, "scope", where_s), "name", f"{where_s}.scope")
            for k, rec_item in enumerate(_j_list(sl, "logRecords", where_s)):
                where = f"{where_s}.logRecords[{k}]"
                rec = _j_obj(rec_item, where)
                trace_raw = _j_hex(rec, "traceId", where, 16)
                span_raw = _j_hex(rec, "spanId", where, 8)
                trace_id = trace_raw.hex() if trace_raw is not None else None
                if trace_id == _ZERO_TRACE:
                    trace_id = None
                span_id = _unpack_q(span_raw)[0] or None if span_raw is not None else None
                attrs: dict[str, Any] = dict(res.extra) if res.extra else {}
                _j_attrs(attrs, rec, where)
                out.append(
                    _log_row(
                        res,
                        scope_name,
                        _j_u64(rec, "timeUnixNano", where)
                        or _j_u64(rec, "observedTimeUnixNano", where),
                        _j_enum(rec, "severityNumber", where, _SEVERITY_NAMES),
                        _j_str(rec, "severityText", where),
                        _j_body(rec, where),
                        attrs,
                        trace_id,
                        span_id,
                        _j_str(rec, "eventName", where),
                    )
                )
    return out


def decode_traces(body: bytes, content_type: str, *, max_records: int = 100_000) -> list[Row]:
    """Rows for an OTLP ``ExportTraceServiceRequest`` (protobuf or JSON, already decompressed).

    Each span is a kind 3 row; its events are log rows linked to it. Raises
    :class:`~atrace.errors.WireError` for anything malformed (400), more than ``max_records``
    spans and events (413), or another content type (415); never returns part of a body.
    """
    if _format(content_type) == "json":
        return _decode_traces_json(body, max_records)
    return _decode_traces_pb(body, max_records)


def decode_logs(body: bytes, content_type: str, *, max_records: int = 100_000) -> list[Row]:
    """Rows for an OTLP ``ExportLogsServiceRequest`` (protobuf or JSON, already decompressed).

    Each log record is a kind 0 row. Errors as for :func:`decode_traces`.
    """
    if _format(content_type) == "json":
        return _decode_logs_json(body, max_records)
    return _decode_logs_pb(body, max_records)
