"""The global state department: the pipeline in force, configure/flush/shutdown, exit and fork.

Everything process-wide that atrace holds lives in one object here; the rest of atrace (and
:mod:`atrace.testing`) changes it only through :func:`swap`, reads it through :func:`current`,
and picks the clock of new pipelines through :func:`use_clock`.

This module stays light to import: the flusher machinery (asyncio, sinks, encoders) loads on the
first record or the first call that needs it.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

from .._emit.runtime import runtime
from ..config import Config, from_environment
from ..errors import ConfigError
from .metrics import Metrics

TYPE_CHECKING = False
if TYPE_CHECKING:
    import concurrent.futures
    from typing import Any

    from .pipeline import Clock, Pipeline

__all__ = (
    "aflush",
    "ashutdown",
    "configure",
    "current",
    "flush",
    "get_config",
    "get_pipeline",
    "initialize",
    "metrics",
    "put",
    "reset",
    "shutdown",
    "swap",
    "use_clock",
)


# ---- the global state department --------------------------------------------------------------


class _Department:
    """The process-wide state: the pipeline in force, the replaced ones still writing what they
    held, and the clock new pipelines run on."""

    __slots__ = ("clock", "lock", "past", "pipeline", "stopping")

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None  # None: unconfigured until the first record
        # Replaced, and still writing what they held, with the future of that: flush() and the
        # exit handler wait for them too.
        self.stopping: dict[Pipeline, concurrent.futures.Future[bool]] = {}
        # Every pipeline replaced since the last reset(): what they accepted stays counted.
        self.past: list[Pipeline] = []
        self.clock: Clock | None = None  # None: the system clock
        # Guards replacing the pipeline; reentrant: get_pipeline() swaps while holding it.
        self.lock = threading.RLock()


_STATE = _Department()
# Compared with ``replacing=`` to tell "no condition" from "only if unconfigured".
_ANY: Any = object()


def current() -> Pipeline | None:
    """The pipeline in force, or None while atrace is unconfigured."""
    return _STATE.pipeline


def swap(
    pipeline: Pipeline | None, *, replacing: Pipeline | None = _ANY, carry: bool = False
) -> Pipeline | None:
    """Put ``pipeline`` in force (None: unconfigured) and return the one it replaces.

    The replaced pipeline is told to stop: it writes what it holds, and starts again if it is put
    back later. With ``carry``, what a pipeline made implicitly (by a record emitted before any
    configure()) holds in its buffer moves to the new one instead. With ``replacing`` the swap
    happens only if that pipeline is the one in force; the return value says which one was.
    """
    with _STATE.lock:
        old = _STATE.pipeline
        if replacing is not _ANY and old is not replacing:
            return old
        _STATE.pipeline = pipeline
        if pipeline is None:
            runtime.push = _autoconfigure_push
            runtime.block = False
        else:
            runtime.push = pipeline.idle_push
            runtime.block = pipeline.config.policy == "block"
        if old is not None and old is not pipeline:
            if carry and old.implicit and pipeline is not None:
                pipeline.take_over(old)
            if not old.receives and old not in _STATE.past:
                _STATE.past.append(old)
    if old is not None and old is not pipeline:
        done = old.stop_nowait()
        if not done.done():
            with _STATE.lock:
                _STATE.stopping[old] = done
            done.add_done_callback(lambda _: _stopped(old))
        else:
            _stopped(old)
    return old


def _stopped(pipeline: Pipeline) -> None:
    with _STATE.lock:
        _STATE.stopping.pop(pipeline, None)
        successor = _STATE.pipeline
    if successor is not None and successor is not pipeline:
        # What it spilled and could not replay, the pipeline in force now replays (when it
        # spills to the same place) and counts as its own.
        for old_lane in pipeline.lanes:
            for lane in successor.lanes:
                if lane.spill_location == old_lane.spill_location and old_lane.spilled_pending:
                    lane.adopt(old_lane.hand_over())


def _in_this_process() -> list[Pipeline]:
    # The pipeline in force and every one replaced since the last reset(), each once (one
    # still stopping is among them, unless a reset() came since).
    with _STATE.lock:
        found = dict.fromkeys([*_STATE.past, _STATE.pipeline])
    return [p for p in found if p is not None and not p.receives]


def use_clock(clock: Clock | None) -> Clock | None:
    """Make pipelines built from now on run on ``clock`` (None: the system clock); returns the
    clock used until now."""
    with _STATE.lock:
        old, _STATE.clock = _STATE.clock, clock
    return old


def _autoconfigure_push(record: tuple[Any, ...]) -> bool:
    # The first record of a program that never called configure(): configure from the
    # environment (or the embedded default), then carry on as if it had.
    return get_pipeline().push_starting(record)


runtime.push = _autoconfigure_push


def _new_pipeline(config: Config, hold: str | None = None) -> Pipeline:
    from . import signals
    from .pipeline import Pipeline

    signals.install(_STATE)  # SIGTERM's default action flushes first (see signals.py)
    return Pipeline(config, clock=_STATE.clock, hold=hold)


def get_pipeline() -> Pipeline:
    """The current pipeline, configured from the environment if configure() was never called."""
    pipeline = _STATE.pipeline
    if pipeline is not None:
        return pipeline
    with _STATE.lock:
        pipeline = _STATE.pipeline
        if pipeline is None:
            config = Config(**from_environment())
            try:
                pipeline = _new_pipeline(config)
            except ConfigError as exc:
                # A library emitting into a program that never configured atrace, where the
                # default sink cannot be made: the program must not fail for it. The records
                # wait for a configure(), and the exit says how many were never written.
                pipeline = _new_pipeline(config, hold=str(exc))
                import logging

                logging.getLogger("atrace").warning(
                    "atrace: not configured, and %s; records are kept in memory until"
                    " atrace.configure() is called",
                    exc,
                )
            pipeline.implicit = True
            swap(pipeline)
        return pipeline


def configure(
    *,
    service: str | None = None,
    environment: str | None = None,
    sink: Any = None,
    sinks: Any = None,
    batch_size: int | None = None,
    flush_interval: float | None = None,
    capacity: int | None = None,
    policy: str | None = None,
    attributes: dict[str, Any] | None = None,
    schema: str | None = None,
    max_message_length: int | None = None,
    max_value_length: int | None = None,
    shutdown_timeout: float | None = None,
    spill_dir: str | None = None,
    spill_max_bytes: int | None = None,
    retry_attempts: int | None = None,
    retry_deadline: float | None = None,
    breaker_threshold: int | None = None,
    breaker_reset: float | None = None,
    scrub: Any = None,
    max_attributes: int | None = None,
) -> Config:
    """Configure atrace for this process; unset arguments come from ATRACE_*/OTEL_* or defaults.

    Records buffered under a previous configuration are still written by it; records emitted
    before the first configure() are written by this one. Either way they stay counted in
    :func:`metrics`. Every argument is validated here, and a bad one raises before anything
    changes.

    Args:
        service: the service name on every record (``ATRACE_SERVICE``, ``OTEL_SERVICE_NAME``).
        environment: the deployment environment (``ATRACE_ENVIRONMENT``).
        sink: where batches go: a URL (``postgresql://…``, ``http(s)://…`` for a collector),
            ``"console"``, ``"otlp"``, a sink object, or a list of them (``ATRACE_SINK``); none
            at all means the embedded PostgreSQL. ``sinks`` is the same.
        batch_size: records per batch (default 5,000; ``ATRACE_BATCH_SIZE``).
        flush_interval: seconds a partial batch waits (default 1.0; ``ATRACE_FLUSH_INTERVAL``).
        capacity: records the ring holds (default 100,000; ``ATRACE_CAPACITY``).
        policy: what a full ring does: ``"drop_oldest"`` (default), ``"drop_newest"`` or
            ``"block"`` (``ATRACE_POLICY``).
        attributes: resource attributes on every record (also ``OTEL_RESOURCE_ATTRIBUTES``).
        schema: the PostgreSQL schema (default ``"atrace"``; ``ATRACE_SCHEMA``).
        max_message_length: characters of a message kept (``ATRACE_MAX_MESSAGE_LENGTH``).
        max_value_length: characters of an attribute value kept
            (``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``).
        max_attributes: attributes a record keeps, the first ones; the others are dropped and
            counted (default 128; ``ATRACE_MAX_ATTRIBUTES``, ``OTEL_ATTRIBUTE_COUNT_LIMIT``).
        shutdown_timeout: seconds the flush at exit may take (``ATRACE_SHUTDOWN_TIMEOUT``).
        spill_dir: where undelivered batches wait on disk (``ATRACE_SPILL_DIR``).
        spill_max_bytes: the spill's size on disk; 0 turns it off (``ATRACE_SPILL_MAX_BYTES``).
        retry_attempts: attempts per batch and sink (default 4).
        retry_deadline: seconds a batch may spend being retried (default 10).
        breaker_threshold: consecutive failed batches that open a sink's breaker (default 3).
        breaker_reset: seconds an open breaker waits before a probe (default 5).
        scrub: secrets scrubbed from records before they leave the process (``ATRACE_SCRUB``):
            True for the built-in rules, more sensitive key words (a list), or
            ``keep(key, value) -> bool`` to keep a value a key rule would scrub; off by default.

    Returns:
        The :class:`~atrace.config.Config` in force.

    Raises:
        ConfigError: an argument or environment variable is invalid (the message names it and
            its value).
    """
    kwargs = from_environment()
    if attributes is not None:
        kwargs["attributes"] = {**kwargs.get("attributes", {}), **attributes}
    chosen = sinks if sinks is not None else sink
    if chosen is not None:
        kwargs["sinks"] = tuple(chosen) if isinstance(chosen, (list, tuple)) else (chosen,)
    for key, value in (
        ("service", service),
        ("environment", environment),
        ("batch_size", batch_size),
        ("flush_interval", flush_interval),
        ("capacity", capacity),
        ("policy", policy),
        ("schema", schema),
        ("max_message_length", max_message_length),
        ("max_value_length", max_value_length),
        ("shutdown_timeout", shutdown_timeout),
        ("spill_dir", spill_dir),
        ("spill_max_bytes", spill_max_bytes),
        ("retry_attempts", retry_attempts),
        ("retry_deadline", retry_deadline),
        ("breaker_threshold", breaker_threshold),
        ("breaker_reset", breaker_reset),
        ("scrub", scrub),
        ("max_attributes", max_attributes),
    ):
        if value is not None:
            kwargs[key] = value
    config = Config(**kwargs)
    swap(_new_pipeline(config), carry=True)
    return config


def initialize(dsn: str, **kwargs: Any) -> Config:
    """Short form of ``configure(sink=dsn, ...)``."""
    return configure(sink=dsn, **kwargs)


def get_config() -> Config:
    """The configuration in force (from the environment if configure() was never called)."""
    return get_pipeline().config


def reset() -> None:
    """Forget the configuration and the counts; buffered records are still written by the old
    pipeline."""
    swap(None)
    with _STATE.lock:
        _STATE.past.clear()


def metrics() -> Metrics:
    """Counters since the process started (or the last reset()): accepted, dropped, written,
    queue size, latency... Records accepted under an earlier configuration stay counted."""
    current = get_pipeline()
    figures = current.metrics()
    if current.receives:  # a capture counts only what it captured
        return figures
    for pipeline in _in_this_process():
        if pipeline is not current:
            figures = figures.plus(pipeline.metrics())
    return figures


def _all_clean() -> bool:
    return all(pipeline.clean() for pipeline in _in_this_process())


def flush(timeout: float | None = 10.0) -> bool:
    """Write everything buffered so far; True when, within ``timeout`` seconds, every record
    accepted so far was written to every sink.

    False says some were not: still being written when the time ran out, dropped, or waiting in
    the spill for a sink to come back (:func:`metrics` says which). Called from a coroutine on the
    loop the flusher runs on, it cannot wait without blocking that loop: it then only requests
    the flush and returns False. Use ``await aflush()`` there.
    """
    pipeline = _STATE.pipeline
    replaced = _still_stopping()
    if pipeline is None and not replaced:
        return _all_clean()
    import concurrent.futures

    deadline = None if timeout is None else time.monotonic() + timeout
    futures = list(replaced)
    if pipeline is not None:
        futures.append(pipeline.request_flush())
        if pipeline.on_flusher_loop():
            return False
    try:
        # A configuration replaced just before still writes what it held: wait for it too.
        for fut in futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not fut.result(left):
                return False
    except concurrent.futures.TimeoutError:
        return False
    return _all_clean()


def _still_stopping() -> list[concurrent.futures.Future[bool]]:
    with _STATE.lock:
        return list(_STATE.stopping.values())


async def aflush(timeout: float | None = 10.0) -> bool:
    """Write everything buffered so far; True when, within ``timeout`` seconds, every record
    accepted so far was written to every sink (see :func:`flush`)."""
    import asyncio

    pipeline = _STATE.pipeline
    futures = _still_stopping()
    if pipeline is not None:
        futures.append(pipeline.request_flush())
    if not futures:
        return _all_clean()
    waits = [asyncio.shield(asyncio.wrap_future(fut)) for fut in futures]
    try:
        written = await asyncio.wait_for(asyncio.gather(*waits), timeout)
    except asyncio.TimeoutError:
        return False
    return all(written) and _all_clean()


async def ashutdown(timeout: float | None = None) -> bool:
    """Write what is buffered, close the sinks and stop the flusher, within ``timeout`` seconds
    (default ``shutdown_timeout``).

    Within that time each sink gets a last chance: one whose circuit breaker is open is tried
    at once, what the spill holds is sent, then what is buffered. atrace starts again on the next
    record. True when every record accepted so far was written; False if the time ran out first
    or some records were dropped or stay spilled (one warning line says how many, and where).
    """
    import asyncio

    pipeline = _STATE.pipeline
    if pipeline is None:
        return _all_clean()
    if timeout is None:
        timeout = pipeline.config.shutdown_timeout
    done = pipeline.stop_nowait(timeout)
    try:
        stopped = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)), timeout + 1)
    except asyncio.TimeoutError:
        return False
    return stopped and _all_clean()


def shutdown(timeout: float | None = None) -> bool:
    """Blocking form of :func:`ashutdown` for code without a running loop."""
    pipeline = _STATE.pipeline
    if pipeline is None:
        return _all_clean()
    if timeout is None:
        timeout = pipeline.config.shutdown_timeout
    import concurrent.futures
    import time

    thread = pipeline.flusher_thread
    done = pipeline.stop_nowait(timeout)
    if pipeline.on_flusher_loop():
        return False
    deadline = time.monotonic() + timeout + 1
    try:
        stopped = done.result(timeout + 1)
    except concurrent.futures.TimeoutError:
        return False
    if thread is not None:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return False
    return stopped and _all_clean()


async def put(record: tuple[Any, ...]) -> bool:
    """Buffer a record; under the ``block`` policy wait for room (anyio) instead of dropping.

    What ``await atrace.amit()`` and ``await Tracer.amit()`` end with. Returns True when the
    record was buffered (False only when it was dropped by policy).
    """
    if not runtime.block:
        return runtime.push(record)
    pipeline = get_pipeline()
    if pipeline.config.policy != "block":
        return runtime.push(record)
    ring = pipeline.ring
    if ring.try_push(record):
        pipeline.start()
        return True
    import anyio

    delay = 0.0005
    while not ring.try_push(record):
        pipeline.request_flush()
        await anyio.sleep(delay)
        delay = min(delay * 2, pipeline.tick)
    return True


@atexit.register
def _at_exit() -> None:
    with _STATE.lock:
        # One that was replaced and then put back (by a capture) is in both places.
        pipelines = dict.fromkeys([*_STATE.stopping, _STATE.pipeline])
    for pipeline in pipelines:
        if pipeline is not None:
            pipeline.flush_at_exit(pipeline.config.shutdown_timeout)


def _after_fork_in_child() -> None:
    # The child must not share the parent's buffer, flusher thread, connections or locks: the
    # parent's pipeline is dropped, not stopped (its flusher does not exist here).
    _STATE.lock = threading.RLock()
    _STATE.stopping.clear()
    runtime.open_spans.clear()
    old, _STATE.pipeline = _STATE.pipeline, None
    runtime.push = _autoconfigure_push
    runtime.block = False
    if old is not None:
        _install_child(old.config)


def _install_child(config: Config) -> None:
    pipeline = _new_pipeline(config.replace())
    swap(pipeline)
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        # A multiprocessing child ends with os._exit(), past atexit: flush in its finalizers.
        # They are cleared when the child starts, so register once its after-fork hooks run.
        mp_util.register_after_fork(pipeline, _finalize_in_mp_child)


def _finalize_in_mp_child(_pipeline: object) -> None:
    from multiprocessing import util

    util.Finalize(None, _at_exit, exitpriority=100)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
