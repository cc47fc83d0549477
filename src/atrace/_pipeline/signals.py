"""The flush before SIGTERM's default action ends the process.

SIGTERM's default action kills the process on the spot: no ``finally`` block, no :mod:`atexit`
handler, so whatever atrace still buffers is lost. A program that leaves SIGTERM to its default
(a plain ``asyncio.run()`` service, a worker) dies that way, and so does a server that catches
the signal, shuts down gracefully, then restores the handler it found and raises the signal again
so that its exit status is the signal's (uvicorn's ``Server.capture_signals`` does exactly that).

:func:`install` replaces SIGTERM's default action by :func:`_on_sigterm`, which writes what
atrace holds (as the exit handler would), puts the default action back and raises the signal
again, so the process still ends by SIGTERM, with the signal's exit status. Nothing else changes:
a handler installed later (a server's) runs instead of ours; if it later restores "the handler it
found", that is ours, and ours runs when it raises the signal again. A second SIGTERM while the
flush runs waits for it; the flush is bounded by ``shutdown_timeout``.

When atrace installs it, lazily and at most once per handler change: whenever a pipeline is
built (``configure()``, or the first record of an unconfigured program), in the main thread only
(Python runs signal handlers there alone), only while SIGTERM's action is the default
``SIG_DFL``, and never when ``ATRACE_SIGNALS`` is ``0``. A process that ignores SIGTERM
(``SIG_IGN``) keeps ignoring it; a handler someone else installed stays, since its owner decides
how the process ends (an exit through ``sys.exit`` runs the exit handler anyway). A capture of
:mod:`atrace.testing` builds no such pipeline, so it never installs anything. SIGINT is left
alone: its default handler raises ``KeyboardInterrupt``, ``asyncio.run`` then cancels its tasks,
the flusher's final flush runs on the loop, and :mod:`atexit` runs after that.

The handler runs in the main thread between two bytecodes, possibly while that thread holds a
lock the flush needs, and possibly in the middle of the event loop the flusher is a task on:
that loop cannot run while the handler does, and nothing can be awaited on it. So the flush runs
in a thread of its own on a loop of its own, and the main thread waits for it no longer than
``shutdown_timeout``: a lock that stays held costs that wait, never a hang. A pipeline whose
flusher is a task on the stopped loop is not touched (its writes in flight and its connections
belong to that loop); a new pipeline with the same configuration takes the records out of its
ring and writes them, with the spans still open.
"""

from __future__ import annotations

import _thread
import logging
import signal
import sys
import threading
import time

from .. import config as _config
from .._emit.runtime import runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading as _threading
    from types import FrameType
    from typing import Any, Protocol

    from .pipeline import Pipeline

    class Holder(Protocol):
        """Where the pipelines of this process are (the state department of state.py)."""

        lock: _threading.RLock
        pipeline: Pipeline | None
        stopping: dict[Pipeline, Any]  # the pipelines still stopping, each with its future


__all__ = ("install", "installed")

_log = logging.getLogger("atrace")
# Past shutdown_timeout, the moment closing the sinks may take before the process ends anyway.
_GRACE = 0.5
_flushing = False  # a SIGTERM that arrives during the flush waits for the first one's end
_holder: Holder | None = None  # where the pipelines to write are


def installed() -> bool:
    """Whether atrace's handler is SIGTERM's handler now."""
    return signal.getsignal(signal.SIGTERM) is _on_sigterm


def install(holder: Holder) -> bool:
    """Handle SIGTERM with atrace's flush if its action is the default; True if it is ours now.

    ``holder`` holds the pipelines the flush writes: the one in force and those still stopping.
    Idempotent; a no-op outside the main thread, with ``ATRACE_SIGNALS=0``, or when SIGTERM is
    ignored or handled by someone else. Raises ConfigError for an invalid ``ATRACE_SIGNALS``.
    """
    global _holder
    _holder = holder
    if not _config.signals():
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return True
    if current is not signal.SIG_DFL:
        return False
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter's main thread after all
        return False
    return True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Write what atrace holds, then let SIGTERM's default action end the process."""
    global _flushing
    if _flushing:
        return  # the first SIGTERM's handler is still writing; it raises the signal after
    _flushing = True
    try:
        _flush_before_exit()
        # The default action skips the exit handlers, and with them the hand-over of the
        # embedded server: release it here, once the last write is done.
        embedded = sys.modules.get("atrace._postgres.embedded")
        if embedded is not None:
            embedded.release_all()
    except BaseException:  # never keep the process from ending
        pass
    finally:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
        _flushing = False  # reached only if the signal is blocked in this thread


def _flush_before_exit() -> None:
    holder = _holder
    if holder is None:
        return
    with holder.lock:  # reentrant: fine if this thread held it when the signal came
        # One that was replaced and then put back (by a capture) is in both places.
        found = dict.fromkeys([*holder.stopping, holder.pipeline])
    pipelines = [p for p in found if p is not None]
    if not pipelines:
        return
    # Decided here, in the thread whose loop the signal stopped: a flusher task on that loop
    # will not run again, so its pipeline is written by a stand-in.
    work = [(p, p.on_flusher_loop()) for p in pipelines]
    timeout = max(p.config.shutdown_timeout for p in pipelines)
    deadline = time.monotonic() + timeout
    done = _thread.allocate_lock()
    done.acquire()

    def flush() -> None:
        try:
            for pipeline, stranded in work:
                left = max(0.0, deadline - time.monotonic())
                if stranded:
                    _write_stranded(pipeline, left)
                else:
                    pipeline.flush_at_exit(left)
        except Exception:
            _log.exception("atrace: the flush on SIGTERM failed")
        finally:
            done.release()

    # A bare thread: starting a threading.Thread takes locks this thread may hold right now.
    _thread.start_new_thread(flush, ())
    if not done.acquire(timeout=timeout + _GRACE):
        _log.warning("atrace: the flush on SIGTERM did not finish within %.1fs", timeout)


def _write_stranded(pipeline: Pipeline, timeout: float) -> None:
    """Write the records of a pipeline whose flusher is a task on a loop that stopped for good,
    through a new pipeline with the same configuration: its writes in flight, its connections
    and its futures all belong to that loop."""
    from .pipeline import Pipeline

    ring = pipeline.ring
    if not len(ring) and not runtime.open_spans:
        return
    stand_in = Pipeline(pipeline.config)
    stand_in.take_over(pipeline)
    stand_in.flush_at_exit(timeout)
