"""The flusher: one ring, its sinks, and the task (or thread) that drains one into the other.

The flusher is a task on the event loop that was running when the first record arrived; in a
program with no loop it is a daemon thread running a loop of its own. It drains the ring by size
(``batch_size``), by time (``flush_interval``), on ``flush()`` and at shutdown, encodes records into
rows and hands each batch to every sink's lane (retries, circuit breaker, spill to disk; see
:mod:`atrace._delivery.lane`). A sink error is counted, never raised to the application.

Accounting: ``accepted == written + dropped + queue_size + in_flight + spilled_pending`` at every
moment, where ``dropped`` adds the ring's policy drops, records the spill could not hold, and
records a sink refused for good.

The pipeline's life is an explicit state machine::

    IDLE ──(first record, flush request)──► RUNNING ──(stop_nowait)──► STOPPING ──► IDLE
    IDLE ──(stop_nowait with records left: a flusher starts only to write them)──► STOPPING
    STOPPING ──(shutdown_timeout passed: the write under way is cancelled)──► FORCED ──► IDLE
    RUNNING ──(the flusher ended on its own: its loop was shut down)──► IDLE

Time is injected (a :class:`Clock`): the flush interval, the tick between two looks at the ring,
the retries' back-off and the breaker's reset run on it, so a test drives them with
:class:`atrace.testing.FakeClock`. The guards against a hung sink (the write timeout, the
shutdown deadline) stay on the loop's own time, since a hung sink hangs in real time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import enum
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

from .._delivery.breaker import CircuitBreaker
from .._delivery.lane import SinkLane
from .._delivery.retry import RetryPolicy
from .._emit.hot import start_record
from .._emit.runtime import runtime
from .._records import Batch, Row
from ..config import Config
from ..errors import InternalError
from ..sinks import Sink, resolve_all
from ..sinks._base import SinkOptions
from . import ring as _ring
from .encode import Encoder
from .metrics import NO_LANE, Metrics
from .report import Reporter

__all__ = (
    "DEFAULT_TICK",
    "ENCODE_CHUNK",
    "SYSTEM_CLOCK",
    "Clock",
    "FlushMode",
    "Pipeline",
    "PipelineState",
    "SystemClock",
)

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


class Clock(Protocol):
    """The time a pipeline runs on."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: intervals and deadlines."""

    def perf_counter(self) -> float:
        """Seconds at the finest resolution there is: the flush latency."""

    def time_ns(self) -> int:
        """Wall-clock nanoseconds since the epoch, the time spans start at: how long an open
        span has run."""

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on :meth:`monotonic`."""


class SystemClock:
    """The real time."""

    monotonic = staticmethod(time.monotonic)
    perf_counter = staticmethod(time.perf_counter)
    time_ns = staticmethod(time.time_ns)

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running loop."""
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


class PipelineState(enum.Enum):
    """Whether a flusher runs, and what it is doing."""

    IDLE = "idle"  # no flusher (not started yet, or stopped): the next record starts one
    RUNNING = "running"  # the flusher drains the ring by size, by time and on request
    STOPPING = "stopping"  # the flusher writes what is buffered, closes the sinks, then ends
    FORCED = "forced"  # stopping outlasted shutdown_timeout: the write under way was cancelled


_MOVES: dict[PipelineState, frozenset[PipelineState]] = {
    PipelineState.IDLE: frozenset({PipelineState.RUNNING, PipelineState.STOPPING}),
    PipelineState.RUNNING: frozenset({PipelineState.STOPPING, PipelineState.IDLE}),
    PipelineState.STOPPING: frozenset({PipelineState.FORCED, PipelineState.IDLE}),
    PipelineState.FORCED: frozenset({PipelineState.IDLE}),
}
# The states in which a flusher task or thread exists.
_ACTIVE = frozenset({PipelineState.RUNNING, PipelineState.STOPPING, PipelineState.FORCED})


class FlushMode(enum.Enum):
    """How much one flush writes."""

    FULL_BATCHES = "full_batches"  # whole batches only; the remainder waits (size trigger)
    # Everything buffered, and a start row for each span open longer than one interval
    # (the interval, flush()); a flush() waits until every write has settled.
    EVERYTHING = "everything"
    # Everything, a start row for every open span, and every write settled (shutdown, exit).
    FINAL = "final"


