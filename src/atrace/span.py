"""Spans: ``span()`` as a sync/async context manager and the ``@traced`` decorator."""

from __future__ import annotations

import functools
import sys
import time
from types import TracebackType

from ._ids import format_span_id, new_span_id, new_trace_id
from ._runtime import runtime
from .context import get_current, reset_current, set_current
from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Generator
    from typing import Any, TypeVar

    __all__ = ("Span", "span", "traced")

_time_ns = time.time_ns
_getframe = sys._getframe

# Level numbers as in the logging module; a span is INFO unless it failed.
_INFO = 20
_ERROR = 40
_STATUS_NAMES = {"unset": 0, "ok": 1, "error": 2}


class Span:
    """One timed operation. Enter it with ``with`` or ``async with``; it is the current span inside.

    Records are built only when the span ends (one row), unless the flusher saw it still running,
    in which case it wrote a start row and the end becomes a second row.
    """

    __slots__ = (
        "_parent",
        "_token",
        "announced",
        "attrs",
        "error",
        "location",
        "name",
        "parent_id",
        "service",
        "span_id",
        "start_ns",
        "status",
        "trace_id",
    )

    def __init__(
        self,
        name: str,
        attrs: dict[str, Any] | None = None,
        location: str | tuple[str, int] | None = None,
        service: str | None = None,
    ) -> None:
        self.name = name
        self.attrs = attrs
        self.location = location
        self.service = service
        self.status = 0
        self.error: Any = None
        self.announced = False
        self.span_id: int | None = None
        self.trace_id = ""
        self.parent_id: int | None = None
        self.start_ns = 0
        # Until entered: the parent to use when the context has none (a Tracer's remote parent).
        self._parent: SpanLike | None = None

    # -- lifecycle (hot path) -------------------------------------------------------------------

    def _begin(self, parent: SpanLike | None) -> None:
        if parent is None:
            self.trace_id = new_trace_id()
            self.parent_id = None
        else:
            self.trace_id = parent.trace_id
            self.parent_id = parent.span_id
        self._parent = parent
        self.span_id = new_span_id()
        runtime.open_spans.add(self)
        self.start_ns = _time_ns()

    def _end(self, exc: BaseException | None) -> None:
        end = _time_ns()
        runtime.open_spans.discard(self)
        status = self.status
        level = _INFO
        if exc is not None:
            self.error = exc
            if isinstance(exc, Exception):
                status = 2
            # Cancellation and generator close are control flow: keep the cause, not a failure.
        elif status == 0:
            status = 1
        if status == 2:
            level = _ERROR
        runtime.push(
            (
                2 if self.announced else 3,
                self.start_ns,
                level,
                self.trace_id,
                self.span_id,
                self.parent_id,
                end - self.start_ns,
                status,
                self.service,
                self.name,
                None,
                self.attrs,
                self.error,
                self.location,
            )
        )

    def __enter__(self) -> Span:
        parent = get_current() or self._parent
        self._begin(parent)
        self._token = set_current(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reset_current(self._token, self._parent)
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
        if self.attrs is None:
            self.attrs = attrs
        else:
            self.attrs.update(attrs)
        return self

    set_attributes = set

    def set_status(self, status: str | int, message: str | None = None) -> Span:
        """Set the outcome: ``"ok"``, ``"error"`` or ``"unset"`` (an exception leaving sets error)."""
        code = _STATUS_NAMES.get(status) if isinstance(status, str) else status
        if code not in (0, 1, 2):
            raise ConfigError("status", status, "expected 'ok', 'error' or 'unset'")
        self.status = code
        if message is not None and code == 2 and self.error is None:
            self.error = (None, message, None)
        return self

    def record_exception(self, exc: BaseException, *, failed: bool = True) -> Span:
        """Record a handled exception on this span; by default the span is then marked failed."""
        self.error = exc
        if failed:
            self.status = 2
        return self

    @property
    def span_id_hex(self) -> str | None:
        """The span id as 16 hex digits (the W3C form)."""
        return None if self.span_id is None else format_span_id(self.span_id)

    def __repr__(self) -> str:
        return f"<Span {self.name!r} trace={self.trace_id} span={self.span_id_hex}>"


def _caller_location(depth: int) -> tuple[str, int]:
    frame = _getframe(depth + 1)
    return (frame.f_code.co_filename, frame.f_lineno)


def span(name: str, /, **attrs: Any) -> Span:
    """A span named ``name`` with attributes; use ``with`` or ``async with``."""
    frame = _getframe(1)
    return Span(name, attrs or None, (frame.f_code.co_filename, frame.f_lineno))


# ---- @traced ----------------------------------------------------------------------------------


def traced(arg: Any = None, /, **attrs: Any) -> Any:
    """Wrap a function in a span named after its qualified name (or the name given).

    Works on sync and async functions, and on sync and async generators, where the span covers
    the whole iteration and is current only while the generator body runs.
    """
    if callable(arg):
        return _decorate(arg, None, attrs, None)
    if arg is not None and not isinstance(arg, str):
        raise ConfigError("name", arg, "expected a span name (str) or a function")
    return functools.partial(_decorate, name=arg, attrs=attrs, service=None)


def _decorate(
    fn: F, name: str | None, attrs: dict[str, Any], service: str | None
) -> F:
    import inspect

    target = inspect.unwrap(fn)
    span_name = name or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
    code = getattr(target, "__code__", None)
    location = f"{code.co_filename}:{code.co_firstlineno}" if code is not None else None
    bound = dict(attrs) or None

    def new() -> Span:
        return Span(span_name, None if bound is None else dict(bound), location, service)

    if inspect.isasyncgenfunction(target):

        @functools.wraps(fn)
        def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            return _traced_agen(new(), fn(*args, **kwargs))

        return agen_wrapper  # type: ignore[return-value]

    if inspect.isgeneratorfunction(target):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            return _traced_gen(new(), fn(*args, **kwargs))

        return gen_wrapper  # type: ignore[return-value]

    if inspect.iscoroutinefunction(target):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with new():
                return await fn(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        with new():
            return fn(*args, **kwargs)

    return sync_wrapper  # type: ignore[return-value]


async def _traced_agen(sp: Span, agen: AsyncGenerator[Any, Any]) -> AsyncGenerator[Any, Any]:
    # The span is current only while the generator body runs, never in the consumer between
    # items, and it ends wherever the generator is finalised without touching a foreign Context.
    sp._begin(get_current())
    failure: BaseException | None = None
    try:
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            token = set_current(sp)
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = await agen.athrow(exc)
                else:
                    item = await agen.asend(to_send)
            except StopAsyncIteration:
                return
            finally:
                reset_current(token, sp._parent)
            try:
                to_send = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:  # thrown in by the consumer: forward it
                to_throw = exc
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            await agen.aclose()
        finally:
            sp._end(failure if not isinstance(failure, GeneratorExit) else None)


def _traced_gen(sp: Span, gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    sp._begin(get_current())
    failure: BaseException | None = None
    try:
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            token = set_current(sp)
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = gen.throw(exc)
                else:
                    item = gen.send(to_send)
            except StopIteration as stop:
                return stop.value
            finally:
                reset_current(token, sp._parent)
            try:
                to_send = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:
                to_throw = exc
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            gen.close()
        finally:
            sp._end(failure if not isinstance(failure, GeneratorExit) else None)
