"""atrace rows as OTLP protobuf requests, and the reading of rows the OTLP/JSON form shares."""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson

from ..._records import (
    ATTRS,
    DURATION_NS,
    ENVIRONMENT,
    ERROR_MESSAGE,
    ERROR_TYPE,
    HOST,
    KIND,
    LEVEL,
    LINKS,
    LOCATION,
    MESSAGE,
    NAME,
    OTLP,
    PARENT_ID,
    PID,
    RESOURCE_ID,
    SERVICE,
    SPAN_ID,
    SPAN_KIND,
    STACK_TRACE,
    STATUS,
    STATUS_MESSAGE,
    TRACE_FLAGS,
    TRACE_ID,
    TRACE_STATE,
    TS,
    Kind,
    Row,
    Status,
)
from ..._version import __version__
from ..resources import NON_FINITE_VALUES, TYPE_BYTES
from .common import (
    DEFAULT_SERVICE,
    ENV_KEYS,
    EXC_MESSAGE,
    EXC_STACK,
    EXC_TYPE,
    FILE_KEYS,
    HOST_KEY,
    INT64_MAX,
    INT64_MIN,
    KIND_KEY,
    KIND_NUMBERS,
    LINE_KEYS,
    LOGGER_KEY,
    MAX_ANY_DEPTH,
    OTLP_STATUS_ERROR,
    PID_KEY,
    SCOPE_NAME,
    SERVICE_KEY,
    SPAN_KIND_INTERNAL,
    STATUS_OK,
    UINT64_MAX,
    ExportLogsServiceRequest,
    ExportTraceServiceRequest,
    logging_severity_text,
    severity_number,
)

_pack_q = struct.Struct(">q").pack


class Partition(NamedTuple):
    """A batch split by OTLP signal; ``skipped`` counts rows with no OTLP form."""

    spans: list[Row]
    logs: list[Row]
    skipped: int


# ---- a row's parts (the OTLP/JSON encoder reads rows through these too) ---------------------


def trace_bytes(value: Any) -> bytes | None:
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


def span_bytes(value: Any) -> bytes | None:
    if type(value) is not int or value == 0 or not INT64_MIN <= value <= UINT64_MAX:
        return None
    return _pack_q(value if value <= INT64_MAX else value - (1 << 64))


def partition(rows: Iterable[Row]) -> Partition:
    """Split rows into those that become spans and those that become log records.

    Start rows, and span rows without a valid trace or span id, have no OTLP form and are only
    counted.
    """
    spans: list[Row] = []
    logs: list[Row] = []
    skipped = 0
    rows = list(rows)
    owners = _event_owners(rows)
    for row in rows:
        kind = row[KIND]
        if kind == Kind.LOG:
            # A span event goes out on its span when that span goes in the same request.
            if owners and row[OTLP] is not None and _event_key(row) in owners:
                spans.append(row)
            else:
                logs.append(row)
        elif (
            (kind == Kind.SPAN or kind == Kind.SPAN_END)
            and trace_bytes(row[TRACE_ID]) is not None
            and span_bytes(row[SPAN_ID]) is not None
        ):
            spans.append(row)
        else:
            skipped += 1
    return Partition(spans, logs, skipped)


def row_doc(row: Row) -> dict[str, Any]:
    """A row's ``otlp`` document ({} when it has none)."""
    raw = row[OTLP]
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        doc = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _event_key(row: Row) -> tuple[Any, Any] | None:
    # The span a span event's row belongs to, or None for a row that is no span event.
    doc = row_doc(row)
    if doc.get("event") is not True:
        return None
    return (trace_bytes(row[TRACE_ID]), span_bytes(row[SPAN_ID]))


def _event_owners(rows: list[Row]) -> set[tuple[Any, Any]]:
    # The spans of ``rows`` that span events may go out on (none unless a row is an event).
    if not any(row[KIND] == Kind.LOG and row[OTLP] is not None for row in rows):
        return set()
    return {
        (trace_bytes(row[TRACE_ID]), span_bytes(row[SPAN_ID]))
        for row in rows
        if row[KIND] == Kind.SPAN or row[KIND] == Kind.SPAN_END
    }


