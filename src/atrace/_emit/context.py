"""The current span, carried by contextvars across tasks, threads and executors."""

from __future__ import annotations

import contextvars
import functools
import threading
from types import TracebackType

from ..errors import ConfigError
from .hot import SpanContext, new_trace_id, reset_current
from .ids import format_span_id, parse_span_id, parse_trace_id
from .runtime import current

# W3C propagation lives in tracecontext; its functions are reachable from here as well.
from .tracecontext import extract, format_traceparent, inject, parse_traceparent

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol, TypeVar

    T = TypeVar("T")

    class SpanLike(Protocol):
        """What the context holds: a live span or a remote parent."""

        trace_id: str
        span_id: int | None

        @property
        def flags(self) -> int: ...
        @property
        def trace_state(self) -> str: ...


__all__ = (
    "SpanContext",
    "Thread",
    "current_span",
    "current_span_id",
    "current_trace_id",
    "extract",
    "format_traceparent",
    "inject",
    "parse_traceparent",
    "run_in_executor",
    "trace_context",
    "wrap",
)


_current = current


def current_span() -> SpanLike | None:
    """The innermost active span (or remote parent) of this context, or None."""
    cur: SpanLike | None = _current.get()
    return cur


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside any trace."""
    cur = _current.get()
    return None if cur is None else cur.trace_id


def current_span_id() -> str | None:
    """The current span id as 16 hex digits, or None outside any span."""
    cur = _current.get()
    if cur is None or cur.span_id is None:
        return None
    return format_span_id(cur.span_id)


class trace_context:
    """Run a block in a given trace (or a fresh one): spans opened inside join it.

    ``trace_id`` takes 32 hex digits (dashes allowed); ``parent_id`` a span id as 16 hex digits
    or a signed integer, for work continuing a span started elsewhere. A SpanContext (what
    ``extract()`` returns) is used as it is, with its flags and tracestate. Use ``with`` or
    ``async with``; the value bound by ``as`` is the SpanContext.
    """

    __slots__ = ("_ctx", "_prev", "_token")

    def __init__(
        self, trace_id: str | SpanContext | None = None, *, parent_id: str | int | None = None
    ) -> None:
        if isinstance(trace_id, SpanContext):
            if parent_id is not None:
                raise ConfigError("parent_id", parent_id, "not with a SpanContext, which has one")
            self._ctx = trace_id
            return
        if trace_id is None:
            # atrace's ids have random right-most 7 bytes: sampled (1) and "random" (2).
            tid, flags = new_trace_id(), 3
        else:
            parsed = parse_trace_id(trace_id) if isinstance(trace_id, str) else None
            if parsed is None:
                raise ConfigError("trace_id", trace_id, "expected 32 hex digits, not all zero")
            # How a given id was made cannot be told: no "random" flag.
            tid, flags = parsed, 1
        self._ctx = SpanContext(tid, coerce_span_id(parent_id), flags=flags)

    def __enter__(self) -> SpanContext:
        self._prev = _current.get()
        self._token = _current.set(self._ctx)
        return self._ctx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reset_current(self._token, self._prev)

    async def __aenter__(self) -> SpanContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def coerce_span_id(value: str | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError("parent_id", value, "expected 16 hex digits or an integer")
    if isinstance(value, int):
        if value == 0 or not -(1 << 63) <= value < (1 << 64):
            raise ConfigError("parent_id", value, "expected a non-zero 64-bit integer")
        return value - (1 << 64) if value >= (1 << 63) else value
    parsed = parse_span_id(value) if isinstance(value, str) else None
    if parsed is None:
        raise ConfigError("parent_id", value, "expected 16 hex digits, not all zero")
    return parsed


# ---- threads and executors -------------------------------------------------------------------


def wrap(fn: Callable[..., T]) -> Callable[..., T]:
    """Bind ``fn`` to a copy of the current context, so it runs under the current span anywhere."""
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        return ctx.run(fn, *args, **kwargs)

    return run


async def run_in_executor(executor: Any, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``loop.run_in_executor`` that keeps the current span (which the plain call does not)."""
    import asyncio

    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return await loop.run_in_executor(executor, functools.partial(ctx.run, fn, *args, **kwargs))


class Thread(threading.Thread):
    """A ``threading.Thread`` whose target runs under the span current when it was created."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._atrace_context = contextvars.copy_context()

    def run(self) -> None:
        self._atrace_context.run(super().run)
