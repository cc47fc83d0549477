"""The emit slow path: log records with every option, and what a record takes at call time.

Shared by the compiled emit module and its twin; the common case never comes here. A record
stores what was true when it was made, although the flusher encodes it later: mutable containers
among its attributes are copied (:func:`freeze`), and an exception is taken with its message and
the head of its traceback as they were then (:class:`Caught`), so that frames it passes through
afterwards, or a message changed later, do not leak into this record.
"""

from __future__ import annotations

import sys
import time

from .._records import ORIGIN
from .runtime import current

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn

__all__ = (
    "ATOMIC",
    "ORIGIN",
    "Caught",
    "build",
    "catch",
    "error_of",
    "format_message",
    "freeze",
    "misused",
    "snapshot",
    "span_kind",
    "span_links",
)

# Set on the exception object itself: (hex span id, whether that record was the span's own).
_MARK = "__atrace_origin__"
_U64 = (1 << 64) - 1
# Attribute values kept as they are: immutable, and the common case.
ATOMIC = frozenset({str, int, float, bool, type(None), bytes})

_time_ns = time.time_ns
_getframe = sys._getframe
get_current = current.get


class Caught:
    """An exception as a record took it: the exception, the head of its traceback and its
    message at that moment (formatted by the flusher, off the caller's task)."""

    __slots__ = ("exc", "message", "tb")

    def __init__(self, exc: BaseException, tb: Any, message: str) -> None:
        self.exc = exc
        self.tb = tb
        self.message = message

    def __repr__(self) -> str:
        return f"<Caught {type(self.exc).__qualname__}: {self.message}>"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__qualname__}>"


def catch(exc: BaseException, span_id: int | None, own: bool, attrs: Any) -> tuple[Caught, Any]:
    """The exception as of now, and ``attrs`` with the link to the record that took it first.

    ``span_id`` is the span the record belongs to (its own for a span record, ``own``; the
    current one for a log). Returns the :class:`Caught` and the attributes to store (a new dict
    when a link was added, never the caller's mutated).
    """
    here = "" if not span_id else "%016x" % (span_id & _U64)
    try:
        mark = exc.__dict__.get(_MARK)
    except AttributeError:  # no __dict__: nothing to remember the first record by
        mark = None
    else:
        if mark is None:
            try:
                setattr(exc, _MARK, (here, own))
            except Exception:
                pass
    if mark is not None and not (own and mark == (here, True)):
        attrs = {**attrs, ORIGIN: mark[0]} if attrs else {ORIGIN: mark[0]}
    return Caught(exc, exc.__traceback__, _message(exc)), attrs


def snapshot(value: Any, memo: dict[int, Any]) -> Any:
    """A copy of ``value`` as it is now: containers (and bytearray) copied all the way down,
    other values as they are; a container met twice is copied once (cycles stay cycles)."""
    tp = type(value)
    if tp in ATOMIC:
        return value
    if isinstance(value, (dict, list, tuple, set, frozenset, bytearray)):
        key = id(value)
        done = memo.get(key)
        if done is not None:
            return done
        if isinstance(value, dict):
            copy: Any = {}
            memo[key] = copy
            for k, v in list(value.items()):
                copy[k] = snapshot(v, memo)
            return copy
        if isinstance(value, list):
            copy = []
            memo[key] = copy
            copy.extend([snapshot(v, memo) for v in list(value)])
            return copy
        if isinstance(value, bytearray):
            memo[key] = copy = bytes(value)
            return copy
        items = [snapshot(v, memo) for v in list(value)]
        if isinstance(value, tuple):
            copy = value if all(a is b for a, b in zip(items, value, strict=True)) else tuple(items)
        else:  # a set: its members are hashable, but a frozenset member may hold a copy
            copy = frozenset(items) if isinstance(value, frozenset) else set(items)
        memo[key] = copy
        return copy
    return value


def freeze(attrs: dict[str, Any]) -> dict[str, Any]:
    """Replace, in place, every mutable container among ``attrs``' values with a copy as of
    now; returns ``attrs``. The caller owns the dict (a call's ``**kwargs``)."""
    memo: dict[int, Any] = {}
    for key, value in attrs.items():
        if type(value) not in ATOMIC:
            attrs[key] = snapshot(value, memo)
    return attrs


def format_message(msg: Any, args: tuple[Any, ...]) -> Any:
    """``msg % args`` as :mod:`logging` does it (one mapping argument fills ``%(name)s``).

    The values are read now, at the call. Arguments the message cannot take raise a
    ``ConfigError`` saying how atrace takes values, never a bare ``TypeError``.
    """
    from collections.abc import Mapping

    if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        args = args[0]  # type: ignore[assignment]
    try:
        return msg % args
    except (TypeError, ValueError, KeyError) as exc:
        from ..errors import ConfigError

        raise ConfigError(
            "args",
            args,
            f"the message {msg!r} cannot take these arguments ({exc}); pass values as"
            " keyword attributes (atrace.info('user logged in', user=name)) or as %-style"
            " arguments that match the message",
        ) from None


# OpenTelemetry's span kinds by name, as stored (its protocol's numbers).
_SPAN_KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}


def span_kind(value: Any) -> int:
    """The stored number of a span kind given as a name (``"server"``), an
    :class:`~atrace.SpanKind`, or an enum member with such a name (OpenTelemetry's API
    ``SpanKind.SERVER``, whose own numbers differ from its protocol's)."""
    if type(value) is str:
        name = value.lower()
    elif isinstance(value, int) and not isinstance(value, bool):
        if type(value) is not int and hasattr(value, "name"):  # an IntEnum: by its name
            name = str(value.name).lower()
        elif 1 <= value <= 5:
            return int(value)
        else:
            name = ""
    else:
        name = str(getattr(value, "name", "")).lower()
    kind = _SPAN_KINDS.get(name)
    if kind is None:
        from ..errors import ConfigError

        raise ConfigError(
            "kind", value, "expected 'internal', 'server', 'client', 'producer' or 'consumer'"
        )
    return kind


