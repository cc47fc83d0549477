"""Values made safe to store: text PostgreSQL accepts, JSON-safe copies, error fields, safe repr.

Every rule here keeps one bad value from failing a whole batch: NUL characters and lone
surrogates (which PostgreSQL rejects) are replaced with U+FFFD, values JSON cannot hold fall back
to ``repr``, integers beyond 64 bits become strings, cycles are cut, NaN and infinities become
``null`` (JSON has no such numbers), and oversize text is truncated with a marker. Both row
encoders (compiled and twin), the sinks and the wire formats share these helpers.
"""

from __future__ import annotations

import traceback
from typing import Any

import orjson

from .._emit.slow import Caught

__all__ = (
    "REPLACEMENT",
    "error_fields",
    "json_default",
    "safe_repr",
    "safe_str",
    "sanitize_text",
    "sanitize_value",
    "type_name",
)

REPLACEMENT = "\ufffd"
_INT64_MIN = -(1 << 63)
_UINT64_MAX = (1 << 64) - 1
_MAX_DEPTH = 64


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


def safe_str(value: Any) -> str:
    """``str(value)``, or its safe repr when ``__str__`` raises."""
    try:
        return str(value)
    except Exception:
        return safe_repr(value)


def safe_repr(value: Any) -> str:
    """``repr(value)``, or a placeholder naming the type when ``__repr__`` raises."""
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__qualname__}>"


def json_default(value: Any) -> Any:
    """orjson's ``default``: sets as lists, anything else it cannot hold as its repr."""
    if isinstance(value, (set, frozenset)):
        return list(value)
    return safe_repr(value)


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
                sanitize_text(k if isinstance(k, str) else safe_str(k), limit): sanitize_value(
                    v, limit, depth + 1, inner
                )
                for k, v in value.items()
            }
        return [sanitize_value(v, limit, depth + 1, inner) for v in value]
    try:
        # Types orjson knows natively (datetime, UUID, dataclasses, enums) keep its rendering.
        return sanitize_value(
            orjson.loads(orjson.dumps(value, default=safe_repr)), limit, depth + 1, path
        )
    except (orjson.JSONEncodeError, TypeError, ValueError):
        return sanitize_text(safe_repr(value), limit)


def type_name(tp: type) -> str:
    """A type's qualified name, prefixed with its module unless builtin or ``__main__``."""
    module = getattr(tp, "__module__", None)
    if module in (None, "builtins", "__main__"):
        return tp.__qualname__
    return f"{module}.{tp.__qualname__}"


def error_fields(err: Any) -> tuple[str | None, str | None, str | None]:
    """``(error_type, error_message, stack_trace)`` from what the emit path stored."""
    if err is None:
        return (None, None, None)
    if type(err) is Caught:
        # Taken when the record was made: the traceback as far as it had come then.
        exc = err.exc
        try:
            te = traceback.TracebackException(type(exc), exc, err.tb, compact=True)
            if hasattr(te, "_str"):  # its last line says the message as it was then too
                te._str = err.message
            stack = "".join(te.format())
        except Exception:
            stack = None
        return (type_name(type(exc)), err.message, stack)
    if isinstance(err, BaseException):
        try:
            stack = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        except Exception:
            stack = None
        return (type_name(type(err)), safe_str(err), stack)
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
    return (None, safe_str(err), None)