def _restore_at(value: Any, path: list[str], kind: str) -> Any:
    if not path:
        if kind == TYPE_BYTES:
            if isinstance(value, str):
                try:
                    return base64.b64decode(value, validate=True)
                except ValueError:
                    return value
            return value
        return NON_FINITE_VALUES.get(value, value) if isinstance(value, str) else value
    step, rest = path[0], path[1:]
    if isinstance(value, dict) and step in value:
        value[step] = _restore_at(value[step], rest, kind)
    elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
        value[int(step)] = _restore_at(value[int(step)], rest, kind)
    return value


def restore_types(value: Any, prefix: str, types: Mapping[str, str] | None) -> Any:
    """``value`` (found at ``prefix`` of a row) with the bytes and non-finite doubles that the
    row's ``types`` name under that prefix read back as they came (see ``rows.json_ready``)."""
    if not types:
        return value
    start = prefix + "/"
    for pointer, kind in types.items():
        if pointer == prefix:
            value = _restore_at(value, [], kind)
        elif pointer.startswith(start):
            path = [
                p.replace("~1", "/").replace("~0", "~") for p in pointer[len(start) :].split("/")
            ]
            value = _restore_at(value, path, kind)
    return value


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


def resource_key(row: Row) -> tuple[Any, Any, Any, Any]:
    return (row[SERVICE], row[ENVIRONMENT], row[HOST], row[PID])


class Origin(NamedTuple):
    """A record's resource and instrumentation scope for OTLP: ``resource`` and ``scope`` as
    the ``resources`` document holds them (``attrs`` typed again, ``schema_url``, ...)."""

    resource: dict[str, Any]
    scope: dict[str, Any]


_OWN_SCOPE = {"name": SCOPE_NAME, "version": __version__}


def origin_key(row: Row) -> Any:
    """What the records of one resource and scope share: the ``resource_id``, else (atrace's
    own records) the resource's columns."""
    rid = row[RESOURCE_ID]
    return resource_key(row) if rid is None else (rid, row[SERVICE])


def origin_of(row: Row, resources: Mapping[int, Any] | None) -> Origin:
    """The resource and scope of ``row``: its ``resource_id``'s document when ``resources``
    has it (as OTLP sent them), else its columns under atrace's scope (atrace's own records,
    and those whose document is not at hand)."""
    rid = row[RESOURCE_ID]
    raw = resources.get(rid) if rid is not None and resources else None
    if raw is not None:
        try:
            doc = raw if isinstance(raw, Mapping) else orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError):
            doc = None
        if isinstance(doc, dict):
            types = doc.get("types")
            resource = dict(doc.get("resource") or {})
            scope = dict(doc.get("scope") or {})
            attrs = resource.get("attrs")
            if isinstance(attrs, dict):
                attrs = resource["attrs"] = restore_types(attrs, "/resource/attrs", types)
                # A tracer of another service in the same process: the record's own service.
                named = attrs.get(SERVICE_KEY)
                if isinstance(named, str) and named != row[SERVICE]:
                    resource["attrs"] = {**attrs, SERVICE_KEY: row[SERVICE]}
            if isinstance(scope.get("attrs"), dict):
                scope["attrs"] = restore_types(scope["attrs"], "/scope/attrs", types)
            return Origin(resource, scope)
    key = resource_key(row)
    return Origin({"attrs": dict(resource_items(key))}, _OWN_SCOPE)


def resource_items(key: tuple[Any, Any, Any, Any]) -> list[tuple[str, Any]]:
    service, environment, host, pid = key
    items: list[tuple[str, Any]] = [
        (SERVICE_KEY, service if isinstance(service, str) else DEFAULT_SERVICE)
    ]
    if environment is not None:
        items.append((ENV_KEYS[0], str(environment)))
    if host is not None:
        items.append((HOST_KEY, str(host)))
    if type(pid) is int:
        items.append((PID_KEY, pid))
    return items


def span_attrs(row: Row) -> tuple[dict[str, Any], int]:
    """A span's attributes for OTLP, and its span kind: the ``span_kind`` column, else (a row
    stored before schema 5) the ``span.kind`` attribute taken out, else internal."""
    attrs = _row_attrs(row[ATTRS])
    kind = row[SPAN_KIND]
    named = attrs.get(KIND_KEY)
    if isinstance(named, str) and named in KIND_NUMBERS:
        if kind is None:
            kind = KIND_NUMBERS[named]
        del attrs[KIND_KEY]
    if kind is None:
        kind = SPAN_KIND_INTERNAL
    path, line = _split_location(row[LOCATION])
    if path is not None:
        attrs[FILE_KEYS[0]] = path
    if line is not None:
        attrs[LINE_KEYS[0]] = line
    return attrs, kind


