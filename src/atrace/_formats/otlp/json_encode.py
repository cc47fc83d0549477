"""atrace rows as OTLP/JSON requests: the JSON form of what ``_otlp_encode`` builds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from ..._pipeline.sanitize import sanitize_value
from ..._records import (
    KIND,
    LEVEL,
    MESSAGE,
    NAME,
    PARENT_ID,
    SPAN_ID,
    TRACE_FLAGS,
    TRACE_ID,
    TRACE_STATE,
    TS,
    Kind,
    Row,
)
from ..._version import __version__
from .common import (
    INT64_MAX,
    INT64_MIN,
    MAX_ANY_DEPTH,
    SCOPE_NAME,
    logging_severity_text,
    severity_number,
)
from .encode import (
    STATUS_UNSET,
    end_ns,
    exception_attrs,
    log_attrs,
    resource_items,
    resource_key,
    span_attrs,
    span_bytes,
    span_status,
    trace_bytes,
)

# -- OTLP/JSON: ids as hex, 64-bit integers as decimal strings, enums as integers, defaults
# omitted, lowerCamelCase keys (the spec's "JSON Protobuf Encoding").


def _json_value(value: Any, depth: int = 0) -> dict[str, Any]:
    t = type(value)
    if t is str:
        return {"stringValue": value}
    if t is bool:
        return {"boolValue": value}
    if t is int:
        if INT64_MIN <= value <= INT64_MAX:
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
    if depth >= MAX_ANY_DEPTH:
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
    return {"attributes": _json_attrs(dict(resource_items(key)))}


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
        kind = row[KIND]
        if kind != Kind.SPAN and kind != Kind.SPAN_END:
            continue
        trace_id = trace_bytes(row[TRACE_ID])
        span_id = span_bytes(row[SPAN_ID])
        if trace_id is None or span_id is None:
            continue
        attrs, span_kind = span_attrs(row)
        end = end_ns(row)
        span: dict[str, Any] = {"traceId": trace_id.hex(), "spanId": span_id.hex()}
        parent = span_bytes(row[PARENT_ID])
        if parent is not None:
            span["parentSpanId"] = parent.hex()
        if row[NAME]:
            span["name"] = row[NAME]
        span["kind"] = span_kind
        if row[TRACE_STATE]:
            span["traceState"] = row[TRACE_STATE]
        if row[TRACE_FLAGS] is not None:
            span["flags"] = row[TRACE_FLAGS] & 0xFF
        if row[TS]:
            span["startTimeUnixNano"] = str(row[TS])
        if end:
            span["endTimeUnixNano"] = str(end)
        if attrs:
            span["attributes"] = _json_attrs(attrs)
        exc = exception_attrs(row)
        if exc is not None:
            span["events"] = [
                {"timeUnixNano": str(end), "name": "exception", "attributes": _json_attrs(exc)}
            ]
        code, message = span_status(row)
        if code != STATUS_UNSET:
            span["status"] = {"code": code, "message": message} if message else {"code": code}
        groups.setdefault(resource_key(row), []).append(span)
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
        if row[KIND] != Kind.LOG:
            continue
        level = row[LEVEL]
        rec: dict[str, Any] = {}
        if row[TS]:
            rec["timeUnixNano"] = str(row[TS])
            rec["observedTimeUnixNano"] = str(row[TS])
        rec["severityNumber"] = severity_number(level)
        rec["severityText"] = logging_severity_text(level)
        if row[MESSAGE] is not None:
            rec["body"] = {"stringValue": row[MESSAGE]}
        attrs = log_attrs(row)
        if attrs:
            rec["attributes"] = _json_attrs(attrs)
        trace_id = trace_bytes(row[TRACE_ID])
        if trace_id is not None:
            rec["traceId"] = trace_id.hex()
            span_id = span_bytes(row[SPAN_ID])
            if span_id is not None:
                rec["spanId"] = span_id.hex()
        groups.setdefault(resource_key(row), []).append(rec)
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
