"""atrace rows as OTLP/JSON requests: the JSON form of what ``_otlp_encode`` builds."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from ..._pipeline.sanitize import sanitize_value
from ..._records import (
    KIND,
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
from .common import (
    INT64_MAX,
    INT64_MIN,
    MAX_ANY_DEPTH,
)
from .encode import (
    STATUS_UNSET,
    Origin,
    end_ns,
    event_rows_by_span,
    log_attrs,
    log_fields,
    log_rows,
    origin_key,
    origin_of,
    restore_types,
    row_doc,
    span_attrs,
    span_bytes,
    span_events,
    span_flags,
    span_links,
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
    if t is bytes:
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
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


def _json_origin(origin: Origin, items_key: str, items: list[Any]) -> dict[str, Any]:
    # A resourceSpans/resourceLogs entry with its one scopeSpans/scopeLogs for ``origin``.
    resource, scope = origin.resource, origin.scope
    res: dict[str, Any] = {}
    if resource.get("attrs"):
        res["attributes"] = _json_attrs(resource["attrs"])
    sc: dict[str, Any] = {}
    for key in ("name", "version"):
        if scope.get(key):
            sc[key] = scope[key]
    if scope.get("attrs"):
        sc["attributes"] = _json_attrs(scope["attrs"])
    scoped: dict[str, Any] = {"scope": sc, items_key: items}
    if scope.get("schema_url"):
        scoped["schemaUrl"] = scope["schema_url"]
    outer = "scopeSpans" if items_key == "spans" else "scopeLogs"
    envelope: dict[str, Any] = {"resource": res, outer: [scoped]}
    if resource.get("schema_url"):
        envelope["schemaUrl"] = resource["schema_url"]
    return envelope


def _dumps(document: Any) -> bytes:
    try:
        return orjson.dumps(document)
    except (orjson.JSONEncodeError, TypeError):
        # Lone surrogates in a hand-made row: the same replacement the encoder makes.
        return orjson.dumps(sanitize_value(document, 1 << 30))


def _json_event(when: int, name: str, attrs: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {"timeUnixNano": str(when)}
    if name:
        event["name"] = name
    if attrs:
        event["attributes"] = _json_attrs(attrs)
    return event


def _json_link(tid: bytes, sid: bytes, state: str, flags: int, attrs: Any) -> dict[str, Any]:
    link: dict[str, Any] = {"traceId": tid.hex(), "spanId": sid.hex()}
    if state:
        link["traceState"] = state
    if attrs:
        link["attributes"] = _json_attrs(attrs)
    if flags:
        link["flags"] = flags
    return link


def traces_json(rows: Iterable[Row], resources: Mapping[int, Any] | None = None) -> bytes:
    """The OTLP/JSON form of :func:`traces_request`."""
    groups: dict[Any, tuple[Origin, list[dict[str, Any]]]] = {}
    rows = list(rows)
    events_of = event_rows_by_span(rows)
    for row in rows:
        kind = row[KIND]
        if kind != Kind.SPAN and kind != Kind.SPAN_END:
            continue
        trace_id = trace_bytes(row[TRACE_ID])
        span_id = span_bytes(row[SPAN_ID])
        if trace_id is None or span_id is None:
            continue
        doc = row_doc(row)
        attrs, span_kind = span_attrs(row)
        attrs = restore_types(attrs, "/attrs", doc.get("types"))
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
        flags = span_flags(row, doc)
        if flags is not None:
            span["flags"] = flags
        if row[TS]:
            span["startTimeUnixNano"] = str(row[TS])
        if end:
            span["endTimeUnixNano"] = str(end)
        if attrs:
            span["attributes"] = _json_attrs(attrs)
        dropped = doc.get("dropped_attributes")
        if type(dropped) is int and dropped > 0:
            span["droppedAttributesCount"] = dropped
        events = span_events(row, doc, events_of.get((trace_id, span_id), []))
        if events:
            span["events"] = [_json_event(*event) for event in events]
        links = span_links(row, doc)
        if links:
            span["links"] = [_json_link(*link) for link in links]
        code, message = span_status(row)
        if code != STATUS_UNSET:
            span["status"] = {"code": code, "message": message} if message else {"code": code}
        key = origin_key(row)
        if key not in groups:
            groups[key] = (origin_of(row, resources), [])
        groups[key][1].append(span)
    return _dumps(
        {"resourceSpans": [_json_origin(origin, "spans", s) for origin, s in groups.values()]}
    )


def logs_json(rows: Iterable[Row], resources: Mapping[int, Any] | None = None) -> bytes:
    """The OTLP/JSON form of :func:`logs_request`."""
    groups: dict[Any, tuple[Origin, list[dict[str, Any]]]] = {}
    for row in log_rows(rows):
        key = origin_key(row)
        if key not in groups:
            groups[key] = (origin_of(row, resources), [])
        origin, records = groups[key]
        doc = row_doc(row)
        time_ns, observed, number, text, body, event_name = log_fields(row, doc)
        rec: dict[str, Any] = {}
        if time_ns:
            rec["timeUnixNano"] = str(time_ns)
        if observed:
            rec["observedTimeUnixNano"] = str(observed)
        if number:
            rec["severityNumber"] = number
        if text:
            rec["severityText"] = text
        if body is not None:
            rec["body"] = _json_value(body)
        if event_name:
            rec["eventName"] = event_name
        attrs = restore_types(log_attrs(row, origin), "/attrs", doc.get("types"))
        if attrs:
            rec["attributes"] = _json_attrs(attrs)
        dropped = doc.get("dropped_attributes")
        if type(dropped) is int and dropped > 0:
            rec["droppedAttributesCount"] = dropped
        trace_id = trace_bytes(row[TRACE_ID])
        if trace_id is not None:
            rec["traceId"] = trace_id.hex()
            span_id = span_bytes(row[SPAN_ID])
            if span_id is not None:
                rec["spanId"] = span_id.hex()
        if row[TRACE_FLAGS] is not None:
            rec["flags"] = row[TRACE_FLAGS] & 0xFF
        records.append(rec)
    return _dumps(
        {"resourceLogs": [_json_origin(origin, "logRecords", r) for origin, r in groups.values()]}
    )