def log_attrs(row: Row, origin: Origin | None = None) -> dict[str, Any]:
    """A log's attributes for OTLP; its name travels as ``logger.name`` unless it is the name of
    the instrumentation scope it came under (which is where OTLP's logging bridges put it)."""
    attrs = _row_attrs(row[ATTRS])
    if row[NAME] is not None and (origin is None or origin.scope.get("name") != row[NAME]):
        attrs[LOGGER_KEY] = row[NAME]
    for key, col in ((EXC_TYPE, ERROR_TYPE), (EXC_MESSAGE, ERROR_MESSAGE)):
        if row[col] is not None:
            attrs[key] = row[col]
    if row[STACK_TRACE] is not None:
        attrs[EXC_STACK] = row[STACK_TRACE]
    path, line = _split_location(row[LOCATION])
    if path is not None:
        attrs[FILE_KEYS[0]] = path
    if line is not None:
        attrs[LINE_KEYS[0]] = line
    return attrs


# OTLP's status code of a span nobody set a status on.
STATUS_UNSET = 0


def span_status(row: Row) -> tuple[int, str | None]:
    """A span's OTLP status code and message: unset unless set or failed (OpenTelemetry's
    rule); an error's message is the status description the span was given, else the
    exception as OpenTelemetry's SDKs describe it (``"ValueError: bad"``), else (a row stored
    before schema 5, or a failed HTTP status) the error message alone."""
    status = row[STATUS]
    if status == Status.OK:
        return STATUS_OK, None
    if status != Status.ERROR:
        return STATUS_UNSET, None
    message = row[STATUS_MESSAGE]
    etype, emsg = row[ERROR_TYPE], row[ERROR_MESSAGE]
    if message is None and etype is None:
        message = emsg
    elif message is None:
        message = etype if emsg is None else f"{etype}: {emsg}"
    return OTLP_STATUS_ERROR, message


def exception_attrs(row: Row) -> dict[str, Any] | None:
    """The attributes of a span's ``exception`` event, or None: only an exception makes one
    (an error status with a message alone is a status, not an exception)."""
    if row[ERROR_TYPE] is None and row[STACK_TRACE] is None:
        return None
    out: dict[str, Any] = {}
    if row[ERROR_TYPE] is not None:
        out[EXC_TYPE] = row[ERROR_TYPE]
    if row[ERROR_MESSAGE] is not None:
        out[EXC_MESSAGE] = row[ERROR_MESSAGE]
    if row[STACK_TRACE] is not None:
        out[EXC_STACK] = row[STACK_TRACE]
    return out


def span_flags(row: Row, doc: Mapping[str, Any]) -> int | None:
    """OTLP's ``flags`` of a span: as sent when kept whole, else the W3C byte (or None)."""
    flags = doc.get("flags")
    if type(flags) is int:
        return flags
    return None if row[TRACE_FLAGS] is None else row[TRACE_FLAGS] & 0xFF


def span_links(row: Row, doc: Mapping[str, Any]) -> list[tuple[bytes, bytes, str, int, Any]]:
    """A span's links: (trace id, span id, trace state, flags, attributes)."""
    raw = row[LINKS]
    if raw is None:
        return []
    try:
        links = orjson.loads(raw) if not isinstance(raw, list) else raw
    except (orjson.JSONDecodeError, TypeError):
        return []
    types = doc.get("types")
    out = []
    for i, link in enumerate(links if isinstance(links, list) else ()):
        if not isinstance(link, dict):
            continue
        try:
            tid = bytes.fromhex(str(link.get("trace_id", "")))
            sid = bytes.fromhex(str(link.get("span_id", "")))
        except ValueError:
            continue
        if len(tid) != 16 or len(sid) != 8:
            continue
        attrs = link.get("attrs")
        attrs = restore_types(attrs, f"/links/{i}/attrs", types) if attrs else None
        flags = link.get("flags")
        out.append(
            (
                tid,
                sid,
                str(link.get("trace_state") or ""),
                flags if type(flags) is int else 0,
                attrs if isinstance(attrs, dict) else None,
            )
        )
    return out


