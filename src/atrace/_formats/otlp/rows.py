"""OTLP records as atrace rows, built here for both decoders so protobuf and JSON agree."""

from __future__ import annotations

import struct
import time
from typing import Any, NamedTuple

import orjson

from ..._pipeline.sanitize import sanitize_text, sanitize_value
from ..._records import Kind, Level, Row, SpanKind, Status
from ...errors import WireError
from ..resources import (
    document,
    json_ready,
)
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
    LINE_KEYS,
    LOGGER_KEY,
    OTLP_STATUS_ERROR,
    PID_KEY,
    SCOPE_NAME,
    SERVICE_KEY,
    SPAN_KIND_UNSPECIFIED,
    STATUS_OK,
    W3C_FLAGS_MASK,
    level_from_severity,
    logging_severity_text,
    severity_number,
)

# Limits on decoded text, in characters (the encoder's defaults for rows atrace makes itself).
KEY_CHARS = 256
VALUE_CHARS = 4096
_SHORT_LIMIT = 256  # service, environment, host
NAME_CHARS = 1024
MESSAGE_CHARS = 32_768
# W3C Trace Context asks that at least 512 characters of a tracestate be kept.
TRACE_STATE_CHARS = 512
_STACK_LIMIT = 4 * MESSAGE_CHARS
_LOCATION_LIMIT = 4096
# Attributes that become error columns keep those columns' limits, not an attribute's.
LONG_VALUE_CHARS = {EXC_MESSAGE: MESSAGE_CHARS, EXC_STACK: _STACK_LIMIT}

unpack_q = struct.Struct(">q").unpack

# The stored numbers as plain ints: both decoders build every row here, one span or log at a time.
_LOG = Kind.LOG.value
_SPAN = Kind.SPAN.value
_INFO = Level.INFO.value
_ERROR = Level.ERROR.value
_UNSET = Status.UNSET.value
# OTLP status code → atrace status; an unknown code reads as unset.
_STATUSES = {STATUS_OK: Status.OK.value, OTLP_STATUS_ERROR: Status.ERROR.value}
# OTLP's span kinds are the stored ones; any other number reads as unspecified.
MAX_SPAN_KIND = max(SpanKind).value


def clean_text(value: str, limit: int) -> str:
    if value.isascii() and len(value) <= limit and "\x00" not in value:
        return value
    return sanitize_text(value, limit)


def clean_key(key: str) -> str:
    if key.isascii() and len(key) <= KEY_CHARS and "\x00" not in key:
        return key
    # Cut, without a marker: a key is a name, and the marker would push it past the limit.
    return sanitize_text(key, len(key))[:KEY_CHARS]


def span_kind(kind: int) -> int:
    """The ``span_kind`` column for an OTLP span kind as sent."""
    return kind if SPAN_KIND_UNSPECIFIED <= kind <= MAX_SPAN_KIND else SPAN_KIND_UNSPECIFIED


def trace_flags(flags: int) -> int | None:
    """The ``trace_flags`` column for an OTLP ``flags`` field: its W3C byte, or None when the
    field is zero (proto3 cannot tell a zero sent from none sent)."""
    return flags & W3C_FLAGS_MASK if flags else None


_FLAGS_DOCS: dict[int, bytes] = {}


def flags_doc(flags: int) -> bytes | None:
    """The ``otlp`` column of a span with nothing else to keep there: OTLP's flags when they
    say more than the W3C byte (bits 8 and 9: whether the parent is remote), else None."""
    if flags <= W3C_FLAGS_MASK:
        return None
    doc = _FLAGS_DOCS.get(flags)
    if doc is None:
        doc = orjson.dumps({"flags": flags})
        if len(_FLAGS_DOCS) < 64:
            _FLAGS_DOCS[flags] = doc
    return doc


class Resource:
    """One resource: its columns (service, environment, host, pid), and all of its attributes
    as sent, which go to ``<schema>.resources`` once (see :func:`origin`), not into rows."""

    __slots__ = ("attrs", "environment", "extra", "host", "pid", "schema_url", "service")

    def __init__(self, attrs: dict[str, Any], schema_url: str = "") -> None:
        self.attrs = dict(attrs)
        self.schema_url = schema_url
        # Nothing of the resource goes into a record's attributes any more (kept for the
        # decoders' shape: a record's attributes start from it).
        self.extra: dict[str, Any] | None = None
        service = attrs.get(SERVICE_KEY)
        if isinstance(service, str):
            del attrs[SERVICE_KEY]
        self.service = (
            clean_text(service, _SHORT_LIMIT) if isinstance(service, str) and service else None
        ) or DEFAULT_SERVICE
        environment = None
        for key in ENV_KEYS:
            value = attrs.get(key)
            if isinstance(value, str):
                del attrs[key]
                if environment is None and value:
                    environment = clean_text(value, _SHORT_LIMIT)
        self.environment = environment
        host = attrs.get(HOST_KEY)
        if isinstance(host, str):
            del attrs[HOST_KEY]
        self.host = clean_text(host, _SHORT_LIMIT) if isinstance(host, str) and host else None
        pid = attrs.get(PID_KEY)
        if type(pid) is str and pid.isdigit() and len(pid) < 19:
            pid = int(pid)
        if type(pid) is int and INT64_MIN <= pid <= INT64_MAX:
            del attrs[PID_KEY]
            self.pid: int | None = pid
        else:
            self.pid = None


