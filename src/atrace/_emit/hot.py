"""The emit hot path that runs: the compiled ``_hot``, or its pure-Python twin ``_hot_py``."""

from .. import _speedups

TYPE_CHECKING = False

__all__ = (
    "IMPLEMENTATION",
    "Span",
    "SpanContext",
    "begin",
    "critical",
    "debug",
    "end",
    "error",
    "exception",
    "get_current",
    "info",
    "new_span_id",
    "new_trace_id",
    "parent_of",
    "reset_current",
    "set_current",
    "set_parent",
    "span",
    "start_record",
    "warning",
)

if TYPE_CHECKING:
    # The stub and the twin declare one API; the checker reads the twin's.
    from typing import Literal

    from ._hot_py import (
        Span,
        SpanContext,
        begin,
        critical,
        debug,
        end,
        error,
        exception,
        get_current,
        info,
        new_span_id,
        new_trace_id,
        parent_of,
        reset_current,
        set_current,
        set_parent,
        span,
        start_record,
        warning,
    )

    IMPLEMENTATION: Literal["cython", "python"]
else:
    _module, IMPLEMENTATION = _speedups.load("atrace._emit._hot", "atrace._emit._hot_py")
    # The names the checker reads from the twin above, taken from the module that runs.
    for _name in __all__:
        if _name != "IMPLEMENTATION":
            globals()[_name] = getattr(_module, _name)
    del _name
