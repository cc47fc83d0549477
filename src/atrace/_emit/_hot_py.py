"""The emit hot path in pure Python: ids, Span, span() and the level functions.

The twin of the compiled ``_emit`` module; ``atrace._emit.hot`` picks one. Both pass the same tests.
"""

from __future__ import annotations

import os
import random
import sys
import time
from types import TracebackType

from .._records import Frozen
from .runtime import current, runtime
from .slow import ATOMIC, build, catch, format_message, freeze, misused, span_kind, span_links

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, NoReturn

__all__ = (
    "Span",
    "SpanContext",
    "begin",
    "critical",
    "debug",
    "end",
    "error",
    "exception",
    "info",
    "new_span_id",
    "new_trace_id",
    "parent_of",
    "reseed",
    "set_parent",
    "span",
    "start_record",
    "warning",
)

_time_ns = time.time_ns
_getframe = sys._getframe
get_current = current.get
_set = current.set


def set_current(value: Any) -> Any:
    """Make ``value`` the current span of this context; the token resets it."""
    return _set(value)


_reset = current.reset

# One private generator: uuid4()/os.urandom cost a syscall per id, and the module-level `random`
# instance may be reseeded by user code. Reseeded after fork so parent and child never share ids.
_rng = random.Random()
_getrandbits = _rng.getrandbits


def reseed() -> None:
    """Fresh random state (at import, and in the child after fork)."""
    _rng.seed()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reseed)

_HALF = 1 << 63
_U64 = (1 << 64) - 1
# Level numbers as in the logging module; a span is INFO unless it failed.
_INFO = 20
_ERROR = 40
_STATUS_NAMES = {"unset": 0, "ok": 1, "error": 2}
# The open-spans set is cleared in place (never replaced), so one reference serves for good.
_open_spans = runtime.open_spans


