"""OTLP protobuf requests as rows through the official (upb) classes: the twin of ``_pb``.

The compiled ``_pb`` reads the wire format itself and gives the same rows and the same refusals;
``pb`` picks the one that runs.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..._records import Row
from ...errors import WireError
from .common import (
    FILE_KEYS,
    OTLP_STATUS_ERROR,
    DecodeError,
    ExportLogsServiceRequest,
    ExportTraceServiceRequest,
)
from .pb_values import pb_body, pb_into
from .rows import (
    MESSAGE_CHARS,
    NAME_CHARS,
    TRACE_STATE_CHARS,
    Event,
    Link,
    Resource,
    clean_text,
    flags_doc,
    log_row,
    origin,
    pop_location,
    span_kind,
    span_rows,
    too_many,
    trace_flags,
    unpack_q,
)

__all__ = ("decode_logs_pb", "decode_traces_pb")

_ZERO16 = bytes(16)
_ZERO8 = bytes(8)


def _resource_of(envelope: Any) -> Resource:
    attrs: dict[str, Any] = {}
    pb_into(attrs, envelope.resource.attributes)
    return Resource(attrs, envelope.schema_url)


def _origin(res: Resource, envelope: Any, docs: dict[int, bytes] | None) -> int | None:
    scope = envelope.scope
    attrs: dict[str, Any] = {}
    pb_into(attrs, scope.attributes)
    return origin(res, scope.name, scope.version, attrs, envelope.schema_url, docs)


def _trace_id(raw: bytes, where: str) -> str | None:
    """A log's optional trace id: absent, or 16 bytes (all zero counts as absent)."""
    if not raw:
        return None
    if len(raw) != 16:
        raise WireError(f"{where}.trace_id: expected 16 bytes, got {len(raw)}")
    return None if raw == _ZERO16 else raw.hex()


def _span_id(raw: bytes, where: str, field: str) -> int | None:
    """An optional span id: absent, or 8 bytes (all zero counts as absent)."""
    if not raw:
        return None
    if len(raw) != 8:
        raise WireError(f"{where}.{field}: expected 8 bytes, got {len(raw)}")
    value: int = unpack_q(raw)[0]
    return value or None


def _links(sp: Any, where: str) -> list[Link]:
    """A span's links; an id of the wrong size is refused, an all-zero one kept (OpenTelemetry
    records a link with an invalid context when it has attributes or a trace state)."""
    out: list[Link] = []
    for n, link in enumerate(sp.links):
        if len(link.trace_id) != 16:
            raise WireError(
                f"{where}.links[{n}].trace_id: expected 16 bytes, got {len(link.trace_id)}"
            )
        if len(link.span_id) != 8:
            raise WireError(
                f"{where}.links[{n}].span_id: expected 8 bytes, got {len(link.span_id)}"
            )
        attrs: dict[str, Any] = {}
        pb_into(attrs, link.attributes)
        out.append(Link(link.trace_id, link.span_id, link.trace_state, link.flags, attrs))
    return out


def _required(raw: bytes, where: str, field: str, size: int) -> WireError:
    if len(raw) != size:
        return WireError(f"{where}.{field}: expected {size} bytes, got {len(raw)}")
    return WireError(f"{where}.{field}: all zero (not a valid id)")


def _parse(message: Any, body: bytes, what: str) -> None:
    try:
        message.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError, TypeError) as exc:
        raise WireError(f"invalid protobuf {what}: {exc or 'cannot parse'}") from None