def span_events(
    row: Row, doc: Mapping[str, Any], event_rows: list[Row]
) -> list[tuple[int, str, dict[str, Any]]]:
    """A span's events in time order: its span events' rows, and the exception that failed it
    (at the time it was sent at, else the span's end)."""
    events: list[tuple[int, str, dict[str, Any]]] = []
    for ev in event_rows:
        ev_doc = row_doc(ev)
        attrs = restore_types(_row_attrs(ev[ATTRS]), "/attrs", ev_doc.get("types"))
        for key, col in ((EXC_TYPE, ERROR_TYPE), (EXC_MESSAGE, ERROR_MESSAGE)):
            if ev[col] is not None:
                attrs[key] = ev[col]
        if ev[STACK_TRACE] is not None:
            attrs[EXC_STACK] = ev[STACK_TRACE]
        events.append((int(ev[TS]), ev[MESSAGE] or "", attrs))
    exc = exception_attrs(row)
    if exc is not None:
        folded = doc.get("exception")
        when = end_ns(row)
        if isinstance(folded, dict):
            more = folded.get("attrs")
            if isinstance(more, dict):
                exc.update(restore_types(more, "/exception/attrs", doc.get("types")))
            if type(folded.get("time")) is int:
                when = folded["time"]
        events.append((when, "exception", exc))
    events.sort(key=lambda e: e[0])
    return events


def event_rows_by_span(rows: list[Row]) -> dict[tuple[Any, Any], list[Row]]:
    """The span events among ``rows``, by the (trace id, span id) of their span."""
    out: dict[tuple[Any, Any], list[Row]] = {}
    for row in rows:
        if row[KIND] == Kind.LOG and row[OTLP] is not None:
            key = _event_key(row)
            if key is not None:
                out.setdefault(key, []).append(row)
    return out


def log_rows(rows: Iterable[Row]) -> list[Row]:
    """The rows that go out as log records: logs, except span events whose span is among
    ``rows`` (those go out on their span)."""
    rows = list(rows)
    owners = _event_owners(rows)
    return [
        row
        for row in rows
        if row[KIND] == Kind.LOG
        and not (owners and row[OTLP] is not None and _event_key(row) in owners)
    ]


def log_fields(row: Row, doc: Mapping[str, Any]) -> tuple[int, int, int, str, Any, str]:
    """A log row's (time, observed time, severity number, severity text, body, event name),
    as they were sent when the ``otlp`` document kept them, else as atrace sends them."""
    level = row[LEVEL]
    ts = int(row[TS])
    time_ns = doc.get("time", ts)
    observed = doc.get("observed_time", ts)
    number = doc.get("severity_number")
    text = doc.get("severity_text")
    body: Any = row[MESSAGE]
    if "body" in doc:
        body = restore_types(doc["body"], "/body", doc.get("types"))
    return (
        time_ns if type(time_ns) is int else ts,
        observed if type(observed) is int else ts,
        number if type(number) is int else severity_number(level),
        text if type(text) is str else logging_severity_text(level),
        body,
        str(doc.get("event_name") or ""),
    )


def end_ns(row: Row) -> int:
    duration = row[DURATION_NS]
    return int(row[TS]) + (duration if type(duration) is int and duration > 0 else 0)


# ---- the protobuf requests ------------------------------------------------------------------


def _pb_value(av: Any, value: Any, depth: int = 0) -> None:
    t = type(value)
    if t is str:
        av.string_value = value
    elif t is bool:
        av.bool_value = value
    elif t is int:
        if INT64_MIN <= value <= INT64_MAX:
            av.int_value = value
        else:
            av.string_value = str(value)
    elif t is float:
        av.double_value = value
    elif t is bytes:
        av.bytes_value = value
    elif depth >= MAX_ANY_DEPTH:
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


def _pb_origin(envelope: Any, scoped: Any, origin: Origin) -> None:
    # A ResourceSpans/ResourceLogs and its one ScopeSpans/ScopeLogs for ``origin``.
    resource, scope = origin.resource, origin.scope
    if resource.get("attrs"):
        _pb_attrs(envelope.resource.attributes, resource["attrs"])
    if resource.get("schema_url"):
        envelope.schema_url = resource["schema_url"]
    if scope.get("name"):
        scoped.scope.name = scope["name"]
    if scope.get("version"):
        scoped.scope.version = scope["version"]
    if scope.get("attrs"):
        _pb_attrs(scoped.scope.attributes, scope["attrs"])
    if scope.get("schema_url"):
        scoped.schema_url = scope["schema_url"]


