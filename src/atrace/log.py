"""Structured log calls: ``info(msg, **attrs)`` and friends, linked to the current span."""

from __future__ import annotations

import sys
import time

from ._runtime import runtime
from .context import get_current
from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

__all__ = (
    "LEVELS",
    "amit",
    "critical",
    "debug",
    "error",
    "exception",
    "fatal",
    "info",
    "level_number",
    "warn",
    "warning",
)

LEVELS = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "warn": 30,
    "error": 40,
    "exception": 40,
    "critical": 50,
    "fatal": 50,
}

_time_ns = time.time_ns
_getframe = sys._getframe


def level_number(level: str | int) -> int:
    """A level name or number as the logging number (``"info"`` → 20)."""
    if isinstance(level, int) and not isinstance(level, bool) and 0 <= level <= 100:
        return level
    if isinstance(level, str):
        number = LEVELS.get(level.lower())
        if number is not None:
            return number
    raise ConfigError("level", level, f"expected one of {', '.join(LEVELS)} or 0-100")


def error_of(
    exc_info: Any,
    exception: BaseException | None,
    error_message: str | None,
    stack_trace: str | None,
    depth: int,
) -> Any:
    """What a log call knows about an error, kept raw; :mod:`atrace.encode` formats it later."""
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
    err = None
    if exc_info or exception is not None or error_message is not None or stack_trace is not None:
        err = error_of(exc_info, exception, error_message, stack_trace, depth + 1)
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


def _level_function(level: int, name: str, default_exc_info: bool = False) -> Callable[..., None]:
    def log(
        msg: Any,
        /,
        *,
        exc_info: Any = default_exc_info,
        exception: BaseException | None = None,
        error_message: str | None = None,
        stack_trace: str | None = None,
        module: str | None = None,
        extra: Mapping[str, Any] | None = None,
        **attrs: Any,
    ) -> None:
        if (
            exc_info is False
            and exception is None
            and error_message is None
            and stack_trace is None
            and module is None
            and extra is None
        ):
            frame = _getframe(1)
            cur = get_current()
            if cur is None:
                runtime.push(
                    (
                        0,
                        _time_ns(),
                        level,
                        None,
                        None,
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
            else:
                runtime.push(
                    (
                        0,
                        _time_ns(),
                        level,
                        cur.trace_id,
                        cur.span_id,
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
        "``exc_info=True`` records the exception being handled (outside an except block: the "
        "caller's stack); ``exception=e`` a given one; ``error_message=``/``stack_trace=`` "
        "explicit text; ``module=`` names the logger; ``extra=`` is merged into the attributes."
    )
    return log


debug = _level_function(10, "debug")
info = _level_function(20, "info")
warning = _level_function(30, "warning")
warn = warning
error = _level_function(40, "error")
exception = _level_function(40, "exception", default_exc_info=True)
critical = _level_function(50, "critical")
fatal = critical


async def amit(
    msg: Any,
    /,
    level: str | int = "info",
    *,
    exc_info: Any = False,
    exception: BaseException | None = None,
    error_message: str | None = None,
    stack_trace: str | None = None,
    module: str | None = None,
    extra: Mapping[str, Any] | None = None,
    **attrs: Any,
) -> bool:
    """Emit a log and, under the ``block`` policy, wait for room in the buffer instead of dropping.

    Returns True when the record was buffered (False only when it was dropped by policy).
    """
    record = build(
        level_number(level),
        msg,
        attrs,
        exc_info,
        exception,
        error_message,
        stack_trace,
        module,
        extra,
        1,
    )
    return await put(record)


async def put(record: tuple[Any, ...]) -> bool:
    """Buffer one record, waiting for room when the policy is ``block``."""
    from . import pipeline

    return await pipeline.put_waiting(record)
