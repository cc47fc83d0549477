"""OTLP records as atrace rows, built here for both decoders so protobuf and JSON agree."""

from __future__ import annotations

import struct
import time
from typing import Any, NamedTuple

import orjson

from ..._pipeline.sanitize import sanitize_text, sanitize_value
from ..._records import Kind, Level, Row, SpanKind, Status
from ...errors import WireError
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


class Resource:
    """One resource's columns, and its other attributes (they go into every row's attrs)."""

    __slots__ = ("environment", "extra", "host", "pid", "service")

    def __init__(self, attrs: dict[str, Any]) -> None:
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
        self.extra = attrs


def encode_attrs(attrs: dict[str, Any]) -> bytes | None:
    if not attrs:
        return None
    try:
        return orjson.dumps(attrs)
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps(sanitize_value(attrs, VALUE_CHARS))


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
) -> None:
    """The span's row, then a log row for each of its events (shared by both decoders).

    The error columns come from the last exception event of a failed span only; the status's
    own message stays in ``status_message``, whatever the status.
    """
    location = pop_location(attrs) if attrs else None
    etype = emsg = stack = None
    failed = code == OTLP_STATUS_ERROR
    if failed:
        for i in range(len(events) - 1, -1, -1):
            if events[i].name == "exception":
                etype, emsg, stack = _pop_error(events.pop(i).attrs)
                break
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
            encode_attrs(attrs),
            etype,
            emsg,
            stack,
            location,
            span_kind(kind),
            clean_text(trace_state, TRACE_STATE_CHARS) if trace_state else None,
            trace_flags(flags),
            clean_text(status_message, MESSAGE_CHARS) if status_message else None,
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
                encode_attrs(ev_attrs),
                etype,
                emsg,
                stack,
                None,
                None,
                None,
                None,
                None,
            )
        )


def log_row(
    res: Resource,
    scope_name: str,
    ts: int,
    number: int,
    severity_text: str,
    message: str | None,
    attrs: dict[str, Any],
    trace_id: str | None,
    span_id: int | None,
    event_name: str,
    flags: int,
) -> Row:
    logger = attrs.get(LOGGER_KEY)
    if isinstance(logger, str):
        del attrs[LOGGER_KEY]
    if isinstance(logger, str) and logger:
        name: str | None = clean_text(logger, NAME_CHARS)
    elif scope_name and scope_name != SCOPE_NAME:
        name = clean_text(scope_name, NAME_CHARS)
    else:
        name = None
    if event_name:
        attrs.setdefault("event.name", clean_text(event_name, VALUE_CHARS))
    location = pop_location(attrs) if attrs else None
    etype, emsg, stack = _pop_error(attrs) if attrs else (None, None, None)
    if number <= 0 and not severity_text and (etype is not None or emsg is not None):
        level = _ERROR
    else:
        level = level_from_severity(number, severity_text)
    return (
        ts or time.time_ns(),
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
        encode_attrs(attrs),
        etype,
        emsg,
        stack,
        location,
        None,
        None,
        trace_flags(flags),
        None,
    )


def too_many(count: int, max_records: int, what: str) -> WireError:
    return WireError(
        f"{count} {what} in one request; at most {max_records} accepted",
        status=413,
        bound="max_records",
    )
