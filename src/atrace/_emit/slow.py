"""Log records with every option (errors, module, extra, fallback parent): the emit slow path.

Shared by the compiled emit module and its twin; the common case never comes here.
"""

from __future__ import annotations

import sys
import time

from .runtime import current

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ("build", "error_of")

_time_ns = time.time_ns
_getframe = sys._getframe
get_current = current.get


def error_of(
    exc_info: Any,
    exception: BaseException | None,
    error_message: str | None,
    stack_trace: str | None,
    depth: int,
) -> Any:
    """What a log call knows about an error, kept raw; the flusher's encoder formats it later."""
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