def origin(
    res: Resource,
    scope_name: str,
    scope_version: str,
    scope_attrs: dict[str, Any] | None,
    scope_url: str,
    docs: dict[int, bytes] | None,
) -> int:
    """The ``resource_id`` of records from ``res`` under this instrumentation scope: the hash
    of the pair's document (``resources.document``), which goes into ``docs``. Every OTLP
    record has one; a record without one is atrace's own, whose resource its columns say."""
    rid, raw = document(
        res.attrs, res.schema_url, scope_name, scope_version, scope_attrs, scope_url
    )
    if docs is not None:
        docs[rid] = raw
    return rid


def encode_attrs(
    attrs: dict[str, Any], types: dict[str, str] | None = None, pointer: str = "/attrs"
) -> bytes | None:
    """Attributes as JSON bytes; with ``types``, bytes and non-finite doubles are kept typed
    (see :func:`json_ready`) instead of sanitised."""
    if not attrs:
        return None
    try:
        return orjson.dumps(attrs)
    except (orjson.JSONEncodeError, TypeError):
        pass
    if types is not None:
        try:
            return orjson.dumps(json_ready(attrs, pointer, types))
        except (orjson.JSONEncodeError, TypeError):
            pass
    return orjson.dumps(sanitize_value(attrs, VALUE_CHARS))


def encode_doc(doc: dict[str, Any] | list[Any] | None) -> bytes | None:
    """The ``links`` or ``otlp`` column of a row (already JSON-ready), or None when empty."""
    if not doc:
        return None
    try:
        return orjson.dumps(doc)
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps(sanitize_value(doc, VALUE_CHARS))


def pop_location(attrs: dict[str, Any]) -> str | None:
    path: Any = None
    for key in FILE_KEYS:
        if key in attrs:
            value = attrs.pop(key)
            if path is None:
                path = value
    if path is None:
        return None
    line: Any = None
    for key in LINE_KEYS:
        if key in attrs:
            value = attrs.pop(key)
            if line is None:
                line = value
    where = str(path) if line is None else f"{path}:{line}"
    return clean_text(where, _LOCATION_LIMIT)


