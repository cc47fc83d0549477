"""The stdlib logging bridge: ``AtraceHandler`` turns ``logging`` records into atrace logs.

A bridged record keeps its level number, its logger's name as ``name``, ``record.getMessage()`` as
the message, the fields given through ``extra=`` as attributes, its exception (``exc_info``) as
error fields, its ``pathname:lineno`` as the location and ``record.created`` as the time; it is
linked to the span current where it was logged.

Safe against loops: records of atrace's own loggers (``atrace``, ``atrace.*``) and of the
flusher's thread are not bridged, and a record logged while this thread is already bridging one
(a message argument whose ``str()`` logs, say) is skipped rather than recursed into.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref

from .._emit.runtime import current, runtime
from .._emit.slow import catch, freeze

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

__all__ = ("STANDARD_ATTRIBUTES", "AtraceHandler", "attach", "detach")

# What every LogRecord has (plus what formatters add): anything else came from ``extra=``.
_BLANK = logging.LogRecord("", 0, "", 0, "", (), None)
STANDARD_ATTRIBUTES = frozenset(_BLANK.__dict__) | {"message", "asctime"}
_BLANK_SIZE = len(_BLANK.__dict__)
del _BLANK
# The flusher's daemon thread (atrace._pipeline): what it logs is about atrace's own work.
_FLUSHER_THREAD = "atrace-flusher"
_get_current = current.get


class _Local(threading.local):
    busy = False  # this thread is inside emit(): a record logged now would recurse
    last: Any = None  # weak reference to the record bridged last (several handlers, one record)


_local = _Local()


def _created_ns(created: float) -> int:
    # Whole seconds and the fraction apart: the fraction keeps nanosecond resolution, which
    # ``created * 1e9`` as one float (about 256 ns apart at today's dates) would not.
    seconds = int(created)
    return seconds * 1_000_000_000 + round((created - seconds) * 1e9)


def _caller_frame(record: logging.LogRecord) -> FrameType | None:
    # The frame that made the logging call: logging's own frames and ours lie above it.
    frame: FrameType | None = sys._getframe(1)
    path, line = record.pathname, record.lineno
    while frame is not None:
        if frame.f_lineno == line and frame.f_code.co_filename == path:
            return frame
        frame = frame.f_back
    return None


def _error(record: logging.LogRecord) -> Any:
    """What the record knows about an error, raw as atrace's emit path keeps it (or None)."""
    exc_info = record.exc_info
    if exc_info:
        value = exc_info[1] if isinstance(exc_info, tuple) else None
        if value is not None:
            return value
        # exc_info=True outside an except block: like atrace's own calls, the caller's stack.
        frame = _caller_frame(record)
        if frame is not None:
            import traceback

            return traceback.extract_stack(frame)
    if record.stack_info:
        return (None, None, None, record.stack_info)
    return None


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:
        # Arguments that do not fit the format: keep the record, say what went wrong.
        try:
            return f"{record.msg!s} % {record.args!r} (formatting failed: {exc!r})"
        except Exception:
            return f"<unformattable log message> (formatting failed: {exc!r})"