class Pipeline:
    """A ring, the sinks, and the flusher that connects them.

    With a ``receiver`` the pipeline has no flusher and no sinks: records wait in the ring until
    :meth:`drain` (or a flush, stop or exit) encodes them and hands the rows to ``receiver``,
    synchronously, in the calling thread. :func:`atrace.testing.capture` runs on one.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        tick: float = DEFAULT_TICK,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        receiver: Callable[[list[Row]], object] | None = None,
        hold: str | None = None,
    ) -> None:
        self.config = config
        self.ring = _ring.Ring(config.capacity, config.policy)
        self._clock = SYSTEM_CLOCK if clock is None else clock
        self._write_timeout = write_timeout
        self._receiver = receiver
        self._received = 0  # rows handed to the receiver
        self._drain_lock = threading.Lock()  # keeps the receiver's rows in ring order
        # Why this pipeline only holds records (no sink could be made for an implicit
        # configuration): a configure() takes them over; nothing is written until then.
        self.held = hold
        self.lanes = (
            []
            if receiver is not None or hold is not None
            else [self._lane(s) for s in resolve_all(config.sinks, schema=config.schema)]
        )
        self.encoder = Encoder.from_config(config)
        # Between two looks at the ring (also how often emitters blocked on a full ring retry).
        self.tick = min(tick, config.flush_interval)
        self._concurrency = min((lane.options.concurrency for lane in self.lanes), default=1)
        # Only drop_oldest would lose records to a full ring; block makes emitters wait, and
        # drop_newest keeps the oldest by choice.
        self._spill_on_pressure = config.policy == "drop_oldest"
        self._lock = threading.Lock()
        self._requests: list[concurrent.futures.Future[bool]] = []
        self._state = PipelineState.IDLE
        self._done: concurrent.futures.Future[bool] | None = None
        self._force_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        # Loops whose shutdown cancelled the flusher: starting a task there again would leak it.
        self._dead_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self.batches = 0
        self.in_flight = 0  # records drained from the ring whose batch is not settled yet
        self._latencies: deque[float] = deque(maxlen=2048)
        self._flushing: asyncio.Future[None] | None = None
        self._writing: set[asyncio.Future[None]] = set()  # deliveries under way
        # Batches whose write was cut short by cancellation; written first at the next flush.
        self._unsent: list[Batch] = []
        # Made by the first record of a program that had not called configure(): a configure()
        # takes over what it holds (see take_over).
        self.implicit = False
        self.carried_out = 0  # records another pipeline took over from this one's ring
        # When stopping: the loop time by which the last flush must be done.
        self._deadline: float | None = None
        self._stop_timeout = config.shutdown_timeout
        self.ending = "shutdown"  # what the last line at the end names
        self.reporter = Reporter(self.ring, self.lanes, self._clock.monotonic)

    def _lane(self, sink: Sink) -> SinkLane:
        config = self.config
        options = SinkOptions.of(sink)
        spill = None
        if config.spill_max_bytes > 0:
            from .._delivery.spill import Spill, default_spill_dir

            base = Path(config.spill_dir) if config.spill_dir else default_spill_dir()
            spill = Spill(base / options.spill_key, max_bytes=config.spill_max_bytes)
        return SinkLane(
            sink,
            options,
            policy=RetryPolicy(max_attempts=config.retry_attempts, deadline=config.retry_deadline),
            breaker=CircuitBreaker(
                failure_threshold=config.breaker_threshold,
                reset_timeout=config.breaker_reset,
                clock=self._clock.monotonic,
            ),
            spill=spill,
            # One attempt never outlasts the batch's whole retry deadline.
            write_timeout=min(self._write_timeout, max(config.retry_deadline, 0.001)),
            clock=self._clock.monotonic,
            sleep=self._clock.sleep,
        )

    # ---- the state machine --------------------------------------------------------------------

    @property
    def state(self) -> PipelineState:
        """Whether a flusher runs, and what it is doing."""
        return self._state

    def _forced(self) -> bool:
        # A method, so that the checker does not take the state for what the loop tested.
        return self._state is PipelineState.FORCED

    def _set_state(self, new: PipelineState) -> None:
        # Called with self._lock held, from any thread.
        if new not in _MOVES[self._state]:
            raise InternalError(f"pipeline cannot move from {self._state.name} to {new.name}")
        self._state = new

    # ---- emit side ----------------------------------------------------------------------------

    @property
    def receives(self) -> bool:
        """Whether this pipeline hands rows to a receiver (a capture) instead of sinks."""
        return self._receiver is not None

    @property
    def idle_push(self) -> Callable[[Any], bool]:
        """What emit calls push with while this pipeline is in force and no flusher runs."""
        if self._receiver is not None or self.held is not None:
            return self.ring.push
        return self.push_starting

    def push_starting(self, record: tuple[Any, ...]) -> bool:
        """``runtime.push`` while no flusher runs: buffer the record, then start one."""
        accepted = self.ring.push(record)
        self.start()
        return accepted

    def start(self) -> None:
        """Start the flusher on the running loop, or on a daemon thread when there is none."""
        if (
            self._state is not PipelineState.IDLE
            or self._receiver is not None
            or self.held is not None
        ):
            return  # already running (checked again under the lock), or never runs
        with self._lock:
            if self._state is PipelineState.IDLE:
                self._launch(PipelineState.RUNNING)

    def _launch(self, state: PipelineState) -> bool:
        """Start a flusher in ``state`` (RUNNING, or STOPPING to write what is left and end);
        False when this thread's loop is shutting down. Called with self._lock held."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and (loop in self._dead_loops or loop.is_closed()):
            return False  # that loop is shutting down; the exit handler writes what is left
        self._set_state(state)
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
        return True

    def _thread_main(self) -> None:
        asyncio.run(self._run())

    # ---- the flusher --------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        clock = self._clock
        interval = self.config.flush_interval
        batch_size = self.config.batch_size
        ring = self.ring
        next_due = clock.monotonic() + interval
        cancelled = False
        try:
            # Sinks open on their first write; what an earlier run (or process) spilled is
            # sent in the background (not by a flusher started only to write what is left).
            if self._state is PipelineState.RUNNING:
                self._start_replays()
            while self._state is PipelineState.RUNNING:
                if len(ring) < batch_size:
                    await self._idle()  # a backlog of full batches is written without pause
                    self.reporter.check()
                    if self._state is not PipelineState.RUNNING:
                        break
                else:
                    await asyncio.sleep(0)  # still let the application's tasks run
                now = clock.monotonic()
                due = now >= next_due
                if due or self._requests or len(ring) >= batch_size:
                    mode = FlushMode.EVERYTHING if due or self._requests else FlushMode.FULL_BATCHES
                    self._flushing = asyncio.ensure_future(self._flush(mode))
                    try:
                        await self._flushing
                    except asyncio.CancelledError:
                        if not self._forced():
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
            sleeper = asyncio.ensure_future(self._clock.sleep(self.tick))
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

    def _start_replays(self) -> None:
        for lane in self.lanes:
            lane.start_replay()

    async def _final_flush(self) -> None:
        loop = asyncio.get_running_loop()
        if self._deadline is None:  # started only to stop, or its loop is shutting down
            self._deadline = loop.time() + self._stop_timeout
        remaining = max(0.0, self._deadline - loop.time())
        for lane in self.lanes:
            lane.stop_replay()
        try:
            await asyncio.wait_for(self._last_chance(), remaining)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            _log.warning(
                "atrace: the last flush did not finish within %.1fs; what is left is spilled",
                remaining,
            )
        await self._wind_up("not written before shutdown")

    async def _wind_up(self, reason: str) -> None:
        # What could not be written in time is spilled, not lost; then the sinks close and one
        # line says what was dropped or still waits.
        self._spill_everything(reason)
        await self._close_sinks()
        self.reporter.final(self)

    async def _last_chance(self) -> None:
        # The spill first (it is older), each sink probed at once even if its breaker is open,
        # then everything buffered.
        for lane in self.lanes:
            await lane.last_chance()
        await self._flush(FlushMode.FINAL)

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
        if self._force_timer is not None:
            self._force_timer.cancel()
            self._force_timer = None
        with self._lock:
            self._set_state(PipelineState.IDLE)
            self._task = None
            self._thread = None
            requests, self._requests = self._requests, []
            done = self._done
            if runtime.push == self.ring.push:
                runtime.push = self.push_starting
        clean = self.clean()
        for fut in requests:
            if not fut.done():
                fut.set_result(clean and not len(self.ring))
        if done is not None and not done.done():
            done.set_result(clean and not len(self.ring))

    async def _close_sinks(self) -> None:
        for lane in self.lanes:
            await lane.close()

    def _announce_open_spans(self, every: bool) -> None:
        # A span running longer than one interval (any open span, when ``every``) gets a start
        # row now, so it is visible while it runs; its end then becomes a second row (kind 2)
        # instead of one complete row.
        cutoff = self._clock.time_ns() - int(self.config.flush_interval * 1e9)
        push = self.ring.push
        for sp in runtime.open_spans.copy():
            if sp.announced or (not every and sp.start_ns > cutoff) or not sp.span_id:
                continue
            sp.announced = True
            push(start_record(sp))

    async def _flush(self, mode: FlushMode) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        ring = self.ring
        batch_size = self.config.batch_size
        if mode is FlushMode.FULL_BATCHES:
            target = len(ring) // batch_size * batch_size
        else:
            self._announce_open_spans(every=mode is FlushMode.FINAL)
            target = len(ring)
        # Batches are written while the next ones are encoded, so the client's encoding overlaps
        # the database's work; up to ``concurrency`` writes run at once (a sink that keeps order,
        # like the console, allows one). Writes outlive the flush that started them, except
        # that a flush() and the last flush wait until every write has settled.
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
            if requests or mode is FlushMode.FINAL:  # a flush() or the last: every write settled
                while writing:
                    await asyncio.wait(set(writing))
            self.reporter.check()
        except asyncio.CancelledError:
            # Out of time (shutdown): stop the writes still running; each puts its batch back
            # in _unsent, from where the shutdown spills it.
            if writing:
                for task in writing:
                    task.cancel()
                await asyncio.wait(set(writing))
            raise
        if requests:
            clean = self.clean()
            for fut in requests:
                if not fut.done():
                    fut.set_result(clean)

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
                await self._wait_for_a_write(writing)
            task = asyncio.ensure_future(self._deliver(batch))
            writing.add(task)
            task.add_done_callback(writing.discard)
        except asyncio.CancelledError:
            # Drained but not handed on (the shutdown deadline passed): keep it for the
            # shutdown to spill.
            self._unsent.append(batch if batch is not None else Batch(self.encoder.rows(records)))
            raise

    async def _wait_for_a_write(self, writing: Collection[asyncio.Future[None]]) -> None:
        # Until a write ends or a tick passes on the clock, whichever comes first.
        sleeper = asyncio.ensure_future(self._clock.sleep(self.tick))
        try:
            await asyncio.wait({sleeper, *writing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()

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
        clock = self._clock
        began = clock.perf_counter()
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
        self._latencies.append(clock.perf_counter() - began)

    # ---- control ------------------------------------------------------------------------------

    def drain(self) -> int:
        """Encode everything buffered and hand the rows to the receiver, here and now; returns
        how many. Only for a pipeline made with a ``receiver``."""
        receiver = self._receiver
        if receiver is None:
            raise InternalError("drain() needs a pipeline with a receiver")
        ring = self.ring
        taken = 0
        with self._drain_lock:
            while len(ring):
                records = ring.drain(len(ring))
                if not records:
                    break
                rows = self.encoder.rows(records)
                receiver(rows)
                self._received += len(rows)
                taken += len(rows)
        return taken

    def request_flush(self) -> concurrent.futures.Future[bool]:
        """Ask for everything buffered now to be written; the future says when it was."""
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
        if self._receiver is not None:
            self.drain()
            fut.set_result(True)
            return fut
        with self._lock:
            self._requests.append(fut)
        self.start()
        self._wake_soon()
        with self._lock:
            if self._state not in _ACTIVE and fut in self._requests:
                self._requests.remove(fut)
                fut.set_result(self.clean() and not len(self.ring))
        return fut

    def clean(self) -> bool:
        """Whether every record this pipeline accepted so far reached every sink: none dropped,
        none waiting in a spill (what is still buffered or being written is not counted)."""
        if self.ring.dropped or (self.held is not None and len(self.ring)):
            return False
        return not any(
            lane.dropped_spill or lane.dropped_permanent or lane.spilled_pending
            for lane in self.lanes
        )

    def take_over(self, old: Pipeline) -> int:
        """Move what ``old`` holds in its buffer to this pipeline's; returns how many records.

        A configure() after records were emitted with no configuration: those records are
        written by the configuration the program chose, and counted here.
        """
        records = old.ring.drain(len(old.ring))
        old.carried_out += len(records)
        push = self.ring.push
        for record in records:
            push(record)
        return len(records)

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
        return self._state in _ACTIVE and self._task is not None and self._loop is loop

    def stop_nowait(self, timeout: float | None = None) -> concurrent.futures.Future[bool]:
        """Tell the flusher to write what is buffered and stop; the future says when it has,
        True when every record this pipeline accepted was written (see :meth:`clean`).

        With no flusher running but records buffered, one starts only to write them. Stopping
        takes at most ``timeout`` seconds (default ``shutdown_timeout``): within it, each sink
        gets a last chance (an open breaker is probed at once, the spill replayed, the buffer
        written); a write still hanging then is cancelled, and what is left is spilled.
        """
        if timeout is not None:
            self._stop_timeout = timeout
        if self._receiver is not None:
            self.drain()
        with self._lock:
            state = self._state
            if state is PipelineState.RUNNING:
                self._set_state(PipelineState.STOPPING)
            elif (
                state is PipelineState.IDLE
                and self._receiver is None
                and self.held is None
                and len(self.ring)
            ):
                self._launch(PipelineState.STOPPING)
            done = self._done if self._state in _ACTIVE else None
        if done is None:
            fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
            fut.set_result(self.clean() and not len(self.ring))
            return fut
        if state is PipelineState.RUNNING:
            self._wake_soon()
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._arm_force_stop, loop)
                except RuntimeError:
                    pass
        return done

    def _arm_force_stop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._state is PipelineState.STOPPING and self._loop is loop:
            self._deadline = loop.time() + self._stop_timeout
            self._force_timer = loop.call_at(self._deadline, self._force_stop)

    def _force_stop(self) -> None:
        self._force_timer = None
        flushing = self._flushing
        with self._lock:
            if self._state is not PipelineState.STOPPING or flushing is None or flushing.done():
                return
            self._set_state(PipelineState.FORCED)
        flushing.cancel()

    def flush_at_exit(self, timeout: float) -> None:
        """Write what is left when the interpreter exits, whatever happened to the loop."""
        if self._receiver is not None:
            self.drain()
            return
        if self.held is not None:
            if len(self.ring):
                _log.warning(
                    "atrace: %d records were never written: atrace was not configured, and %s",
                    len(self.ring),
                    self.held,
                )
            return
        # No new flusher is started here: a thread may not start once the interpreter exits.
        self.ending = "exit"
        if self._state in _ACTIVE:
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
            lane.abandon()
        try:
            await self._last_chance()
        finally:
            await self._wind_up("not written before exit")

    def metrics(self) -> Metrics:
        """A frozen snapshot of the counters (delivery figures: the first sink's)."""
        ring = self.ring
        lat = sorted(self._latencies)
        mean = sum(lat) / len(lat) * 1e3 if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else 0.0
        lanes = tuple(lane.stats() for lane in self.lanes)
        first = lanes[0] if lanes else NO_LANE
        return Metrics(
            accepted=ring.accepted - self.carried_out,
            written=first.written + self._received,
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
            running=self._state in _ACTIVE,
            sinks=lanes,
            scrubbed=0 if self.encoder.scrubber is None else self.encoder.scrubber.count,
            dropped_attributes=self.encoder.dropped_attributes,
        )
