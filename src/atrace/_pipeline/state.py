"""The process-wide pipeline: configure(), flush(), shutdown(), metrics(), and their lifecycle.

This module stays light to import: the flusher machinery (asyncio, sinks, encoders) loads on the
first record or the first call that needs it.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from .._emit.runtime import runtime
from ..config import Config, from_environment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .pipeline import Pipeline

__all__ = (
    "Metrics",
    "aflush",
    "ashutdown",
    "configure",
    "flush",
    "get_config",
    "get_pipeline",
    "initialize",
    "metrics",
    "put_waiting",
    "reset",
    "shutdown",
)


class Metrics:
    """A frozen snapshot of the pipeline's counters (records unless said otherwise)."""

    __slots__ = (
        "accepted",  # handed to atrace by emit calls
        "batches",  # batches handed to the sinks
        "breaker_state",  # the first sink's circuit breaker: closed, open or half_open
        "breaker_trips",  # times it opened
        "capacity",
        "dropped",  # dropped_ring + dropped_spill + dropped_permanent
        "dropped_permanent",  # refused by the sink for good (kept apart on disk as rejected)
        "dropped_ring",  # discarded by the ring's policy when full
        "dropped_spill",  # could not be spilled: the spill was full or not writable
        "flush_latency_mean_ms",  # time to deliver one batch to every sink
        "flush_latency_p99_ms",
        "high_water",  # most records the ring ever held at once
        "implementation",  # which ring runs: "cython" or "python"
        "in_flight",  # drained from the ring, batch not settled yet
        "open_spans",  # entered and not yet exited
        "queue_size",  # in the ring now
        "replayed",  # sent from the spill (also an earlier process's)
        "retries",  # extra attempts, in batches
        "running",  # whether a flusher is active
        "sink_errors",  # failed attempts, in batches, all sinks
        "sinks",  # per-sink snapshots (atrace._delivery.lane.LaneStats)
        "spilled",  # written to the spill by this process
        "spilled_pending",  # of those, not replayed yet
        "written",  # stored by the sink (directly or replayed from this process's spill)
    )

    accepted: int
    batches: int
    breaker_state: str
    breaker_trips: int
    capacity: int
    dropped: int
    dropped_permanent: int
    dropped_ring: int
    dropped_spill: int
    flush_latency_mean_ms: float
    flush_latency_p99_ms: float
    high_water: int
    implementation: str
    in_flight: int
    open_spans: int
    queue_size: int
    replayed: int
    retries: int
    running: bool
    sink_errors: int
    sinks: tuple[Any, ...]
    spilled: int
    spilled_pending: int
    written: int

    def __init__(self, **values: Any) -> None:
        missing = set(self.__slots__) - values.keys()
        if missing:
            raise TypeError(f"Metrics needs {sorted(missing)}")
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Metrics is a snapshot; call atrace.metrics() again")

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict."""
        return {k: getattr(self, k) for k in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Metrics) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Metrics(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


# ---- the process-wide pipeline ----------------------------------------------------------------

_pipeline: Pipeline | None = None
_global_lock = threading.RLock()


def _autoconfigure_push(record: tuple[Any, ...]) -> bool:
    # The first record of a program that never called configure(): configure from the
    # environment (or the embedded default), then carry on as if it had.
    return get_pipeline().push_starting(record)


runtime.push = _autoconfigure_push


def _new_pipeline(config: Config) -> Pipeline:
    from .pipeline import Pipeline

    return Pipeline(config)


def get_pipeline() -> Pipeline:
    """The current pipeline, configured from the environment if configure() was never called."""
    global _pipeline
    pipeline = _pipeline
    if pipeline is not None:
        return pipeline
    with _global_lock:
        if _pipeline is None:
            _install(_new_pipeline(Config(**from_environment())))
        assert _pipeline is not None
        return _pipeline


def _install(pipeline: Pipeline) -> None:
    global _pipeline
    old, _pipeline = _pipeline, pipeline
    runtime.push = pipeline.push_starting
    runtime.block = pipeline.config.policy == "block"
    if old is not None:
        old.stop_nowait()
        if len(old.ring):
            old.start()  # it sees the stop request at once and writes what it holds


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
) -> Config:
    """Configure atrace for this process; unset arguments come from ATRACE_*/OTEL_* or defaults.

    ``sink`` (or ``sinks``) is a URL (``postgresql://…``), ``"console"``, a sink object, or a
    list of them; none at all means the embedded PostgreSQL. Records buffered under a previous
    configuration are still written by it.
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
    ):
        if value is not None:
            kwargs[key] = value
    config = Config(**kwargs)
    with _global_lock:
        _install(_new_pipeline(config))
    return config