def new_trace_id() -> str:
    """A 32-hex-digit trace id: 48-bit millisecond timestamp, then 80 random bits."""
    # The millisecond prefix is never zero, so the id is never the invalid all-zero trace id.
    return "%032x" % ((((_time_ns() // 1_000_000) & 0xFFFFFFFFFFFF) << 80) | _getrandbits(80))


def new_span_id() -> int:
    """A random non-zero span id as a signed 64-bit integer (the PostgreSQL ``bigint`` form)."""
    # Uniform on [-2**63, 2**63): its two's-complement bytes are 8 uniformly random bytes.
    sid = _getrandbits(64) - _HALF
    return sid or new_span_id()


def reset_current(token: Any, parent: Any) -> None:
    """Restore the context a span replaced, even from a different Context.

    A generator closed by the garbage collector, or a task cancelled and finalised elsewhere, exits
    its span in a Context other than the one that entered it; ``ContextVar.reset`` then raises
    ValueError. Setting the parent back is the correct outcome there, and never raises.
    """
    try:
        _reset(token)
    except ValueError:
        _set(parent)


# Positional, unlike atrace's other value classes: users and the package build it as
# SpanContext(trace_id, span_id). Compiled, it is an extension type (a request's remote parent
# is built per request); here, a frozen slotted value.
class SpanContext(Frozen):
    """A parent that is not a live span here: a remote caller, or a trace_context block.

    :ivar trace_id: the trace, as 32 hex digits.
    :ivar span_id: the parent span as a signed 64-bit integer, or None (a trace without a
        parent span here).
    :ivar flags: the W3C trace flags (8 bits) as the caller sent them: bit 0 "sampled", bit 1
        "random trace id". Spans under it keep only those two, as the W3C asks of unknown flags.
    :ivar trace_state: the caller's ``tracestate``, validated and normalised ("" when none).
    :ivar sampled: bit 0 of ``flags``; ``sampled=`` given to the constructor sets that bit.
    """

    __slots__ = ("flags", "span_id", "trace_id", "trace_state")

    trace_id: str
    span_id: int | None
    flags: int
    trace_state: str

    def __init__(
        self,
        trace_id: str,
        span_id: int | None = None,
        sampled: bool | None = None,
        *,
        flags: int = 1,
        trace_state: str = "",
    ) -> None:
        if type(flags) is not int or not 0 <= flags <= 255:
            from ..errors import ConfigError

            raise ConfigError("flags", flags, "expected an integer from 0 to 255")
        if type(trace_state) is not str:
            from ..errors import ConfigError

            raise ConfigError("trace_state", trace_state, "expected a tracestate value (str)")
        if sampled is not None:
            flags = (flags & 0xFE) | (1 if sampled else 0)
        # Slot descriptors directly: a request's remote parent is built per request.
        _TRACE_ID(self, trace_id)
        _SPAN_ID(self, span_id)
        _FLAGS(self, flags)
        _TRACE_STATE(self, trace_state)

    @property
    def sampled(self) -> bool:
        """Whether the caller may have recorded its part of the trace (W3C flag bit 0)."""
        return bool(self.flags & 1)

    def __repr__(self) -> str:
        # The span id in the hex form that traceparent headers and the CLI show; flags and
        # tracestate only when they say more than a plain sampled parent.
        sid = None if self.span_id is None else "%016x" % (self.span_id & _U64)
        extra = "" if self.flags == 1 else f", flags={self.flags:#04x}"
        if self.trace_state:
            extra += f", trace_state={self.trace_state!r}"
        return f"SpanContext(trace_id={self.trace_id!r}, span_id={sid!r}{extra})"


_SLOTS = SpanContext.__dict__
_TRACE_ID = _SLOTS["trace_id"].__set__
_SPAN_ID = _SLOTS["span_id"].__set__
_FLAGS = _SLOTS["flags"].__set__
_TRACE_STATE = _SLOTS["trace_state"].__set__


class Span:
    """One timed operation. Enter it with ``with`` or ``async with``; it is the current span inside.

    The span itself is the record: on exit it goes into the buffer as it is, and the flusher
    turns it into a row (one row, or an end row when it already wrote a start row because the
    span was still running at a flush). A span object is meant to be entered once.
    """

    __slots__ = (
        "_flags",
        "_parent",
        "_token",
        "_ts",
        "announced",
        "attrs",
        "end_ns",
        "error",
        "kind",
        "level",
        "links",
        "location",
        "name",
        "parent_id",
        "service",
        "span_id",
        "start_ns",
        "status",
        "status_message",
        "trace_id",
    )

    def __init__(
        self,
        name: str,
        attrs: dict[str, Any] | None = None,
        location: str | tuple[str, int] | None = None,
        service: str | None = None,
        kind: int = 1,
        links: tuple[dict[str, Any], ...] | None = None,
    ) -> None:
        self.name = name
        self.attrs = None if attrs is None else freeze(attrs)
        self.location = location
        self.service = service
        # OpenTelemetry's SpanKind number (0 read as internal, as in the compiled Span).
        self.kind = kind
        # The spans this one links to, as slow.span_links gives them (None: none).
        self.links = links or None
        self.status = 0
        self.status_message: str | None = None
        self.level = 20
        self.error: Any = None
        self.announced = False
        self.span_id: int | None = None
        self.trace_id = ""
        self.parent_id: int | None = None
        self.start_ns = 0
        self.end_ns = 0
        # Until entered: the parent to use when the context has none (a Tracer's remote parent).
        self._parent: Any = None
        self._token: Any = None
        # W3C trace flags (1 sampled, 2 random trace id), set when it starts, as is _ts (the
        # tracestate); 0 until then, as in the compiled Span.
        self._flags = 0

    @property
    def duration_ns(self) -> int | None:
        """Nanoseconds from start to end (None while running)."""
        return None if self.end_ns == 0 else self.end_ns - self.start_ns

    @property
    def flags(self) -> int:
        """The W3C trace flags this span propagates: 1 sampled, 2 random trace id (0 before it
        starts). A span whose parent was not sampled is not recorded, nor are its children."""
        return self._flags

    @property
    def trace_state(self) -> str:
        """The W3C ``tracestate`` this span propagates, as its remote parent sent it ("" if
        none)."""
        state: str = getattr(self, "_ts", "")
        return state

    # -- lifecycle (hot path) -------------------------------------------------------------------

    def _begin(self, parent: Any) -> None:
        if parent is None:
            self.trace_id = new_trace_id()
            self.parent_id = None
            # Sampled, and the id's right-most 7 bytes are random (the W3C "random" flag).
            self._flags = flags = 3
            self._ts = ""
        elif type(parent) is Span:
            self.trace_id = parent.trace_id
            self.parent_id = parent.span_id
            self._flags = flags = parent._flags
            self._ts = parent._ts
        else:
            self.trace_id = parent.trace_id
            self.parent_id = parent.span_id
            # Flags this version does not define go out as zero (W3C).
            self._flags = flags = getattr(parent, "flags", 1) & 3
            self._ts = getattr(parent, "trace_state", None) or ""
        self._parent = parent
        self.span_id = new_span_id()
        if flags & 1:
            # A span that is not recorded is never announced either.
            _open_spans.add(self)
        self.start_ns = _time_ns()

    def _end(self, exc: BaseException | None) -> None:
        self.end_ns = _time_ns()
        if not self._flags & 1:
            self._end_unrecorded(exc)
            return
        _open_spans.discard(self)
        if exc is not None:
            self.error, self.attrs = catch(exc, self.span_id, True, self.attrs)
            # Cancellation and generator close are control flow: keep the cause, not a failure.
            if isinstance(exc, Exception):
                self.status = 2
        # A span that did not fail stays unset unless its status was set (OpenTelemetry).
        self.level = _ERROR if self.status == 2 else _INFO
        runtime.push(self)

    def _end_unrecorded(self, exc: BaseException | None) -> None:
        # Its parent was not sampled (OpenTelemetry's ParentBased sampler): the span keeps its
        # ids for its children and outgoing calls, its outcome for the caller, and no row is
        # written. Nor does it claim the exception, which a log may record first.
        if exc is not None and isinstance(exc, Exception):
            self.status = 2
        self.level = _ERROR if self.status == 2 else _INFO

    def _record(self) -> tuple[Any, ...]:
        """The row-shaped tuple of the ended span (built by the flusher, not on the hot path)."""
        return (
            2 if self.announced else 3,
            self.start_ns,
            self.level,
            self.trace_id,
            self.span_id,
            self.parent_id,
            self.end_ns - self.start_ns,
            self.status,
            self.service,
            self.name,
            None,
            self.attrs,
            self.error,
            self.location,
            self.kind or 1,
            self._ts or None,
            self._flags,
            self.status_message,
            self.links,
        )

    def _start_record(self) -> tuple[Any, ...]:
        """The start row of a span still running: it makes a long span visible before it ends."""
        return (
            1,
            self.start_ns,
            _INFO,
            self.trace_id,
            self.span_id,
            self.parent_id,
            None,
            0,
            self.service,
            self.name,
            None,
            None if self.attrs is None else dict(self.attrs),
            None,
            self.location,
            self.kind or 1,
            self._ts or None,
            self._flags,
            None,
            None,
        )

    def __enter__(self) -> Span:
        parent = get_current() or self._parent
        self._begin(parent)
        self._token = _set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reset_current(self._token, self._parent)
        self._token = None
        self._end(exc)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- user API --------------------------------------------------------------------------------

    def set(self, **attrs: Any) -> Span:
        """Add or replace attributes of this span."""
        freeze(attrs)
        if self.attrs is None:
            self.attrs = attrs
        else:
            self.attrs.update(attrs)
        return self

    set_attributes = set

    def set_status(self, status: str | int, message: str | None = None) -> Span:
        """Set the outcome: ``"ok"``, ``"error"`` or ``"unset"`` (an exception sets error).

        A span that ends without failing and without a status set stays unset, which is
        healthy (OpenTelemetry's rule). ``message`` describes an error, kept apart from any
        exception's message; with ``"ok"`` or ``"unset"`` it is ignored, as OpenTelemetry asks.
        """
        code = _STATUS_NAMES.get(status) if isinstance(status, str) else status
        if code not in (0, 1, 2):
            from ..errors import ConfigError

            raise ConfigError("status", status, "expected 'ok', 'error' or 'unset'")
        self.status = code
        self.status_message = None if code != 2 or message is None else str(message)
        return self

    def record_exception(self, exc: BaseException, *, failed: bool = True) -> Span:
        """Record a handled exception on this span; by default the span is then marked failed."""
        # A span that will never be written (started under a not-sampled parent) must not
        # claim the exception; one not started yet may still be.
        if self._flags & 1 or self.span_id is None:
            self.error, self.attrs = catch(exc, self.span_id, True, self.attrs)
        if failed:
            self.status = 2
        return self

    @property
    def span_id_hex(self) -> str | None:
        """The span id as 16 hex digits (the W3C form)."""
        return None if self.span_id is None else "%016x" % (self.span_id & _U64)

    def __repr__(self) -> str:
        return f"<Span {self.name!r} trace={self.trace_id} span={self.span_id_hex}>"

    def __call__(self, fn: Any) -> NoReturn:
        """``@atrace.span("name")`` on a function: a mistake, answered with what to use."""
        misused(fn)


# The operations the pipeline, the integrations and the span helpers need on a span that they do
# not enter with ``with``: functions here, so Span's own surface stays what users see.
def begin(span: Span, parent: Any, keep_parent: bool = True) -> None:
    """Start ``span`` under ``parent`` (a span, a SpanContext or None) without making it current;
    ``keep_parent=False`` lets go of the parent once its ids are copied."""
    span._begin(parent)
    if not keep_parent:
        span._parent = None


def end(span: Span, exc: BaseException | None) -> None:
    """End a span started with :func:`begin`; ``exc`` is its failure, or None."""
    span._end(exc)


def start_record(span: Span) -> tuple[Any, ...]:
    """The start row of a span still running (a long span is visible before it ends)."""
    return span._start_record()


def parent_of(span: Span) -> Any:
    """The parent ``span`` was started under (a span, a SpanContext or None)."""
    return span._parent


def set_parent(span: Span, parent: Any) -> None:
    """Start ``span`` under ``parent`` when it is entered outside any current span."""
    span._parent = parent


def span(name: str, /, **attrs: Any) -> Span:
    """A span named ``name`` with attributes; use ``with`` or ``async with``.

    ``kind=``: ``"internal"`` (the default), ``"server"``, ``"client"``, ``"producer"`` or
    ``"consumer"`` (or a :class:`~atrace.SpanKind`), OpenTelemetry's span kinds; the span's
    own, not an attribute. ``links=``: spans this one is causally related to (a batch's
    messages, the request that scheduled a job), each a :class:`SpanContext`, a span, an
    OpenTelemetry ``SpanContext`` or ``Link``, or a ``(trace_id, span_id[, attributes])``
    tuple; also the span's own, not an attribute.
    """
    if type(name) is not str and callable(name):
        misused(name)
    frame = _getframe(1)
    location = (frame.f_code.co_filename, frame.f_lineno)
    kind = span_kind(attrs.pop("kind")) if "kind" in attrs else 1
    links = span_links(attrs.pop("links")) if "links" in attrs else None
    return Span(name, attrs or None, location, None, kind, links)


def _level_function(level: int, name: str, default_exc_info: bool = False) -> Callable[..., None]:
    def log(
        msg: Any,
        /,
        *args: Any,
        exc_info: Any = default_exc_info,
        exception: BaseException | None = None,
        error_message: str | None = None,
        stack_trace: str | None = None,
        module: str | None = None,
        extra: Mapping[str, Any] | None = None,
        **attrs: Any,
    ) -> None:
        if args:
            msg = format_message(msg, args)
        if (
            exc_info is False
            and exception is None
            and error_message is None
            and stack_trace is None
            and module is None
            and extra is None
        ):
            if attrs:
                for value in attrs.values():
                    if type(value) not in ATOMIC:
                        freeze(attrs)
                        break
            frame = _getframe(1)
            cur = get_current()
            runtime.push(
                (
                    0,
                    _time_ns(),
                    level,
                    None if cur is None else cur.trace_id,
                    None if cur is None else cur.span_id,
                    None,
                    None,
                    0,
                    None,
                    frame.f_globals.get("__name__"),
                    msg,
                    attrs or None,
                    None,
                    (frame.f_code.co_filename, frame.f_lineno),
                )
            )
            return
        runtime.push(
            build(
                level, msg, attrs, exc_info, exception, error_message, stack_trace, module, extra, 1
            )
        )

    log.__name__ = log.__qualname__ = name
    log.__doc__ = (
        f"Emit a {name} log linked to the current span; keyword arguments become attributes.\n\n"
        "Positional arguments fill %-style placeholders in the message, as in logging "
        "(formatted at the call). "
        "``exc_info=True`` records the exception being handled (outside an except block: the "
        "caller's stack); ``exception=e`` a given one; ``error_message=``/``stack_trace=`` "
        "explicit text; ``module=`` names the logger; ``extra=`` is merged into the attributes."
    )
    return log


debug = _level_function(10, "debug")
info = _level_function(20, "info")
warning = _level_function(30, "warning")
error = _level_function(40, "error")
exception = _level_function(40, "exception", default_exc_info=True)
critical = _level_function(50, "critical")
