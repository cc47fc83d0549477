"""The flusher: one ring, its sinks, and the task (or thread) that drains one into the other.

The flusher is a task on the event loop that was running when the first record arrived; in a
program with no loop it is a daemon thread running a loop of its own. It drains the ring by size
(``batch_size``), by time (``flush_interval``), on ``flush()`` and at shutdown, encodes records into
rows and hands them to every sink. A sink error is counted, never raised to the application.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from . import ring as _ring
from ._runtime import runtime
from .config import Config
from .encode import Encoder
from .pipeline import Metrics
from .sinks import Batch, Sink, resolve_all

__all__ = ("DEFAULT_TICK", "ENCODE_CHUNK", "Pipeline")

_log = logging.getLogger("atrace")
# Between two looks at the ring: bounds how late a size-triggered batch or a flush() starts.
DEFAULT_TICK = 0.02
# Records encoded between two yields to the loop, so encoding never holds the loop for long.
ENCODE_CHUNK = 1_000
DEFAULT_WRITE_TIMEOUT = 30.0
_REOPEN_EVERY = 5.0


class _SinkState:
    __slots__ = ("errors", "is_open", "last_attempt", "sink", "written")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.is_open = False
        self.last_attempt = -1e18
        self.errors = 0
        self.written = 0


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
        self.sinks = [_SinkState(s) for s in resolve_all(config.sinks, schema=config.schema)]
        self.encoder = Encoder(
            service=config.service,
            environment=config.environment,
            host=config.host,
            pid=config.pid,
            attributes=config.attributes,
            max_message_length=config.max_message_length,
            max_value_length=config.max_value_length,
        )
        self._clock = clock
        self._sleep = sleep
        self._tick = min(tick, config.flush_interval)
        self._concurrency = max(1, min(getattr(st.sink, "concurrency", 1) for st in self.sinks))
        self._write_timeout = write_timeout
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
        self.written = 0
        self.failed = 0
        self.batches = 0
        self.sink_errors = 0
        self._latencies: deque[float] = deque(maxlen=2048)
        # Batches whose write was cut short by cancellation; written first at the next flush.
        self._unsent: list[Batch] = []

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
            self._done = concurrent.futures.Future()
            if loop is not None:
                self._loop = loop
                self._task = loop.create_task(self._run(), name="atrace-flusher")
            else:
                self._thread = threading.Thread(
                    target=self._thread_main, name="atrace-flusher", daemon=True
                )
                self._thread.start()
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
            await self._open_sinks()
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
                    await self._flush(everything=due or bool(self._requests))
                    if due:
                        next_due = now + interval
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

    async def _final_flush(self) -> None:
        deadline = self.config.shutdown_timeout
        try:
            await asyncio.wait_for(self._flush(everything=True, announce_all=True), deadline)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            _log.warning("atrace: shutdown flush did not finish within %.1fs", deadline)
        await self._close_sinks()

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

    async def _open_sinks(self) -> None:
        for state in self.sinks:
            await self._open(state)

    async def _open(self, state: _SinkState) -> bool:
        # Only a failed open holds back the next attempt; an open cut short by cancellation
        # (the loop shutting down) must not stop the final flush from opening the sink again.
        now = self._clock()
        if now - state.last_attempt < _REOPEN_EVERY:
            return False
        try:
            await asyncio.wait_for(state.sink.open(), self._write_timeout)
        except Exception as exc:
            state.last_attempt = now
            state.errors += 1
            self.sink_errors += 1
            _log.warning("atrace: sink %s could not open: %r", state.sink.name, exc)
            return False
        state.is_open = True
        return True

    async def _close_sinks(self) -> None:
        for state in self.sinks:
            if state.is_open:
                state.is_open = False
                state.last_attempt = -1e18
                try:
                    await asyncio.wait_for(state.sink.close(), 5.0)
                except Exception as exc:
                    _log.warning("atrace: sink %s did not close cleanly: %r", state.sink.name, exc)

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
        # like the console, allows one).
        writing: set[asyncio.Future[None]] = set()
        limit = self._concurrency
        try:
            while self._unsent:
                await self._deliver(self._unsent.pop(0))
            while target > 0:
                records = ring.drain(min(batch_size, target))
                if not records:
                    break
                target -= len(records)
                batch = await self._encode(records)
                while len(writing) >= limit:
                    _, writing = await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                writing.add(asyncio.ensure_future(self._deliver(batch)))
        finally:
            if writing:
                await asyncio.wait(writing)
        for fut in requests:
            if not fut.done():
                fut.set_result(True)

    async def _encode(self, records: list[Any]) -> Batch:
        rows = []
        encode = self.encoder.rows
        for start in range(0, len(records), ENCODE_CHUNK):
            if start:
                await asyncio.sleep(0)
            rows.extend(encode(records[start : start + ENCODE_CHUNK]))
        return Batch(rows)

    async def _deliver(self, batch: Batch) -> None:
        self.batches += 1
        began = time.perf_counter()
        ok = True
        for state in self.sinks:
            if not state.is_open and not await self._open(state):
                ok = False
                continue
            try:
                await asyncio.wait_for(state.sink.write(batch), self._write_timeout)
            except asyncio.CancelledError:
                # The loop is shutting down mid-write: the final flush writes it again, and the
                # batch id keeps a write that did commit from being stored twice.
                self.batches -= 1
                self._unsent.append(batch)
                raise
            except Exception as exc:
                ok = False
                state.errors += 1
                self.sink_errors += 1
                _log.warning(
                    "atrace: sink %s failed a batch of %d: %r", state.sink.name, len(batch), exc
                )
            else:
                state.written += len(batch)
        self._latencies.append(time.perf_counter() - began)
        if ok:
            self.written += len(batch)
        else:
            self.failed += len(batch)

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
        """Tell the flusher to write what is buffered and stop; the future says when it has."""
        with self._lock:
            self._stopping = True
            done = self._done
            running = self._running
        if running and done is not None:
            self._wake_soon()
            return done
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
        fut.set_result(True)
        return fut

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
        for state in self.sinks:
            state.is_open = False
            state.last_attempt = -1e18
        await self._open_sinks()
        try:
            await self._flush(everything=True, announce_all=True)
        finally:
            await self._close_sinks()

    def metrics(self) -> Metrics:
        """A frozen snapshot of the counters."""
        ring = self.ring
        lat = sorted(self._latencies)
        mean = sum(lat) / len(lat) * 1e3 if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else 0.0
        return Metrics(
            accepted=ring.accepted,
            dropped=ring.dropped,
            written=self.written,
            failed=self.failed,
            batches=self.batches,
            sink_errors=self.sink_errors,
            queue_size=len(ring),
            capacity=ring.capacity,
            high_water=ring.high_water,
            open_spans=len(runtime.open_spans),
            flush_latency_mean_ms=mean,
            flush_latency_p99_ms=p99,
            implementation=_ring.IMPLEMENTATION,
            running=self._running,
        )
