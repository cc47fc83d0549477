"""Picks the emit hot path that runs: the compiled one, or its pure-Python twin."""

import os
import typing

__all__ = (
    "IMPLEMENTATION",
    "Span",
    "critical",
    "debug",
    "error",
    "exception",
    "get_current",
    "info",
    "new_span_id",
    "new_trace_id",
    "reset_current",
    "set_current",
    "span",
    "warning",
)

# The same switch as the ring's: an empty value means unset, and "0" means off.
_FORCE_TWIN = os.environ.get("ATRACE_PUREPYTHON", "") not in ("", "0")

if typing.TYPE_CHECKING:
    from ._hot_py import (
        Span,
        critical,
        debug,
        error,
        exception,
        get_current,
        info,
        new_span_id,
        new_trace_id,
        reset_current,
        set_current,
        span,
        warning,
    )

    IMPLEMENTATION: typing.Literal["cython", "python"]
elif _FORCE_TWIN:
    from ._hot_py import *  # noqa: F403
    from ._hot_py import get_current, reset_current, set_current

    IMPLEMENTATION = "python"
else:
    try:
        from ._hot import *  # noqa: F403
        from ._hot import get_current, reset_current, set_current

        IMPLEMENTATION = "cython"
    except ImportError:
        from ._hot_py import *  # noqa: F403
        from ._hot_py import get_current, reset_current, set_current

        IMPLEMENTATION = "python"
