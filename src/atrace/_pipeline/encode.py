"""From records to rows: sanitising and serialising, done in the flusher, never in the caller.

Every rule here keeps one bad value from failing a whole batch: NUL characters and lone
surrogates (which PostgreSQL rejects) are replaced with U+FFFD, values JSON cannot hold fall back
to ``repr``, integers beyond 64 bits become strings, cycles are cut, NaN and infinities become
``null`` (JSON has no such numbers), and oversize text is truncated with a marker.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

__all__ = (
    "COLUMNS",
    "IMPLEMENTATION",
    "Encoder",
    "Row",
    "error_fields",
    "sanitize_text",
    "sanitize_value",
)

# Column order of a row, and of the ``records`` table (names are a contract, see DESIGN).
COLUMNS = (
    "ts",
    "kind",
    "level",
    "trace_id",
    "span_id",
    "parent_id",
    "duration_ns",
    "status",
    "service",
    "environment",
    "host",
    "pid",
    "name",
    "message",
    "attrs",
    "error_type",
    "error_message",
    "stack_trace",
    "location",
)
Row = tuple[Any, ...]

_OPTS = orjson.OPT_NON_STR_KEYS
_dumps = orjson.dumps
_JSONError = orjson.JSONEncodeError
_NUL_ESCAPE = b"\\u0000"
_INT64_MIN = -(1 << 63)
_UINT64_MAX = (1 << 64) - 1
_MAX_DEPTH = 64
REPLACEMENT = "\ufffd"
# Distinct call sites are few; their "file:line" text is made once. Bounded for exec'd code.
_MAX_LOCATIONS = 10_000


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated {len(text) - limit} chars]"


def sanitize_text(value: str, limit: int) -> str:
    """A string PostgreSQL accepts: no NUL, no lone surrogate, at most ``limit`` characters."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates cannot be UTF-8: re-encode through UTF-16 to turn them into U+FFFD.
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    return _truncate(value, limit)


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__qualname__}>"


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return list(value)
    return _safe_repr(value)