def traces_request(
    rows: Iterable[Row], resources: Mapping[int, Any] | None = None
) -> ExportTraceServiceRequest:
    """An ``ExportTraceServiceRequest`` with a ``Span`` for every ended span row (SPAN, SPAN_END).

    Other rows (logs, start rows, spans without valid ids) are left out; see :func:`partition`.
    ``resources`` holds the documents of the rows' ``resource_id`` (see :func:`origin_of`).
    """
    request = ExportTraceServiceRequest()
    groups: dict[Any, Any] = {}
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
        key = origin_key(row)
        spans = groups.get(key)
        if spans is None:
            rs = request.resource_spans.add()
            ss = rs.scope_spans.add()
            _pb_origin(rs, ss, origin_of(row, resources))
            spans = groups[key] = ss.spans
        sp = spans.add()
        sp.trace_id = trace_id
        sp.span_id = span_id
        parent = span_bytes(row[PARENT_ID])
        if parent is not None:
            sp.parent_span_id = parent
        if row[NAME] is not None:
            sp.name = row[NAME]
        doc = row_doc(row)
        attrs, span_kind = span_attrs(row)
        attrs = restore_types(attrs, "/attrs", doc.get("types"))
        sp.kind = span_kind
        if row[TRACE_STATE]:
            sp.trace_state = row[TRACE_STATE]
        flags = span_flags(row, doc)
        if flags is not None:
            sp.flags = flags
        sp.start_time_unix_nano = row[TS]
        sp.end_time_unix_nano = end_ns(row)
        if attrs:
            _pb_attrs(sp.attributes, attrs)
        dropped = doc.get("dropped_attributes")
        if type(dropped) is int and dropped > 0:
            sp.dropped_attributes_count = dropped
        code, message = span_status(row)
        if code != STATUS_UNSET:
            sp.status.code = code
            if message:
                sp.status.message = message
        for when, name, ev_attrs in span_events(row, doc, events_of.get((trace_id, span_id), [])):
            event = sp.events.add()
            event.time_unix_nano = when
            if name:
                event.name = name
            if ev_attrs:
                _pb_attrs(event.attributes, ev_attrs)
        for tid, sid, state, link_flags, link_attrs in span_links(row, doc):
            link = sp.links.add()
            link.trace_id = tid
            link.span_id = sid
            if state:
                link.trace_state = state
            if link_flags:
                link.flags = link_flags
            if link_attrs:
                _pb_attrs(link.attributes, link_attrs)
    return request


def logs_request(
    rows: Iterable[Row], resources: Mapping[int, Any] | None = None
) -> ExportLogsServiceRequest:
    """An ``ExportLogsServiceRequest`` with a ``LogRecord`` for every log row (``resources`` as
    for :func:`traces_request`)."""
    request = ExportLogsServiceRequest()
    groups: dict[Any, tuple[Any, Origin]] = {}
    for row in log_rows(rows):
        key = origin_key(row)
        group = groups.get(key)
        if group is None:
            rl = request.resource_logs.add()
            sl = rl.scope_logs.add()
            origin = origin_of(row, resources)
            _pb_origin(rl, sl, origin)
            group = groups[key] = (sl.log_records, origin)
        records, origin = group
        rec = records.add()
        doc = row_doc(row)
        time_ns, observed, number, text, body, event_name = log_fields(row, doc)
        rec.time_unix_nano = time_ns
        rec.observed_time_unix_nano = observed
        rec.severity_number = number  # type: ignore[assignment]
        if text:
            rec.severity_text = text
        if body is not None:
            _pb_value(rec.body, body)
        if event_name:
            rec.event_name = event_name
        attrs = restore_types(log_attrs(row, origin), "/attrs", doc.get("types"))
        if attrs:
            _pb_attrs(rec.attributes, attrs)
        dropped = doc.get("dropped_attributes")
        if type(dropped) is int and dropped > 0:
            rec.dropped_attributes_count = dropped
        trace_id = trace_bytes(row[TRACE_ID])
        if trace_id is not None:
            rec.trace_id = trace_id
            span_id = span_bytes(row[SPAN_ID])
            if span_id is not None:
                rec.span_id = span_id
        if row[TRACE_FLAGS] is not None:
            rec.flags = row[TRACE_FLAGS] & 0xFF
    return request
