"""The flusher: one ring, its sinks, and the task (or thread) that drains one into the other.

The flusher is a task on the event loop that was running when the first record arrived; in a
program with no loop it is a daemon thread running a loop of its own. It drains the ring by size
(``batch_size``), by time (``flush_interval``), on ``flush()`` and at shutdown, encodes records into
rows and hands each batch to every sink's lane (retries, circuit breaker, spill to disk; see
:mod:`atrace._delivery.lane`). A sink error is counted, never raised to the application.

Accounting: ``accepted == written + dropped + queue_size + in_flight + spilled_pending`` at every
moment, where ``dropped`` adds the ring's policy drops, records the spill could not hold, and
records a sink refused for good.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .._delivery.breaker import CircuitBreaker
from .._delivery.lane import SinkLane
from .._delivery.retry import RetryPolicy
from .._emit.runtime import runtime
from ..config import Config
from ..sinks import Batch, Sink, resolve_all
from . import ring as _ring
from .encode import Encoder
from .state import Metrics

__all__ = ("DEFAULT_TICK", "ENCODE_CHUNK", "Pipeline")

_log = logging.getLogger("atrace")
# Between two looks at the ring: bounds how late a size-triggered batch or a flush() starts.
DEFAULT_TICK = 0.02
# Records encoded between two yields to the loop (~1-2 us each with attributes), so encoding
# never holds the loop for more than a quarter of a millisecond or so.
ENCODE_CHUNK = 128
DEFAULT_WRITE_TIMEOUT = 30.0
# Above this share of the ring's capacity, a batch that cannot be written right now is spilled
# instead of waiting, so drop_oldest does not have to drop while a sink is slow or down.
PRESSURE = 0.8


def _spill_key(sink: Sink) -> str:
    key = str(getattr(sink, "spill_key", None) or getattr(sink, "name", "sink"))
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:80] or "sink"


class Pipeline:
    """A ring, the sinks, and the flusher that connects them."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        tick: float = DEFAULT_TICK,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        self.config = config
        self.ring = _ring.Ring(config.capacity, config.policy)
        self._clock = clock
        self._sleep = sleep
        self._write_timeout = write_timeout
        self.lanes = [self._lane(s) for s in resolve_all(config.sinks, schema=config.schema)]
        self.encoder = Encoder(
            service=config.service,
            environment=config.environment,
            host=config.host,
            pid=config.pid,
            attributes=config.attributes,
            max_message_length=config.max_message_length,
            max_value_length=config.max_value_length,
        )
        self._tick = min(tick, config.flush_interval)
        self._concurrency = max(1, min(getattr(ln.sink, "concurrency", 1) for ln in self.lanes))
        # Only drop_oldest would lose records to a full ring; block makes emitters wait, and
        # drop_newest keeps the oldest by choice.
        self._spill_on_pressure = config.policy == "drop_oldest"
        self._lock = threading.Lock()
        self._requests: list[concurrent.futures.Future[bool]] = []
        self._stopping = False
        self._running = False
        self._done: concurrent.futures.Future[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        # Loops whose shutdown cancelled the flusher: starting a task there again would leak it.
        self._dead_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self.batches = 0
        self.in_flight = 0  # records drained from the ring whose batch is not settled yet
        self._latencies: deque[float] = deque(maxlen=2048)
        self._replays: dict[SinkLane, asyncio.Future[int]] = {}
        self._flushing: asyncio.Future[None] | None = None
        self._writing: set[asyncio.Future[None]] = set()  # deliveries under way
        self._forced = False  # the shutdown deadline cut a flush short
        # Batches whose write was cut short by cancellation; written first at the next flush.
        self._unsent: list[Batch] = []

    def _lane(self, sink: Sink) -> SinkLane:
        config = self.config
        spill = None
        if config.spill_max_bytes > 0:
            from .._delivery.spill import Spill, default_spill_dir

            base = Path(config.spill_dir) if config.spill_dir else default_spill_dir()
            spill = Spill(base / _spill_key(sink), max_bytes=config.spill_max_bytes)
        return SinkLane(
            sink,
            policy=RetryPolicy(max_attempts=config.retry_attempts, deadline=config.retry_deadline),
            breaker=CircuitBreaker(
                failure_threshold=config.breaker_threshold,
                reset_timeout=config.breaker_reset,
                clock=self._clock,
            ),
            spill=spill,
            # One attempt never outlasts the batch's whole retry deadline.
            write_timeout=min(self._write_timeout, max(config.retry_deadline, 0.001)),
            clock=self._clock,
            sleep=self._sleep,
        )

    # ---- emit side ----------------------------------------------------------------------------

    def push_starting(self, record: tuple[Any, ...]) -> bool:
        """``runtime.push`` while no flusher runs: buffer the record, then start one."""
        accepted = self.ring.push(record)
        self.start()
        return accepted

    def start(self) -> None:
        """Start the flusher on the running loop, or on a daemon thread when there is none."""
        with self._lock:
            if self._running:
                return
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and (loop in self._dead_loops or loop.is_closed()):
                return  # that loop is shutting down; the exit handler writes what is left
            self._running = True
            self._stopping = False
            self._forced = False
            self._done = concurrent.futures.Future()
            if loop is not None:
                self._loop = loop
                # In a context of its own: the task would otherwise inherit the span current
                # where the first record was emitted, and link its sinks' logs to it.
                self._task = contextvars.Context().run(
                    loop.create_task, self._run(), name="atrace-flusher"
                )
            else:
                self._thread = threading.Thread(
                    target=self._thread_main, name="atrace-flusher", daemon=True
                )
                contextvars.Context().run(self._thread.start)
            if runtime.push == self.push_starting:
                runtime.push = self.ring.push

    def _thread_main(self) -> None:
        asyncio.run(self._run())

    # ---- the flusher --------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        interval = self.config.flush_interval
        batch_size = self.config.batch_size
        ring = self.ring
        next_due = self._clock() + interval
        cancelled = False
        try:
            # Sinks open on their first write; what an earlier run (or process) spilled is
            # sent in the background.
            self._start_replays()
            while not self._stopping:
                if len(ring) < batch_size:
                    await self._idle()  # a backlog of full batches is written without pause
                    if self._stopping:
                        break
                else:
                    await asyncio.sleep(0)  # still let the application's tasks run
                now = self._clock()
                due = now >= next_due
                if due or self._requests or len(ring) >= batch_size:
                    self._flushing = asyncio.ensure_future(
                        self._flush(everything=due or bool(self._requests))
                    )
                    try:
                        await self._flushing
                    except asyncio.CancelledError:
                        if not self._forced:
                            raise
                        break  # the shutdown deadline passed: the final flush spills the rest
                    finally:
                        self._flushing = None
                    if due:
                        next_due = now + interval
                        self._start_replays()
        except asyncio.CancelledError:
            cancelled = True
            self._dead_loops.add(loop)
        except Exception:  # a bug here must not take the application down
            _log.exception("atrace: flusher failed; records stay buffered")
        finally:
            try:
                await self._final_flush()
            except BaseException:
                _log.exception("atrace: final flush failed")
            self._finish()
        if cancelled:
            raise asyncio.CancelledError

    async def _idle(self) -> None:
        # One tick of the injected sleep, cut short by a flush or stop request.
        wake = self._wake
        assert wake is not None
        if not wake.is_set():
            sleeper = asyncio.ensure_future(self._sleep(self._tick))
            waiter = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waiter.cancel()
        wake.clear()

    def _wake_soon(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop closed in between
            pass

    def _replay_done(self, lane: SinkLane, _task: asyncio.Future[int]) -> None:
        self._replays.pop(lane, None)

    def _start_replays(self) -> None:
        for lane in self.lanes:
            if lane not in self._replays and lane.has_backlog():
                task = asyncio.ensure_future(lane.replay())
                self._replays[lane] = task
                task.add_done_callback(functools.partial(self._replay_done, lane))

    async def _final_flush(self) -> None:
        deadline = self.config.shutdown_timeout
        for task in list(self._replays.values()):
            task.cancel()
        try:
            await asyncio.wait_for(self._flush(everything=True, announce_all=True), deadline)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            _log.warning("atrace: shutdown flush did not finish within %.1fs", deadline)
        # What could not be written in time is spilled, not lost.
        self._spill_everything("not written before shutdown")
        await self._close_sinks()

    def _spill_everything(self, reason: str) -> None:
        while self._unsent:
            batch = self._unsent.pop(0)
            for lane in self.lanes:
                lane.put_aside(batch, reason)
            self.in_flight -= len(batch)
        records = self.ring.drain(len(self.ring))
        if records:
            self.in_flight += len(records)
            batch = Batch(self.encoder.rows(records))
            for lane in self.lanes:
                lane.put_aside(batch, reason)
            self.in_flight -= len(records)

    def _finish(self) -> None:
        with self._lock:
            self._running = False
            self._task = None
            self._thread = None
            requests, self._requests = self._requests, []
            done = self._done
            if runtime.push == self.ring.push:
                runtime.push = self.push_starting
        for fut in requests:
            if not fut.done():
                fut.set_result(not len(self.ring))
        if done is not None and not done.done():
            done.set_result(True)

    async def _close_sinks(self) -> None:
        for lane in self.lanes:
            await lane.close()

    def _announce_open_spans(self, everything: bool) -> None:
        # A span running longer than one interval gets a start row now, so it is visible while
        # it runs; its end then becomes a second row (kind 2) instead of one complete row.
        cutoff = time.time_ns() - int(self.config.flush_interval * 1e9)
        push = self.ring.push
        for sp in runtime.open_spans.copy():
            if sp.announced or (not everything and sp.start_ns > cutoff) or not sp.span_id:
                continue
            sp.announced = True
            push(sp._start_record())

    async def _flush(self, *, everything: bool, announce_all: bool = False) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        ring = self.ring
        batch_size = self.config.batch_size
        if everything:
            self._announce_open_spans(announce_all)
            target = len(ring)
        else:
            target = len(ring) // batch_size * batch_size
        # Batches are written while the next ones are encoded, so the client's encoding overlaps
        # the database's work; up to ``concurrency`` writes run at once (a sink that keeps order,
        # like the console, allows one). Writes outlive a size-triggered flush; a flush that
        # must be complete (interval, flush(), shutdown) waits for all of them.
        writing = self._writing
        try:
            while self._unsent:
                await self._deliver(self._unsent.pop(0))
            while target > 0:
                records = ring.drain(min(batch_size, target))
                if not records:
                    break
                target -= len(records)
                self.in_flight += len(records)
                await self._dispatch(records, writing)
            if requests or announce_all:  # a flush() or the last flush: wait for every write
                while writing:
                    await asyncio.wait(set(writing))
        except asyncio.CancelledError:
            # Out of time (shutdown): stop the writes still running; each puts its batch back
            # in _unsent, from where the shutdown spills it.
            if writing:
                for task in writing:
                    task.cancel()
                await asyncio.wait(set(writing))
            raise
        for fut in requests:
            if not fut.done():
                fut.set_result(True)

    async def _dispatch(self, records: list[Any], writing: set[asyncio.Future[None]]) -> None:
        """Encode drained records and start their delivery once a writing slot is free."""
        ring = self.ring
        batch: Batch | None = None
        try:
            batch = await self._encode(records)
            while len(writing) >= self._concurrency:
                if self._spill_on_pressure and len(ring) >= PRESSURE * ring.capacity:
                    # The sink is too slow (or retrying): spill rather than let the ring drop.
                    for lane in self.lanes:
                        lane.put_aside(batch, "buffer near full while the sink lagged")
                    self.in_flight -= len(batch)
                    return
                await asyncio.wait(
                    set(writing), timeout=self._tick, return_when=asyncio.FIRST_COMPLETED
                )
            task = asyncio.ensure_future(self._deliver(batch))
            writing.add(task)
            task.add_done_callback(writing.discard)
        except asyncio.CancelledError:
            # Drained but not handed on (the shutdown deadline passed): keep it for the
            # shutdown to spill.
            self._unsent.append(batch if batch is not None else Batch(self.encoder.rows(records)))
            raise

    async def _encode(self, records: list[Any]) -> Batch:
        rows: list[Any] = []
        encode = self.encoder.rows
        for start in range(0, len(records), ENCODE_CHUNK):
            # A turn for the loop before every chunk, the first too: the step that drained the
            # ring (or finished the previous batch) must not run on into this one.
            await asyncio.sleep(0)
            rows.extend(encode(records[start : start + ENCODE_CHUNK]))
        return Batch(rows)

    async def _deliver(self, batch: Batch) -> None:
        self.batches += 1
        began = time.perf_counter()
        try:
            for lane in self.lanes:
                await lane.deliver(batch)
        except asyncio.CancelledError:
            # The loop is shutting down mid-write: the final flush writes it again, and the
            # batch id keeps a write that did commit from being stored twice.
            self.batches -= 1
            self._unsent.append(batch)
            raise
        self.in_flight -= len(batch)
        self._latencies.append(time.perf_counter() - began)

    # ---- control ------------------------------------------------------------------------------

    def request_flush(self) -> concurrent.futures.Future[bool]:
        """Ask for everything buffered now to be written; the future says when it was."""
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
        with self._lock:
            self._requests.append(fut)
        self.start()
        self._wake_soon()
        with self._lock:
            if not self._running and fut in self._requests:
                self._requests.remove(fut)
                fut.set_result(not len(self.ring))
        return fut

    @property
    def flusher_thread(self) -> threading.Thread | None:
        """The daemon thread the flusher runs on, if it runs on one."""
        return self._thread

    def on_flusher_loop(self) -> bool:
        """Whether the flusher is a task on this thread's running loop (a sync wait would hang)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self._running and self._task is not None and self._loop is loop

    def stop_nowait(self) -> concurrent.futures.Future[bool]:
        """Tell the flusher to write what is buffered and stop; the future says when it has.

        A write still hanging ``shutdown_timeout`` seconds later is cancelled, and what it held
        is spilled, so that stopping never waits on a dead sink for long.
        """
        with self._lock:
            already = self._stopping
            self._stopping = True
            done = self._done
            running = self._running
        if running and done is not None:
            self._wake_soon()
            loop = self._loop
            if not already and loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._arm_force_stop)
                except RuntimeError:
                    pass
            return done
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
        fut.set_result(True)
        return fut

    def _arm_force_stop(self) -> None:
        assert self._loop is not None
        self._loop.call_later(self.config.shutdown_timeout, self._force_stop)

    def _force_stop(self) -> None:
        flushing = self._flushing
        if self._running and flushing is not None and not flushing.done():
            self._forced = True
            flushing.cancel()

    def flush_at_exit(self, timeout: float) -> None:
        """Write what is left when the interpreter exits, whatever happened to the loop."""
        done = self.stop_nowait()
        thread = self._thread
        if thread is not None:
            try:
                done.result(timeout)
            except concurrent.futures.TimeoutError:
                return
        if len(self.ring) or runtime.open_spans:
            # The flusher's loop is gone (asyncio.run returned): write on a loop of our own.
            try:
                asyncio.run(asyncio.wait_for(self._exit_flush(), timeout))
            except Exception as exc:
                _log.warning("atrace: could not write %d records at exit: %r", len(self.ring), exc)

    async def _exit_flush(self) -> None:
        for lane in self.lanes:
            lane.is_open = False
        try:
            await self._flush(everything=True, announce_all=True)
        finally:
            self._spill_everything("not written before exit")
            await self._close_sinks()

    def metrics(self) -> Metrics:
        """A frozen snapshot of the counters (delivery figures: the first sink's)."""
        ring = self.ring
        lat = sorted(self._latencies)
        mean = sum(lat) / len(lat) * 1e3 if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else 0.0
        lanes = tuple(lane.stats() for lane in self.lanes)
        first = lanes[0]
        return Metrics(
            accepted=ring.accepted,
            written=first.written,
            dropped=ring.dropped + first.dropped_spill + first.dropped_permanent,
            dropped_ring=ring.dropped,
            dropped_spill=first.dropped_spill,
            dropped_permanent=first.dropped_permanent,
            spilled=first.spilled,
            spilled_pending=first.spilled_pending,
            replayed=first.replayed,
            in_flight=self.in_flight,
            retries=first.retries,
            batches=self.batches,
            sink_errors=sum(lane.errors for lane in lanes),
            queue_size=len(ring),
            capacity=ring.capacity,
            high_water=ring.high_water,
            open_spans=len(runtime.open_spans),
            flush_latency_mean_ms=mean,
            flush_latency_p99_ms=p99,
            breaker_state=first.breaker_state,
            breaker_trips=first.breaker_trips,
            implementation=_ring.IMPLEMENTATION,
            running=self._running,
            sinks=lanes,
        )
