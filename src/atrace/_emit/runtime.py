"""The process-wide emit state: where records go, which spans are open, the current span."""

from __future__ import annotations

import contextvars

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ("Runtime", "current", "runtime")


class Runtime:
    """Shared by every emit call; swapped wholesale on configure, shutdown and fork.

    ``push`` is the ring's own push once a flusher runs; before that it is a function that starts
    the pipeline on first use. Emit code reads ``runtime.push`` at each call, so replacing it here
    redirects every caller at once without a check on the hot path.
    """

    __slots__ = ("block", "open_spans", "push")

    def __init__(self) -> None:
        # A record is a tuple (logs) or an ended Span (its own record).
        self.push: Callable[[Any], bool] = _discard
        # The policy is "block": awaitable emits wait for room instead of dropping.
        self.block = False
        # Spans entered and not yet exited; the flusher writes a start row for long-running ones.
        self.open_spans: set[Any] = set()


def _discard(record: Any) -> bool:
    return False


runtime = Runtime()


# The current span (or remote parent) of this context. Defined here, with no imports, so that the
# compiled emit module, its twin and atrace._emit.context all share the one variable.
current: contextvars.ContextVar[Any] = contextvars.ContextVar("atrace_current_span", default=None)
