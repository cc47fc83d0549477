"""OTLP/JSON requests as atrace rows (what the collector runs for JSON bodies)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import orjson

from ..._records import Row
from ...errors import WireError
from ..resources import double
from .common import (
    INT64_MAX,
    INT64_MIN,
    MAX_ANY_DEPTH,
    UINT32_MAX,
    UINT64_MAX,
)
from .rows import (
    LONG_VALUE_CHARS,
    MESSAGE_CHARS,
    VALUE_CHARS,
    Event,
    Link,
    Resource,
    clean_key,
    clean_text,
    log_row,
    origin,
    span_rows,
    too_many,
    unpack_q,
)

_ZERO_TRACE = "0" * 32


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
    return _j_int(value, f"{where}.{key}", 0, UINT64_MAX)


def _j_u32(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    return _j_int(value, f"{where}.{key}", 0, UINT32_MAX)


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


def _j_any(value: Any, where: str, depth: int, limit: int = VALUE_CHARS) -> Any:
    av = _j_obj(value, where)
    if not av:
        return None
    if "stringValue" in av:
        return clean_text(_j_str(av, "stringValue", where), limit)
    if "intValue" in av:
        return _j_int(av["intValue"], f"{where}.intValue", INT64_MIN, INT64_MAX)
    if "boolValue" in av:
        flag = av["boolValue"]
        if type(flag) is not bool:
            raise WireError(f"{where}.boolValue: expected a boolean, got {_jtype(flag)}")
        return flag
    if "doubleValue" in av:
        number = av["doubleValue"]
        if type(number) in (int, float):
            return double(float(number))
        if number in ("NaN", "Infinity", "-Infinity"):
            return double(float(number))
        raise WireError(f"{where}.doubleValue: expected a number, got {_jtype(number)}")
    if depth >= MAX_ANY_DEPTH:
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
            return base64.b64decode(raw, validate=True)  # bytes: the row notes the type
        except ValueError:
            raise WireError(f"{where}.bytesValue: expected base64") from None
    return None  # an unknown kind of value: ignored, as unknown fields are


def _j_into(out: dict[str, Any], kvs: list[Any], where: str, depth: int = 0) -> None:
    for n, item in enumerate(kvs):
        at = f"{where}[{n}]"
        kv = _j_obj(item, at)
        key = _j_str(kv, "key", at)
        limit = LONG_VALUE_CHARS.get(key, VALUE_CHARS) if depth == 0 else VALUE_CHARS
        value = _j_any(kv.get("value") or {}, f"{at}.value", depth, limit)
        if value is not None:
            out[clean_key(key)] = value


def _j_attrs(out: dict[str, Any], obj: dict[str, Any], where: str) -> None:
    items = obj.get("attributes")
    if items:
        _j_into(out, _j_list(obj, "attributes", where), f"{where}.attributes")


def _j_resource(obj: dict[str, Any], where: str) -> Resource:
    resource = _j_sub(obj, "resource", where)
    attrs: dict[str, Any] = {}
    _j_attrs(attrs, resource, f"{where}.resource")
    return Resource(attrs, _j_str(obj, "schemaUrl", where))


def _j_origin(
    res: Resource, envelope: dict[str, Any], where: str, docs: dict[int, bytes] | None
) -> int | None:
    scope = _j_sub(envelope, "scope", where)
    attrs: dict[str, Any] = {}
    _j_attrs(attrs, scope, f"{where}.scope")
    return origin(
        res,
        _j_str(scope, "name", f"{where}.scope"),
        _j_str(scope, "version", f"{where}.scope"),
        attrs,
        _j_str(envelope, "schemaUrl", where),
        docs,
    )


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


def decode_traces_json(
    body: bytes, max_records: int, resources: dict[int, bytes] | None = None
) -> list[Row]:
    document = _load_json(body)
    count = _j_count(document, "resourceSpans", "scopeSpans", "spans")
    if count > max_records:
        raise too_many(count, max_records, "spans")
    budget = max_records - count
    out: list[Row] = []
    for i, item in enumerate(_j_list(document, "resourceSpans", "request")):
        where_r = f"resourceSpans[{i}]"
        rs = _j_obj(item, where_r)
        res = _j_resource(rs, where_r)
        for j, scope_item in enumerate(_j_list(rs, "scopeSpans", where_r)):
            where_s = f"{where_r}.scopeSpans[{j}]"
            ss = _j_obj(scope_item, where_s)
            rid = _j_origin(res, ss, where_s, resources)
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
                attrs: dict[str, Any] = {}
                _j_attrs(attrs, sp, where)
                events: list[Event] = []
                ev_items = _j_list(sp, "events", where)
                budget -= len(ev_items)
                if budget < 0:
                    raise too_many(max_records - budget, max_records, "spans and events")
                for n, ev_item in enumerate(ev_items):
                    where_e = f"{where}.events[{n}]"
                    ev = _j_obj(ev_item, where_e)
                    ev_attrs: dict[str, Any] = {}
                    _j_attrs(ev_attrs, ev, where_e)
                    events.append(
                        Event(
                            _j_u64(ev, "timeUnixNano", where_e),
                            _j_str(ev, "name", where_e),
                            ev_attrs,
                        )
                    )
                links: list[Link] = []
                for n, link_item in enumerate(_j_list(sp, "links", where)):
                    where_l = f"{where}.links[{n}]"
                    link = _j_obj(link_item, where_l)
                    link_attrs: dict[str, Any] = {}
                    _j_attrs(link_attrs, link, where_l)
                    links.append(
                        Link(
                            _j_hex(link, "traceId", where_l, 16) or bytes(16),
                            _j_hex(link, "spanId", where_l, 8) or bytes(8),
                            _j_str(link, "traceState", where_l),
                            _j_u32(link, "flags", where_l),
                            link_attrs,
                        )
                    )
                status = _j_sub(sp, "status", where)
                span_rows(
                    out,
                    res,
                    trace_raw.hex(),
                    unpack_q(span_raw)[0],
                    unpack_q(parent_raw)[0] or None if parent_raw is not None else None,
                    _j_str(sp, "name", where),
                    _j_enum(sp, "kind", where, _SPAN_KINDS),
                    start,
                    _j_u64(sp, "endTimeUnixNano", where),
                    _j_enum(status, "code", f"{where}.status", _STATUS_CODES),
                    _j_str(status, "message", f"{where}.status"),
                    _j_str(sp, "traceState", where),
                    _j_u32(sp, "flags", where),
                    attrs,
                    events,
                    links,
                    rid,
                )
    return out


def _j_body(rec: dict[str, Any], where: str) -> Any:
    if rec.get("body") is None:
        return None
    return _j_any(rec["body"], f"{where}.body", 0, MESSAGE_CHARS)


def decode_logs_json(
    body: bytes, max_records: int, resources: dict[int, bytes] | None = None
) -> list[Row]:
    document = _load_json(body)
    count = _j_count(document, "resourceLogs", "scopeLogs", "logRecords")
    if count > max_records:
        raise too_many(count, max_records, "log records")
    out: list[Row] = []
    for i, item in enumerate(_j_list(document, "resourceLogs", "request")):
        where_r = f"resourceLogs[{i}]"
        rl = _j_obj(item, where_r)
        res = _j_resource(rl, where_r)
        for j, scope_item in enumerate(_j_list(rl, "scopeLogs", where_r)):
            where_s = f"{where_r}.scopeLogs[{j}]"
            sl = _j_obj(scope_item, where_s)
            scope_name = _j_str(_j_sub(sl, "scope", where_s), "name", f"{where_s}.scope")
            rid = _j_origin(res, sl, where_s, resources)
            for k, rec_item in enumerate(_j_list(sl, "logRecords", where_s)):
                where = f"{where_s}.logRecords[{k}]"
                rec = _j_obj(rec_item, where)
                trace_raw = _j_hex(rec, "traceId", where, 16)
                span_raw = _j_hex(rec, "spanId", where, 8)
                trace_id = trace_raw.hex() if trace_raw is not None else None
                if trace_id == _ZERO_TRACE:
                    trace_id = None
                span_id = unpack_q(span_raw)[0] or None if span_raw is not None else None
                attrs: dict[str, Any] = {}
                _j_attrs(attrs, rec, where)
                out.append(
                    log_row(
                        res,
                        scope_name,
                        _j_u64(rec, "timeUnixNano", where),
                        _j_u64(rec, "observedTimeUnixNano", where),
                        _j_enum(rec, "severityNumber", where, _SEVERITY_NAMES),
                        _j_str(rec, "severityText", where),
                        _j_body(rec, where),
                        attrs,
                        trace_id,
                        span_id,
                        _j_str(rec, "eventName", where),
                        _j_u32(rec, "flags", where),
                        rid,
                    )
                )
    return out
