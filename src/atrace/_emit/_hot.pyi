"""Type stub of the compiled emit module; its API is the twin's in atrace._emit._hot_py."""

from collections.abc import Mapping
from types import TracebackType
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

def new_trace_id() -> str: ...
def new_span_id() -> int: ...
def reseed() -> None: ...
def get_current() -> Any: ...
def set_current(value: Any) -> Any: ...
def reset_current(token: Any, parent: Any) -> None: ...

class SpanContext:
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
    ) -> None: ...
    @property
    def sampled(self) -> bool: ...
    def as_dict(self) -> dict[str, Any]: ...
    def replace(self, **changes: Any) -> Any: ...

class Span:
    name: str
    attrs: dict[str, Any] | None
    location: str | tuple[str, int] | None
    service: str | None
    error: Any
    parent_id: int | None
    status: int
    status_message: str | None
    kind: int
    links: tuple[dict[str, Any], ...] | None
    level: int
    announced: bool
    start_ns: int
    end_ns: int
    _parent: Any
    _token: Any
    def __init__(
        self,
        name: str,
        attrs: dict[str, Any] | None = None,
        location: str | tuple[str, int] | None = None,
        service: str | None = None,
        kind: int = 1,
        links: tuple[dict[str, Any], ...] | None = None,
    ) -> None: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def span_id(self) -> int | None: ...
    @property
    def duration_ns(self) -> int | None: ...
    @property
    def flags(self) -> int: ...
    @property
    def trace_state(self) -> str: ...
    @property
    def span_id_hex(self) -> str | None: ...
    def _begin(self, parent: Any) -> None: ...
    def _end(self, exc: BaseException | None) -> None: ...
    def _record(self) -> tuple[Any, ...]: ...
    def _start_record(self) -> tuple[Any, ...]: ...
    def __enter__(self) -> Span: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    async def __aenter__(self) -> Span: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def set(self, **attrs: Any) -> Span: ...
    def set_attributes(self, **attrs: Any) -> Span: ...
    def set_status(self, status: str | int, message: str | None = None) -> Span: ...
    def record_exception(self, exc: BaseException, *, failed: bool = True) -> Span: ...
    def __call__(self, fn: Any) -> NoReturn: ...

def begin(span: Span, parent: Any, keep_parent: bool = True) -> None: ...
def end(span: Span, exc: BaseException | None) -> None: ...
def start_record(span: Span) -> tuple[Any, ...]: ...
def parent_of(span: Span) -> Any: ...
def set_parent(span: Span, parent: Any) -> None: ...
def span(name: str, /, **attrs: Any) -> Span: ...
def _level(
    msg: Any,
    /,
    *args: Any,
    exc_info: Any = False,
    exception: BaseException | None = None,
    error_message: str | None = None,
    stack_trace: str | None = None,
    module: str | None = None,
    extra: Mapping[str, Any] | None = None,
    **attrs: Any,
) -> None: ...
def exception(
    msg: Any,
    /,
    *args: Any,
    exc_info: Any = True,
    exception: BaseException | None = None,
    error_message: str | None = None,
    stack_trace: str | None = None,
    module: str | None = None,
    extra: Mapping[str, Any] | None = None,
    **attrs: Any,
) -> None: ...

debug = _level
info = _level
warning = _level
error = _level
critical = _level
