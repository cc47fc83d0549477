"""Tracer: a handle with a service name, bound attributes and an optional remote parent."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from .._pipeline.state import put
from ..errors import ConfigError
from .context import SpanContext, coerce_span_id
from .hot import set_parent
from .log import level_number
from .runtime import runtime
from .slow import build, span_kind, span_links
from .span import Span, decorate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ("Tracer",)

_getframe = sys._getframe


class Tracer:
    """Emit spans and logs for a service, with attributes bound to every record.

    ``Tracer(service="billing", parent_id="00f067aa0ba902b7", region="eu")``; ``bind`` returns a new
    tracer with more attributes (the original is unchanged, as in structlog). ``parent_id`` (and
    ``trace_id``) name a span started elsewhere: spans with no current parent attach to it.
    """

    __slots__ = ("_bound", "_parent", "service")

    def __init__(
        self,
        service: str | None = None,
        parent_id: str | int | None = None,
        *,
        trace_id: str | None = None,
        **bound: Any,
    ) -> None:
        if service is not None and (not isinstance(service, str) or not service.strip()):
            raise ConfigError("service", service, "expected a non-empty string")
        self.service = service
        self._bound = bound
        self._parent: SpanContext | None = None
        if parent_id is not None or trace_id is not None:
            from .ids import new_trace_id, parse_trace_id

            tid = new_trace_id() if trace_id is None else parse_trace_id(trace_id)
            if tid is None:
                raise ConfigError("trace_id", trace_id, "expected 32 hex digits, not all zero")
            # An id atrace made has random right-most 7 bytes: the W3C "random" flag (2) too.
            flags = 3 if trace_id is None else 1
            self._parent = SpanContext(tid, coerce_span_id(parent_id), flags=flags)

    def __repr__(self) -> str:
        return f"Tracer(service={self.service!r}, bound={self._bound!r})"

    @property
    def bound(self) -> Mapping[str, Any]:
        """The attributes added to every record of this tracer."""
        return dict(self._bound)

    def bind(self, **kv: Any) -> Tracer:
        """A new tracer with these attributes bound as well."""
        new = Tracer.__new__(Tracer)
        new.service = self.service
        new._parent = self._parent
        new._bound = {**self._bound, **kv}
        return new

    def unbind(self, *keys: str) -> Tracer:
        """A new tracer without these bound attributes."""
        new = self.bind()
        for key in keys:
            new._bound.pop(key, None)
        return new

    def span(self, name: str, /, *, kind: Any = None, links: Any = None, **attrs: Any) -> Span:
        """A span of this tracer's service with the bound attributes (``kind`` and ``links``
        as for :func:`atrace.span`)."""
        frame = _getframe(1)
        sp = Span(
            name,
            {**self._bound, **attrs} or None,
            (frame.f_code.co_filename, frame.f_lineno),
            self.service,
            1 if kind is None else span_kind(kind),
            span_links(links) or None,
        )
        set_parent(sp, self._parent)
        return sp

    def traced(
        self, arg: Any = None, /, *, kind: Any = None, links: Any = None, **attrs: Any
    ) -> Any:
        """Like :func:`atrace.traced`, for this tracer's service and bound attributes."""
        merged = {**self._bound, **attrs}
        number = 1 if kind is None else span_kind(kind)
        linked = span_links(links) or None
        if callable(arg):
            return decorate(arg, None, merged, self.service, number, linked)
        return lambda fn: decorate(fn, arg, merged, self.service, number, linked)

    def _record(
        self, level: int, msg: Any, attrs: dict[str, Any], kw: dict[str, Any]
    ) -> tuple[Any, ...]:
        return build(
            level,
            msg,
            {**self._bound, **attrs} if self._bound else attrs,
            kw.get("exc_info", False),
            kw.get("exception"),
            kw.get("error_message"),
            kw.get("stack_trace"),
            kw.get("module"),
            kw.get("extra"),
            2,
            self.service,
            self._parent,
        )

    def log(
        self,
        message: Any,
        attr: Mapping[str, Any] | str | None = None,
        level: str | int = "info",
        **kw: Any,
    ) -> None:
        """Emit a log whose attributes are a dict or a JSON object string (the classic call)."""
        attrs = _attrs_from(attr)
        runtime.push(self._record(level_number(level), message, attrs, _options(kw, attrs)))

    def debug(self, msg: Any, /, **kw: Any) -> None:
        """Emit a debug log."""
        runtime.push(self._record(10, msg, *_split(kw)))

    def info(self, msg: Any, /, **kw: Any) -> None:
        """Emit an info log."""
        runtime.push(self._record(20, msg, *_split(kw)))

    def warning(self, msg: Any, /, **kw: Any) -> None:
        """Emit a warning log."""
        runtime.push(self._record(30, msg, *_split(kw)))

    warn = warning

    def error(self, msg: Any, /, **kw: Any) -> None:
        """Emit an error log."""
        runtime.push(self._record(40, msg, *_split(kw)))

    def exception(self, msg: Any, /, **kw: Any) -> None:
        """Emit an error log with the exception being handled."""
        kw.setdefault("exc_info", True)
        runtime.push(self._record(40, msg, *_split(kw)))

    def critical(self, msg: Any, /, **kw: Any) -> None:
        """Emit a critical log."""
        runtime.push(self._record(50, msg, *_split(kw)))

    fatal = critical

    async def amit(self, msg: Any, /, level: str | int = "info", **kw: Any) -> bool:
        """Awaitable emit: under the ``block`` policy it waits for room instead of dropping."""
        return await put(self._record(level_number(level), msg, *_split(kw)))


_OPTIONS = frozenset(("exc_info", "exception", "error_message", "stack_trace", "module", "extra"))


def _split(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    if _OPTIONS.isdisjoint(kw):
        return kw, {}
    options = {k: kw.pop(k) for k in _OPTIONS if k in kw}
    return kw, options


def _options(kw: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
    rest, options = _split(kw)
    attrs.update(rest)
    return options


def _attrs_from(attr: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if attr is None:
        return {}
    if isinstance(attr, Mapping):
        return dict(attr)
    if isinstance(attr, (str, bytes)):
        import orjson

        try:
            value = orjson.loads(attr)
        except orjson.JSONDecodeError:
            return {"attr": attr}  # not JSON: kept verbatim rather than lost
        return value if isinstance(value, dict) else {"attr": value}
    raise ConfigError("attr", attr, "expected a dict or a JSON object string")