def _pop_error(attrs: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    etype = attrs.pop(EXC_TYPE, None)
    emsg = attrs.pop(EXC_MESSAGE, None)
    stack = attrs.pop(EXC_STACK, None)
    return (
        None if etype is None else clean_text(str(etype), NAME_CHARS),
        None if emsg is None else clean_text(str(emsg), MESSAGE_CHARS),
        None if stack is None else clean_text(str(stack), _STACK_LIMIT),
    )


class Event(NamedTuple):
    ts: int
    name: str
    attrs: dict[str, Any]


class Link(NamedTuple):
    """A span link as decoded: ids as bytes (checked by the decoder), the rest as sent."""

    trace_id: bytes
    span_id: bytes
    trace_state: str
    flags: int
    attrs: dict[str, Any]


def links_doc(links: list[Link], types: dict[str, str]) -> list[dict[str, Any]]:
    """The ``links`` column: one object per link, ids in hex, empty fields left out."""
    out: list[dict[str, Any]] = []
    for i, link in enumerate(links):
        item: dict[str, Any] = {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
        if link.trace_state:
            item["trace_state"] = clean_text(link.trace_state, TRACE_STATE_CHARS)
        if link.flags:
            item["flags"] = link.flags
        if link.attrs:
            item["attrs"] = json_ready(link.attrs, f"/links/{i}/attrs", types)
        out.append(item)
    return out


def span_rows(
    out: list[Row],
    res: Resource,
    trace_id: str,
    span_id: int,
    parent_id: int | None,
    name: str,
    kind: int,
    start: int,
    end: int,
    code: int,
    status_message: str,
    trace_state: str,
    flags: int,
    attrs: dict[str, Any],
    events: list[Event],
    links: list[Link] | None = None,
    rid: int | None = None,
) -> None:
    """The span's row, then a log row for each of its events (shared by all decoders).

    The error columns come from the last exception event of a failed span only; that event's
    time and other attributes go to the span's ``otlp`` document (``exception``). The status's
    own message stays in ``status_message``, whatever the status. Each event's row is marked
    ``"event": true`` in its ``otlp`` document, so that it goes out as an event of its span.
    """
    location = pop_location(attrs) if attrs else None
    etype = emsg = stack = None
    doc: dict[str, Any] = {}
    types: dict[str, str] = {}
    failed = code == OTLP_STATUS_ERROR
    if failed:
        for i in range(len(events) - 1, -1, -1):
            if events[i].name == "exception":
                event = events.pop(i)
                etype, emsg, stack = _pop_error(event.attrs)
                # Kept unless as atrace would send it again: at the span's end, nothing more.
                folded: dict[str, Any] = {}
                if event.ts != end:
                    folded["time"] = event.ts
                if event.attrs:
                    folded["attrs"] = json_ready(event.attrs, "/exception/attrs", types)
                if folded:
                    doc["exception"] = folded
                break
    if flags > W3C_FLAGS_MASK:
        doc["flags"] = flags  # OTLP's bits above the W3C byte (whether the parent is remote)
    attrs_json = encode_attrs(attrs, types)
    links_json = encode_doc(links_doc(links, types)) if links else None
    if types:
        doc["types"] = types
    out.append(
        (
            start,
            _SPAN,
            _ERROR if failed else _INFO,
            trace_id,
            span_id,
            parent_id,
            end - start if end > start else 0,
            _STATUSES.get(code, _UNSET),
            res.service,
            res.environment,
            res.host,
            res.pid,
            clean_text(name, NAME_CHARS) if name else None,
            None,
            attrs_json,
            etype,
            emsg,
            stack,
            location,
            span_kind(kind),
            clean_text(trace_state, TRACE_STATE_CHARS) if trace_state else None,
            trace_flags(flags),
            clean_text(status_message, MESSAGE_CHARS) if status_message else None,
            links_json,
            encode_doc(doc),
            rid,
        )
    )
    for event in events:
        ev_attrs = event.attrs
        is_exception = event.name == "exception"
        etype = emsg = stack = None
        if is_exception:
            etype, emsg, stack = _pop_error(ev_attrs)
        ev_types: dict[str, str] = {}
        ev_json = encode_attrs(ev_attrs, ev_types)
        ev_doc: dict[str, Any] = {"event": True}
        if ev_types:
            ev_doc["types"] = ev_types
        out.append(
            (
                event.ts or start,
                _LOG,
                _ERROR if is_exception else _INFO,
                trace_id,
                span_id,
                None,
                None,
                _UNSET,
                res.service,
                res.environment,
                res.host,
                res.pid,
                None,
                clean_text(event.name, MESSAGE_CHARS) if event.name else None,
                ev_json,
                etype,
                emsg,
                stack,
                None,
                None,
                None,
                None,
                None,
                None,
                orjson.dumps(ev_doc),
                rid,
            )
        )


def log_row(
    res: Resource,
    scope_name: str,
    ts: int,
    observed: int,
    number: int,
    severity_text: str,
    body: Any,
    attrs: dict[str, Any],
    trace_id: str | None,
    span_id: int | None,
    event_name: str,
    flags: int,
    rid: int | None = None,
) -> Row:
    """A log record's row (shared by all decoders). ``body`` is the decoded value: a string is
    the message; any other value is kept with its type in the ``otlp`` document, and its JSON
    is the message. The severity number and text, the observed time and the event name go to
    the ``otlp`` document too, each unless it is what atrace would send for the row anyway
    (the level's number and name, the observed time equal to the time)."""
    doc: dict[str, Any] = {}
    types: dict[str, str] = {}
    if body is None or type(body) is str:
        message = clean_text(body, MESSAGE_CHARS) if body else None
    else:
        value = json_ready(body, "/body", types)
        doc["body"] = value
        message = clean_text(orjson.dumps(value).decode("utf-8"), MESSAGE_CHARS)
    if not ts:
        doc["time"] = 0  # sent without a time: ts is the observed time (or the arrival)
    if observed and observed != ts:
        doc["observed_time"] = observed
    if event_name:
        doc["event_name"] = clean_text(event_name, NAME_CHARS)
    logger = attrs.get(LOGGER_KEY)
    if isinstance(logger, str):
        del attrs[LOGGER_KEY]
    if isinstance(logger, str) and logger:
        name: str | None = clean_text(logger, NAME_CHARS)
    elif scope_name and scope_name != SCOPE_NAME:
        name = clean_text(scope_name, NAME_CHARS)
    else:
        name = None
    location = pop_location(attrs) if attrs else None
    etype, emsg, stack = _pop_error(attrs) if attrs else (None, None, None)
    if number <= 0 and not severity_text and (etype is not None or emsg is not None):
        level = _ERROR
    else:
        level = level_from_severity(number, severity_text)
    if number != severity_number(level):
        doc["severity_number"] = number
    if severity_text != logging_severity_text(level):
        doc["severity_text"] = clean_text(severity_text, _SHORT_LIMIT)
    attrs_json = encode_attrs(attrs, types)
    if types:
        doc["types"] = types
    return (
        ts or observed or time.time_ns(),
        _LOG,
        level,
        trace_id,
        span_id if trace_id is not None else None,
        None,
        None,
        _UNSET,
        res.service,
        res.environment,
        res.host,
        res.pid,
        name,
        message,
        attrs_json,
        etype,
        emsg,
        stack,
        location,
        None,
        None,
        trace_flags(flags),
        None,
        None,
        encode_doc(doc),
        rid,
    )


def too_many(count: int, max_records: int, what: str) -> WireError:
    return WireError(
        f"{count} {what} in one request; at most {max_records} accepted",
        status=413,
        bound="max_records",
    )