def decode_traces_pb(
    body: bytes, max_records: int, resources: dict[int, bytes] | None = None
) -> list[Row]:
    """Rows for a protobuf ``ExportTraceServiceRequest``, read through the official classes;
    the documents of their resources and scopes into ``resources`` (see ``rows.origin``)."""
    request = ExportTraceServiceRequest()
    _parse(request, body, "ExportTraceServiceRequest")
    count = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            count += len(ss.spans)
    if count > max_records:
        raise too_many(count, max_records, "spans")
    out: list[Row] = []
    append = out.append
    budget = max_records - count  # rows beyond one per span: span events
    last_raw: bytes | None = None  # None never equals a trace id, not even an empty one
    trace_id = ""
    for i, rs in enumerate(request.resource_spans):
        res = _resource_of(rs)
        service, environment, host, pid = res.service, res.environment, res.host, res.pid
        for j, ss in enumerate(rs.scope_spans):
            rid = _origin(res, ss, resources)
            for k, sp in enumerate(ss.spans):
                raw = sp.trace_id
                if raw != last_raw:
                    # Spans of one trace travel together: their hex text is made once, shared.
                    if len(raw) != 16 or raw == _ZERO16:
                        raise _required(raw, _where(i, j, k), "trace_id", 16)
                    last_raw, trace_id = raw, raw.hex()
                raw = sp.span_id
                if len(raw) != 8 or raw == _ZERO8:
                    raise _required(raw, _where(i, j, k), "span_id", 8)
                span_id: int = unpack_q(raw)[0]
                raw = sp.parent_span_id
                if not raw:
                    parent_id = None
                elif len(raw) == 8:
                    parent_id = unpack_q(raw)[0] or None
                else:
                    parent_id = _span_id(raw, _where(i, j, k), "parent_span_id")
                start = sp.start_time_unix_nano
                if not start:
                    raise WireError(f"{_where(i, j, k)}.start_time_unix_nano: missing")
                attrs: dict[str, Any] = {}
                pb_into(attrs, sp.attributes)
                code = sp.status.code
                n_events = len(sp.events)
                attrs_json: Any = None
                location = None
                if not (n_events or code == OTLP_STATUS_ERROR or sp.links) and attrs:
                    try:
                        attrs_json = orjson.dumps(attrs)
                    except TypeError:
                        attrs_json = _TYPED  # bytes or a double JSON cannot hold
                    else:
                        if FILE_KEYS[0] in attrs or FILE_KEYS[1] in attrs:
                            location = pop_location(attrs)
                            attrs_json = orjson.dumps(attrs) if attrs else None
                if n_events or code == OTLP_STATUS_ERROR or sp.links or attrs_json is _TYPED:
                    events: list[Event] = []
                    budget -= n_events
                    if budget < 0:
                        raise too_many(max_records - budget, max_records, "spans and events")
                    for ev in sp.events:
                        ev_attrs: dict[str, Any] = {}
                        pb_into(ev_attrs, ev.attributes)
                        events.append(Event(ev.time_unix_nano, ev.name, ev_attrs))
                    span_rows(
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
                        sp.trace_state,
                        sp.flags,
                        attrs,
                        events,
                        _links(sp, _where(i, j, k)) if sp.links else None,
                        rid,
                    )
                    continue
                # The common span, no events, links or failure: its row is built right here.
                name = sp.name
                if not name.isascii() or len(name) > NAME_CHARS or "\x00" in name:
                    name = clean_text(name, NAME_CHARS)
                end = sp.end_time_unix_nano
                state = sp.trace_state
                message = sp.status.message
                flags = sp.flags
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
                        attrs_json,
                        None,
                        None,
                        None,
                        location,
                        span_kind(sp.kind),
                        clean_text(state, TRACE_STATE_CHARS) if state else None,
                        trace_flags(flags),
                        clean_text(message, MESSAGE_CHARS) if message else None,
                        None,
                        flags_doc(flags),
                        rid,
                    )
                )
    return out


_TYPED = object()


def _where(i: int, j: int, k: int) -> str:
    return f"resource_spans[{i}].scope_spans[{j}].spans[{k}]"


def decode_logs_pb(
    body: bytes, max_records: int, resources: dict[int, bytes] | None = None
) -> list[Row]:
    """Rows for a protobuf ``ExportLogsServiceRequest``, read through the official classes;
    the documents of their resources and scopes into ``resources``."""
    request = ExportLogsServiceRequest()
    _parse(request, body, "ExportLogsServiceRequest")
    count = 0
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            count += len(sl.log_records)
    if count > max_records:
        raise too_many(count, max_records, "log records")
    out: list[Row] = []
    for i, rl in enumerate(request.resource_logs):
        res = _resource_of(rl)
        for j, sl in enumerate(rl.scope_logs):
            scope_name = sl.scope.name
            rid = _origin(res, sl, resources)
            for k, rec in enumerate(sl.log_records):
                where = f"resource_logs[{i}].scope_logs[{j}].log_records[{k}]"
                trace_id = _trace_id(rec.trace_id, where)
                span_id = _span_id(rec.span_id, where, "span_id")
                attrs: dict[str, Any] = {}
                pb_into(attrs, rec.attributes)
                out.append(
                    log_row(
                        res,
                        scope_name,
                        rec.time_unix_nano,
                        rec.observed_time_unix_nano,
                        rec.severity_number,
                        rec.severity_text,
                        pb_body(rec.body),
                        attrs,
                        trace_id,
                        span_id,
                        rec.event_name,
                        rec.flags,
                        rid,
                    )
                )
    return out
