"""Structured log calls: ``info(msg, **attrs)`` and friends, linked to the current span."""

from __future__ import annotations

from .._pipeline.state import put
from .._records import LEVELS
from ..errors import ConfigError
from .hot import critical, debug, error, exception, info, warning
from .slow import build

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
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

warn = warning
fatal = critical


def level_number(level: str | int) -> int:
    """A level name or number as the logging number (``"info"`` → 20)."""
    if isinstance(level, int) and not isinstance(level, bool) and 0 <= level <= 100:
        return level
    if isinstance(level, str):
        number = LEVELS.get(level.lower())
        if number is not None:
            return number
    raise ConfigError("level", level, f"expected one of {', '.join(LEVELS)} or 0-100")


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
    number = LEVELS.get(level) if type(level) is str else None
    record = build(
        level_number(level) if number is None else number,
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