def initialize(dsn: str, **kwargs: Any) -> Config:
    """Short form of ``configure(sink=dsn, ...)``."""
    return configure(sink=dsn, **kwargs)


def get_config() -> Config:
    """The configuration in force (from the environment if configure() was never called)."""
    return get_pipeline().config


def reset() -> None:
    """Forget the configuration; buffered records are still written by the old pipeline."""
    global _pipeline
    with _global_lock:
        old, _pipeline = _pipeline, None
        runtime.push = _autoconfigure_push
        runtime.block = False
    if old is not None:
        old.stop_nowait()


def metrics() -> Metrics:
    """Counters of the current pipeline: accepted, dropped, written, queue size, latency..."""
    return get_pipeline().metrics()


def flush(timeout: float | None = 10.0) -> bool:
    """Write everything buffered so far; True when it was written within ``timeout`` seconds.

    Called from a coroutine on the loop the flusher runs on, it cannot wait without blocking that
    loop: it then only requests the flush and returns False. Use ``await aflush()`` there.
    """
    pipeline = _pipeline
    if pipeline is None:
        return True
    import concurrent.futures

    fut = pipeline.request_flush()
    if pipeline.on_flusher_loop():
        return False
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        return False


async def aflush(timeout: float | None = 10.0) -> bool:
    """Write everything buffered so far; True when it was written within ``timeout`` seconds."""
    import asyncio

    pipeline = _pipeline
    if pipeline is None:
        return True
    fut = pipeline.request_flush()
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout)
    except asyncio.TimeoutError:
        return False


async def ashutdown(timeout: float | None = None) -> bool:
    """Write what is buffered, close the sinks and stop the flusher, within ``timeout`` seconds.

    atrace starts again on the next record; returns False if the time ran out first.
    """
    import asyncio

    pipeline = _pipeline
    if pipeline is None:
        return True
    if timeout is None:
        timeout = pipeline.config.shutdown_timeout
    done = pipeline.stop_nowait()
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)), timeout)
    except asyncio.TimeoutError:
        return False


def shutdown(timeout: float | None = None) -> bool:
    """Blocking form of :func:`ashutdown` for code without a running loop."""
    pipeline = _pipeline
    if pipeline is None:
        return True
    if timeout is None:
        timeout = pipeline.config.shutdown_timeout
    import concurrent.futures
    import time

    thread = pipeline.flusher_thread
    done = pipeline.stop_nowait()
    if pipeline.on_flusher_loop():
        return False
    deadline = time.monotonic() + timeout
    try:
        done.result(timeout)
    except concurrent.futures.TimeoutError:
        return False
    if thread is not None:
        thread.join(max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()
    return True


async def put_waiting(record: tuple[Any, ...]) -> bool:
    """Buffer a record; under the ``block`` policy wait for room (anyio) instead of dropping."""
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
        delay = min(delay * 2, pipeline._tick)
    return True


@atexit.register
def _at_exit() -> None:
    pipeline = _pipeline
    if pipeline is not None:
        pipeline.flush_at_exit(pipeline.config.shutdown_timeout)


def _after_fork_in_child() -> None:
    # The child must not share the parent's buffer, flusher thread, connections or locks.
    global _pipeline, _global_lock
    _global_lock = threading.RLock()
    runtime.open_spans.clear()
    old = _pipeline
    _pipeline = None
    runtime.push = _autoconfigure_push
    if old is not None:
        _install_child(old.config)


def _install_child(config: Config) -> None:
    global _pipeline
    _pipeline = _new_pipeline(config.replace())
    runtime.push = _pipeline.push_starting
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        # A multiprocessing child ends with os._exit(), past atexit: flush in its finalizers.
        # They are cleared when the child starts, so register once its after-fork hooks run.
        mp_util.register_after_fork(_pipeline, _finalize_in_mp_child)


def _finalize_in_mp_child(_pipeline: object) -> None:
    from multiprocessing import util

    util.Finalize(None, _at_exit, exitpriority=100)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