class AtraceHandler(logging.Handler):
    """A ``logging.Handler`` that turns records into atrace logs linked to the current span.

    Let :func:`atrace.instrument_logging` attach it, or add it to any logger yourself
    (``logging.getLogger("app").addHandler(AtraceHandler())``). instrument_logging keeps it out of
    the logger's ``handlers``, so that ``logging.basicConfig()`` still sets up the console; one
    added to the root by hand makes basicConfig do nothing. The handler takes no lock: buffering a
    record is thread-safe and never waits, so it cannot deadlock against the flusher or other
    handlers.
    """

    def __init__(self, level: int | str = logging.NOTSET) -> None:
        super().__init__(level)

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter and emit, without the handler lock that emit() does not need."""
        rv: Any = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # a filter may hand back a replacement
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        """Buffer ``record`` as an atrace log (the message is formatted once, here)."""
        name = record.name
        if name.startswith("atrace") and (len(name) == 6 or name[6] == "."):
            return
        if record.threadName == _FLUSHER_THREAD:
            return
        local = _local
        if local.busy:
            return
        last = local.last
        if last is not None and last() is record:
            return  # the same record reached a second AtraceHandler up the logger tree
        local.busy = True
        try:
            local.last = weakref.ref(record)
            d = record.__dict__
            attrs = None
            if len(d) > _BLANK_SIZE:
                attrs = {k: v for k, v in d.items() if k not in STANDARD_ATTRIBUTES} or None
            cur = _get_current()
            span_id = None if cur is None else cur.span_id
            err = None
            if record.exc_info or record.stack_info:
                err = _error(record)
                if isinstance(err, BaseException):  # taken as it is now, linked to its first
                    err, attrs = catch(err, span_id, False, attrs)
            if attrs:
                attrs = freeze(attrs)
            runtime.push(
                (
                    0,
                    _created_ns(record.created),
                    record.levelno,
                    None if cur is None else cur.trace_id,
                    span_id,
                    None,
                    None,
                    0,
                    None,
                    name,
                    _message(record),
                    attrs,
                    err,
                    (record.pathname, record.lineno),
                )
            )
        except Exception:
            self.handleError(record)
        finally:
            local.busy = False


# ---- attaching (atrace.instrument_logging) ----------------------------------------------------
#
# A handler attach() adds is not put in the logger's ``handlers``: while any is attached,
# ``Logger.callHandlers`` is wrapped to hand each record to the attached handlers of the loggers
# it propagates through, after their own handlers. The logger tree then looks as if atrace were
# not there: ``logging.basicConfig()`` (which does nothing once the root has a handler) still sets
# up the console in either order, ``dictConfig()`` does not remove the bridge, and a program with
# no handlers of its own still gets logging's last-resort output of warnings on stderr.


class _Attached:
    """A handler attach() put on a logger, and the logger level it replaced, if any."""

    __slots__ = ("added", "handler", "previous_level", "set_level")

    def __init__(self, handler: AtraceHandler, added: bool) -> None:
        self.handler = handler
        self.added = added  # attach() added the handler (one already there is left in place)
        self.previous_level: int | None = None  # the logger's level before attach lowered it
        self.set_level: int | None = None  # the level attach set (restored only if unchanged)


_attached: dict[logging.Logger, _Attached] = {}
_attach_lock = threading.Lock()
# The handlers attach() added, by logger: what the wrapped callHandlers hands records to.
_routes: dict[logging.Logger, AtraceHandler] = {}
# Logger.callHandlers as it was before the wrapper went in; kept after the wrapper comes out, for
# a thread still inside it.
_wrapped: Any = None
_wrapping = False  # the wrapper is in (and stays in while someone else's wraps it)


def _call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
    """Logger.callHandlers, then the attached handlers on the record's way up the tree."""
    _wrapped(self, record)
    routes = _routes
    logger: logging.Logger | None = self
    while logger is not None:
        handler = routes.get(logger)
        if handler is not None and record.levelno >= handler.level:
            handler.handle(record)
        logger = logger.parent if logger.propagate else None


def _wrap_call_handlers() -> None:
    global _wrapped, _wrapping
    if not _wrapping:
        _wrapped = logging.Logger.callHandlers
        logging.Logger.callHandlers = _call_handlers  # type: ignore[method-assign]
        _wrapping = True


def _unwrap_call_handlers() -> None:
    global _wrapping
    # Put back only if nobody wrapped it again since; else ours stays, handing records to nobody.
    if _wrapping and logging.Logger.__dict__.get("callHandlers") is _call_handlers:
        logging.Logger.callHandlers = _wrapped  # type: ignore[method-assign]
        _wrapping = False


def _logger(logger: logging.Logger | str | None) -> logging.Logger:
    if logger is None or isinstance(logger, str):
        return logging.getLogger(logger)
    if not isinstance(logger, logging.Logger):
        from ..errors import ConfigError

        raise ConfigError("logger", logger, "expected a logging.Logger, a logger name or None")
    return logger


def _level(level: int | str) -> int:
    from ..errors import ConfigError

    if isinstance(level, bool):
        raise ConfigError("level", level, "expected a logging level number or name")
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ConfigError("level", level, "expected a logging level number or name")
        return number
    if not isinstance(level, int) or level < 0:
        raise ConfigError("level", level, "expected a logging level number or name")
    return level


def attach(
    level: int | str = logging.INFO, logger: logging.Logger | str | None = None
) -> AtraceHandler:
    """Attach one AtraceHandler to ``logger`` (root by default) and return it; see instrument."""
    number = _level(level)
    target = _logger(logger)
    with _attach_lock:
        entry = _attached.get(target)
        if entry is None:
            existing = next((h for h in target.handlers if isinstance(h, AtraceHandler)), None)
            entry = _Attached(existing or AtraceHandler(), added=existing is None)
            _attached[target] = entry
            if entry.added:
                _routes[target] = entry.handler
                _wrap_call_handlers()
        entry.handler.setLevel(number)
        if target.getEffectiveLevel() > number:
            if entry.previous_level is None:
                entry.previous_level = target.level
            target.setLevel(number)
            entry.set_level = number
        return entry.handler


def detach(logger: logging.Logger | str | None = None) -> None:
    """Remove what attach() put on ``logger`` (on every logger when None)."""
    with _attach_lock:
        targets = list(_attached) if logger is None else [_logger(logger)]
        for target in targets:
            entry = _attached.pop(target, None)
            if entry is None:
                continue
            if entry.added:
                del _routes[target]
            if entry.previous_level is not None and target.level == entry.set_level:
                target.setLevel(entry.previous_level)
        if not _routes:
            _unwrap_call_handlers()