def sanitize_value(
    value: Any, limit: int, depth: int = 0, path: frozenset[int] = frozenset()
) -> Any:
    """A JSON-safe copy of ``value`` (the slow path, when the fast dump refused or hit a rule)."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return sanitize_text(value, limit)
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _UINT64_MAX else str(value)
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if depth >= _MAX_DEPTH:
        return "<too deep>"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in path:
            return "<cycle>"
        inner = path | {id(value)}
        if isinstance(value, dict):
            return {
                sanitize_text(k if isinstance(k, str) else _safe_str(k), limit): sanitize_value(
                    v, limit, depth + 1, inner
                )
                for k, v in value.items()
            }
        return [sanitize_value(v, limit, depth + 1, inner) for v in value]
    try:
        # Types orjson knows natively (datetime, UUID, dataclasses, enums) keep its rendering.
        return sanitize_value(
            orjson.loads(_dumps(value, default=_safe_repr)), limit, depth + 1, path
        )
    except (_JSONError, TypeError, ValueError):
        return sanitize_text(_safe_repr(value), limit)


def _type_name(tp: type) -> str:
    module = getattr(tp, "__module__", None)
    if module in (None, "builtins", "__main__"):
        return tp.__qualname__
    return f"{module}.{tp.__qualname__}"


def error_fields(err: Any) -> tuple[str | None, str | None, str | None]:
    """``(error_type, error_message, stack_trace)`` from what the emit path stored."""
    if err is None:
        return (None, None, None)
    if isinstance(err, BaseException):
        try:
            stack = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        except Exception:
            stack = None
        return (_type_name(type(err)), _safe_str(err), stack)
    if isinstance(err, traceback.StackSummary):
        return (None, None, "Stack (most recent call last):\n" + "".join(err.format()))
    if isinstance(err, tuple) and len(err) == 4:
        etype, emsg, estack = error_fields(err[0])
        return (
            err[1] if err[1] is not None else etype,
            err[2] if err[2] is not None else emsg,
            err[3] if err[3] is not None else estack,
        )
    if isinstance(err, tuple) and len(err) == 3:
        return (err[0], err[1], err[2])
    return (None, _safe_str(err), None)


class Encoder:
    """Turns records into rows for one configuration (service, host, limits, global attributes)."""

    __slots__ = (
        "environment",
        "global_attrs",
        "host",
        "locations",
        "max_message_length",
        "max_value_length",
        "pid",
        "service",
    )

    def __init__(
        self,
        *,
        service: str,
        environment: str | None,
        host: str,
        pid: int,
        attributes: Mapping[str, Any] | None = None,
        max_message_length: int = 32_768,
        max_value_length: int = 8_192,
    ) -> None:
        self.service = service
        self.environment = environment
        self.host = host
        self.pid = pid
        self.global_attrs = dict(attributes) if attributes else None
        self.max_message_length = max_message_length
        self.max_value_length = max_value_length
        self.locations: dict[Any, str] = {}

    def attrs_json(self, attrs: Mapping[str, Any]) -> bytes:
        """Attributes as JSON bytes that PostgreSQL's jsonb accepts."""
        limit = self.max_value_length
        try:
            out = _dumps(attrs, _json_default, _OPTS)
        except (_JSONError, TypeError):
            out = None
        # \u0000 is valid JSON but not valid jsonb; a long document may hold a value to truncate.
        if out is None or _NUL_ESCAPE in out or len(out) > limit:
            out = _dumps(sanitize_value(dict(attrs), limit), _safe_repr, _OPTS)
        # orjson hands back a buffer sized for growth; a batch keeps thousands alive, and an
        # exact-size copy is much cheaper than holding (and faulting in) those.
        return bytes(memoryview(out))

    def text(self, value: Any, limit: int) -> str:
        """Any value as text PostgreSQL accepts, at most ``limit`` characters (plus the marker)."""
        text: str = value if type(value) is str else _safe_str(value)
        if text.isascii() and len(text) <= limit and "\x00" not in text:
            return text
        return sanitize_text(text, limit)

    def location_text(self, loc: Any) -> str:
        """``"file:line"`` for a location, remembered per call site."""
        out = self.text(f"{loc[0]}:{loc[1]}" if type(loc) is tuple else loc, 4096)
        if len(self.locations) >= _MAX_LOCATIONS:
            self.locations.clear()
        self.locations[loc] = out
        return out

    def row(self, rec: Any) -> Row:
        """One record as a row in COLUMNS order (ts stays integer nanoseconds).

        A record is an ended Span (its ``_record()`` gives the tuple) or a tuple built on the
        emit path: ``(kind, ts_ns, level, trace_id, span_id, parent_id, duration_ns, status,
        service or None, name, message, attrs or None, error, location)``. ``error`` is what the
        caller had at hand (an exception, a stack summary, or strings; see ``error_fields``);
        ``location`` is ``"file:line"`` or a ``(file, line)`` pair.
        """
        if type(rec) is not tuple:
            rec = rec._record()  # an ended Span is its own record
        (
            kind,
            ts,
            level,
            trace_id,
            span_id,
            parent_id,
            dur,
            status,
            service,
            name,
            msg,
            attrs,
            err,
            loc,
        ) = rec
        limit = self.max_message_length
        text = self.text
        g = self.global_attrs
        if g is not None:
            attrs = {**g, **attrs} if attrs else g
        if err is None:
            etype = emsg = estack = None
        else:
            etype, emsg, estack = error_fields(err)
            if etype is not None:
                etype = text(etype, limit)
            if emsg is not None:
                emsg = text(emsg, limit)
            if estack is not None:
                estack = text(estack, limit * 4)
        if loc is not None:
            cached = self.locations.get(loc)
            loc = self.location_text(loc) if cached is None else cached
        return (
            ts,
            kind,
            level,
            trace_id,
            span_id,
            parent_id,
            dur,
            status,
            self.service if service is None else text(service, 256),
            self.environment,
            self.host,
            self.pid,
            None if name is None else text(name, 1024),
            None if msg is None else text(msg, limit),
            None if not attrs else self.attrs_json(attrs),
            etype,
            emsg,
            estack,
            loc,
        )

    def rows(self, records: Iterable[Any]) -> list[Row]:
        """Rows for a batch; a record that cannot be encoded at all becomes an error row."""
        if _compiled_rows is not None:
            return _compiled_rows(self, records)  # type: ignore[no-any-return]
        return self.rows_py(records)

    def rows_py(self, records: Iterable[Any]) -> list[Row]:
        """The pure-Python twin of the compiled ``encode_rows``."""
        out: list[Row] = []
        append = out.append
        row = self.row
        for rec in records:
            try:
                append(row(rec))
            except Exception as exc:
                append(self.broken_row(rec, exc))
        return out

    def broken_row(self, rec: Any, exc: Exception) -> Row:
        """A malformed record (a bug, or a hand-built tuple) still lands, described, not dropped."""
        ts = rec[1] if isinstance(rec, tuple) and len(rec) > 1 and type(rec[1]) is int else None
        return (
            time.time_ns() if ts is None else ts,
            0,
            40,
            None,
            None,
            None,
            None,
            0,
            self.service,
            self.environment,
            self.host,
            self.pid,
            "atrace.encode",
            self.text(f"unencodable record: {_safe_repr(rec)}", self.max_message_length),
            None,
            _type_name(type(exc)),
            self.text(_safe_str(exc), self.max_message_length),
            None,
            None,
        )


def _compiled() -> Any:
    # The compiled fast path, unless ATRACE_PUREPYTHON forces the twin or it is not built.
    if os.environ.get("ATRACE_PUREPYTHON", "") not in ("", "0"):
        return None
    try:
        from ._encode import encode_rows
    except ImportError:
        return None
    return encode_rows


_compiled_rows = _compiled()
IMPLEMENTATION = "python" if _compiled_rows is None else "cython"
