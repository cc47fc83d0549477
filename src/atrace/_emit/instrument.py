"""Opt-in instrumentation: the current span follows threads and executors; stdlib logging bridged.

``instrument_threads()`` patches methods of ``threading.Thread`` and
``concurrent.futures.ThreadPoolExecutor`` (never the classes themselves, so ``isinstance`` and
subclasses keep working) so that work started inside a span runs in that span's context:

- a thread runs under the context current when ``start()`` was called, also when a subclass
  overrides ``run()``;
- ``ThreadPoolExecutor.submit`` runs the callable under the submitter's context, which covers
  ``loop.run_in_executor`` and ``asyncio.to_thread`` (whose own copy simply nests, the callable
  runs once).

``uninstrument_threads()`` puts the original functions back. Without instrumentation the explicit
helpers (``atrace.wrap``, ``atrace.run_in_executor``, ``atrace.Thread``) do the same per call.

``instrument_logging()`` attaches :class:`atrace.integrations.logging.AtraceHandler` to the root
(or a given) logger; ``uninstrument_logging()`` removes it. This module stays light to import:
``logging`` and ``concurrent.futures`` load only when instrumenting.
"""

from __future__ import annotations

import contextvars
import functools
import sys
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from logging import Logger
    from typing import Any

    from ..integrations.logging import AtraceHandler

__all__ = (
    "instrument_logging",
    "instrument_threads",
    "threads_instrumented",
    "uninstrument_logging",
    "uninstrument_threads",
)

# Threads atrace starts for itself (the flusher) must not run under an application's span: what
# they do would be recorded as part of it.
_OWN_THREAD_PREFIX = "atrace-"
# Where start() leaves the context for the new thread to pick up (before Python 3.14).
_START_CONTEXT = "_atrace_start_context"

_lock = threading.Lock()


class _Patch:
    """One instrumentation: the originals it replaced and the wrappers it installed."""

    __slots__ = ("active", "entries")

    def __init__(self) -> None:
        # Turned off by uninstrument: a wrapper another library wrapped in turn cannot be taken
        # out of its chain, so it stays and passes straight through.
        self.active = True
        self.entries: list[tuple[type, str, Any, Any]] = []  # (class, name, original, wrapper)

    def install(self, cls: type, name: str, make: Callable[[Any], Any]) -> None:
        original = cls.__dict__[name]
        wrapper = make(original)
        self.entries.append((cls, name, original, wrapper))
        setattr(cls, name, wrapper)

    def remove(self) -> None:
        self.active = False
        for cls, name, original, wrapper in reversed(self.entries):
            if cls.__dict__.get(name) is wrapper:
                setattr(cls, name, original)
        self.entries.clear()


_patch: _Patch | None = None


def _patch_thread(patch: _Patch) -> None:
    thread_cls = threading.Thread
    # Python 3.14 gave Thread a ``context`` argument: start() fills ``self._context`` when it is
    # None, and the thread runs run() inside it. Filling it first is all it takes there.
    native = sys.version_info >= (3, 14)

    def make_start(original: Callable[[threading.Thread], None]) -> Callable[..., None]:
        @functools.wraps(original)
        def start(self: threading.Thread) -> None:
            if patch.active and not self.name.startswith(_OWN_THREAD_PREFIX):
                if native:
                    if getattr(self, "_context", None) is None:
                        setattr(self, "_context", contextvars.copy_context())  # noqa: B010
                else:
                    setattr(self, _START_CONTEXT, contextvars.copy_context())
            original(self)

        return start

    def make_bootstrap(original: Callable[[threading.Thread], None]) -> Callable[..., None]:
        @functools.wraps(original)
        def _bootstrap_inner(self: threading.Thread) -> None:
            ctx: contextvars.Context | None = self.__dict__.pop(_START_CONTEXT, None)
            if ctx is None:
                original(self)
            else:
                # Runs run() (whoever defines it) and the thread's own bookkeeping inside it.
                ctx.run(original, self)

        return _bootstrap_inner

    patch.install(thread_cls, "start", make_start)
    if not native:
        patch.install(thread_cls, "_bootstrap_inner", make_bootstrap)


def _patch_executor(patch: _Patch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def make_submit(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            if not patch.active:
                return original(self, fn, *args, **kwargs)
            ctx = contextvars.copy_context()
            # submit() may start a worker thread; run it in an empty context so a long-lived
            # worker does not keep the submitter's span as its own (each job brings its own).
            return contextvars.Context().run(original, self, ctx.run, fn, *args, **kwargs)

        return submit

    patch.install(ThreadPoolExecutor, "submit", make_submit)


def instrument_threads() -> None:
    """Make threads and thread-pool jobs run under the span current where they were started.

    Idempotent and thread-safe; :func:`uninstrument_threads` undoes it exactly.
    """
    global _patch
    with _lock:
        if _patch is not None:
            return
        patch = _Patch()
        try:
            _patch_thread(patch)
            _patch_executor(patch)
        except BaseException:
            patch.remove()
            raise
        _patch = patch


def uninstrument_threads() -> None:
    """Put the original ``Thread`` and ``ThreadPoolExecutor`` methods back (no-op if unpatched)."""
    global _patch
    with _lock:
        patch, _patch = _patch, None
        if patch is not None:
            patch.remove()


def threads_instrumented() -> bool:
    """Whether :func:`instrument_threads` is in force."""
    return _patch is not None


def instrument_logging(level: int | str = 20, logger: Logger | str | None = None) -> AtraceHandler:
    """Send stdlib ``logging`` records at ``level`` and above to atrace, linked to the current span.

    Attaches one :class:`~atrace.integrations.logging.AtraceHandler` to the root logger (or the
    given logger or logger name) and returns it; calling again returns the same handler with the
    new level. If the logger's own level would filter out records at ``level`` (the root logger
    is at WARNING by default), it is lowered to ``level``, and restored by
    :func:`uninstrument_logging`; other handlers on that logger then see those records too.
    """
    from ..integrations.logging import attach

    return attach(level, logger)


def uninstrument_logging(logger: Logger | str | None = None) -> None:
    """Remove the handlers :func:`instrument_logging` attached (only the given logger's, if named).

    A logger level that instrumenting lowered is put back, unless it was changed since.
    """
    from ..integrations.logging import detach

    detach(logger)
