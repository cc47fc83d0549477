"""Spans: ``span()`` as a sync/async context manager and the ``@traced`` decorator."""

from __future__ import annotations

import functools

from ..errors import ConfigError
from .hot import Span, begin, end, get_current, parent_of, reset_current, set_current, span
from .slow import span_kind, span_links

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Generator
    from typing import Any, TypeVar, overload

    F = TypeVar("F", bound=Callable[..., Any])
else:
    # At run time the last definition of ``traced`` wins anyway, so the overloads need no
    # typing.overload (typing stays off `import atrace`); ruff cannot tell, hence the noqa.
    def overload(fn):
        return fn


__all__ = ("Span", "span", "traced")


# ---- @traced ----------------------------------------------------------------------------------


@overload
def traced(fn: F, /) -> F: ...
@overload
def traced(  # noqa: F811
    name: str | None = None, /, *, kind: Any = None, links: Any = None, **attrs: Any
) -> Callable[[F], F]: ...


def traced(  # noqa: F811
    arg: Any = None, /, *, kind: Any = None, links: Any = None, **attrs: Any
) -> Any:
    """Wrap a function in a span named after its qualified name (or the name given).

    Works on sync and async functions, and on sync and async generators, where the span covers
    the whole iteration and is current only while the generator body runs. ``kind`` and
    ``links`` are the span's kind and links, as for :func:`atrace.span` (the same links on
    every call).
    """
    number = 1 if kind is None else span_kind(kind)
    linked = span_links(links) or None
    if callable(arg):
        return decorate(arg, None, attrs, None, number, linked)
    if arg is not None and not isinstance(arg, str):
        raise ConfigError("name", arg, "expected a span name (str) or a function")
    return functools.partial(
        decorate, name=arg, attrs=attrs, service=None, kind=number, links=linked
    )


def decorate(
    fn: F,
    name: str | None,
    attrs: dict[str, Any],
    service: str | None,
    kind: int = 1,
    links: tuple[dict[str, Any], ...] | None = None,
) -> F:
    import inspect

    target = inspect.unwrap(fn)
    span_name = name or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
    code = getattr(target, "__code__", None)
    location = f"{code.co_filename}:{code.co_firstlineno}" if code is not None else None
    bound = dict(attrs) or None

    def new() -> Span:
        return Span(
            span_name, None if bound is None else dict(bound), location, service, kind, links
        )

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
    begin(sp, get_current())
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
                reset_current(token, parent_of(sp))
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
            end(sp, failure if not isinstance(failure, GeneratorExit) else None)


def _traced_gen(sp: Span, gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    begin(sp, get_current())
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
                reset_current(token, parent_of(sp))
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
            end(sp, failure if not isinstance(failure, GeneratorExit) else None)