def misused(name: Any) -> NoReturn:
    """Raise the error for ``@atrace.span`` used as a decorator."""
    from ..errors import ConfigError

    raise ConfigError(
        "name",
        getattr(name, "__qualname__", name),
        "atrace.span() is a context manager (with/async with); to trace a function, decorate"
        " it with @atrace.traced or @atrace.traced('name')",
    )


def error_of(
    exc_info: Any,
    exception: BaseException | None,
    error_message: str | None,
    stack_trace: str | None,
    depth: int,
) -> Any:
    """What a log call knows about an error, kept raw; the flusher's encoder formats it later.

    An exception comes back as is: :func:`build` takes it as of now with :func:`catch`.
    """
    base: Any = None
    if exception is not None:
        base = exception
    elif exc_info:
        if isinstance(exc_info, BaseException):
            base = exc_info
        elif isinstance(exc_info, tuple) and len(exc_info) == 3:
            base = exc_info[1]
        else:
            base = sys.exc_info()[1]
            if base is None:
                # Outside an except block, the useful trace is where the call was made.
                import traceback

                base = traceback.extract_stack(_getframe(depth + 1))
    if error_message is None and stack_trace is None:
        return base
    return (base, None, error_message, stack_trace)


def build(
    level: int,
    msg: Any,
    attrs: dict[str, Any],
    exc_info: Any,
    exception: BaseException | None,
    error_message: str | None,
    stack_trace: str | None,
    module: str | None,
    extra: Mapping[str, Any] | None,
    depth: int,
    service: str | None = None,
    fallback: Any = None,
) -> tuple[Any, ...]:
    """A log record with every option; the common case is inlined in the level functions."""
    frame = _getframe(depth + 1)
    if extra:
        attrs = {**extra, **attrs}
    cur = get_current() or fallback
    if cur is None:
        trace_id = span_id = None
    else:
        trace_id = cur.trace_id
        span_id = cur.span_id
    if attrs:
        for value in attrs.values():
            if type(value) not in ATOMIC:
                freeze(attrs)
                break
    err = None
    if exc_info or exception is not None or error_message is not None or stack_trace is not None:
        err = error_of(exc_info, exception, error_message, stack_trace, depth + 1)
        base = err[0] if type(err) is tuple else err
        if isinstance(base, BaseException):
            caught, attrs = catch(base, span_id, False, attrs)
            err = caught if type(err) is not tuple else (caught, *err[1:])
    return (
        0,
        _time_ns(),
        level,
        trace_id,
        span_id,
        None,
        None,
        0,
        service,
        module or frame.f_globals.get("__name__"),
        msg,
        attrs or None,
        err,
        (frame.f_code.co_filename, frame.f_lineno),
    )


_LINK_HELP = (
    "expected a list of links, each a SpanContext, a Span, an OpenTelemetry SpanContext or"
    " Link, or a (trace_id, span_id) or (trace_id, span_id, attributes) tuple"
)


def _link_id(value: Any, digits: int) -> str | None:
    # An id as lower-case hex: given as hex text (a trace id may have dashes, as a UUID) or as
    # an int (a signed 64-bit span id as atrace keeps it, or OpenTelemetry's unsigned one).
    if isinstance(value, int) and not isinstance(value, bool):
        if -(1 << 63) <= value < (1 << (4 * digits)):
            return f"{value & ((1 << (4 * digits)) - 1):0{digits}x}"
        return None
    if type(value) is str:
        text = value.replace("-", "").lower() if digits == 32 else value.lower()
        if len(text) == digits and all(c in "0123456789abcdef" for c in text):
            return text
    return None


def span_links(value: Any) -> tuple[dict[str, Any], ...]:
    """Links given to a span, as the ``links`` column keeps them: ``{"trace_id": 32 hex,
    "span_id": 16 hex}`` with ``trace_state``, ``flags`` and ``attrs`` when they say
    something. Checked here, when the span is made, so that a wrong link fails at the call."""
    from ..errors import ConfigError

    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError("links", value, _LINK_HELP)
    out = []
    for item in value:
        attrs: Any = None
        context: Any = item
        if type(item) is tuple and len(item) in (2, 3):
            trace_id, span_id = item[0], item[1]
            attrs = item[2] if len(item) == 3 else None
            state: Any = ""
            flags: Any = None
        else:
            if hasattr(item, "context") and hasattr(item, "attributes"):  # OpenTelemetry's Link
                context, attrs = item.context, item.attributes
            trace_id = getattr(context, "trace_id", None)
            span_id = getattr(context, "span_id", None)
            state = getattr(context, "trace_state", "")
            flags = getattr(context, "trace_flags", getattr(context, "flags", None))
            if state is not None and type(state) is not str:  # OpenTelemetry's TraceState
                to_header = getattr(state, "to_header", None)
                state = to_header() if callable(to_header) else ""
        tid = _link_id(trace_id, 32)
        sid = _link_id(span_id, 16)
        if tid is None or sid is None:
            raise ConfigError("links", item, _LINK_HELP)
        link: dict[str, Any] = {"trace_id": tid, "span_id": sid}
        if state:
            link["trace_state"] = str(state)
        if isinstance(flags, int) and not isinstance(flags, bool) and 0 < flags <= 255:
            link["flags"] = int(flags)
        if attrs:
            if not hasattr(attrs, "items"):
                raise ConfigError("links", item, "a link's attributes must be a mapping")
            link["attrs"] = freeze(dict(attrs))
        out.append(link)
    return tuple(out)
