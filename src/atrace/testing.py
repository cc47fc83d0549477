r"""Helpers for testing code that uses atrace: ``capture()``, a memory sink, and a fake clock.

``capture()`` routes every record to memory for the duration of a ``with`` (or ``async with``)
block and hands back a :class:`Capture`: records appear as soon as the code under test has run,
without a flush interval, a background thread, a server or an ``await``::

    with atrace.testing.capture() as cap:
        handle_order(42)
    assert cap.span("charge").attrs["order_id"] == 42
    assert cap.tree() == "handle_order\n  charge"

The pytest fixture ``atrace_capture`` (:mod:`atrace.pytest_plugin`) yields one per test.

:class:`FakeClock` runs the flusher on time a test moves by hand, to test what happens when
``flush_interval`` passes without waiting for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from types import TracebackType
from typing import Any

import orjson

from ._pipeline import state
from ._pipeline.pipeline import Clock, Pipeline
from ._records import COLUMNS, KIND_NAMES, Batch, Kind, Row, Status, row_dict
from .config import Config

__all__ = ("Capture", "FakeClock", "MemorySink", "Record", "capture")

# Enough for any test; the ring allocates lazily-touched memory, so a large capacity is cheap.
DEFAULT_CAPTURE_CAPACITY = 1_000_000
_ENDED = (Kind.SPAN_END, Kind.SPAN)


class MemorySink:
    """A sink that keeps rows in memory; ``records()`` gives them as dicts with attrs decoded."""

    name = "memory"

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.batch_ids: list[Any] = []
        self.opened = 0
        self.closed = 0

    async def open(self) -> None:
        self.opened += 1

    async def write(self, batch: Batch) -> None:
        self.batch_ids.append(batch.id)
        self.rows.extend(batch.rows)

    async def close(self) -> None:
        self.closed += 1

    def records(self) -> list[dict[str, Any]]:
        """Every row as a dict keyed by column name, attrs, links and otlp decoded from JSON."""
        out = []
        for row in self.rows:
            rec = row_dict(row)
            for column in ("attrs", "links", "otlp"):
                if rec[column] is not None:
                    rec[column] = orjson.loads(rec[column])
            out.append(rec)
        return out

    def spans(self) -> list[dict[str, Any]]:
        """Rows of ended spans (complete, or end rows)."""
        return [r for r in self.records() if r["kind"] in _ENDED]

    def logs(self) -> list[dict[str, Any]]:
        """Log rows."""
        return [r for r in self.records() if r["kind"] == Kind.LOG]

    def clear(self) -> None:
        """Forget every row."""
        self.rows.clear()
        self.batch_ids.clear()


@dataclasses.dataclass(frozen=True)
class Record:
    """One captured row with attributes decoded: a log (``kind`` 0) or a span (2 or 3).

    Fields follow the row columns; ``attrs`` is a dict (empty when there are none). Span and
    parent ids are the signed 64-bit integers of the row format.
    """

    ts: int
    kind: int
    level: int
    trace_id: str | None
    span_id: int | None
    parent_id: int | None
    duration_ns: int | None
    status: int
    service: str
    environment: str | None
    host: str | None
    pid: int | None
    name: str | None
    message: str | None
    attrs: dict[str, Any]
    error_type: str | None
    error_message: str | None
    stack_trace: str | None
    location: str | None
    span_kind: int | None = None
    trace_state: str | None = None
    trace_flags: int | None = None
    status_message: str | None = None
    links: tuple[dict[str, Any], ...] = ()
    otlp: dict[str, Any] | None = None
    resource_id: int | None = None

    @classmethod
    def from_row(cls, row: Row) -> Record:
        """A record from a row in COLUMNS order (``attrs``, ``links`` and ``otlp`` as JSON
        bytes or None)."""
        values = row_dict(row)
        raw = values["attrs"]
        values["attrs"] = {} if raw is None else orjson.loads(raw)
        raw = values["links"]
        values["links"] = () if raw is None else tuple(orjson.loads(raw))
        raw = values["otlp"]
        values["otlp"] = None if raw is None else orjson.loads(raw)
        return cls(**values)

    @property
    def is_span(self) -> bool:
        """Whether this is an ended span (a complete row or an end row)."""
        return self.kind in _ENDED

    @property
    def is_log(self) -> bool:
        """Whether this is a log."""
        return self.kind == Kind.LOG

    @property
    def failed(self) -> bool:
        """Whether the span failed (status 2)."""
        return self.status == Status.ERROR

    def as_dict(self) -> dict[str, Any]:
        """The record as a dict keyed by column name."""
        return {name: getattr(self, name) for name in COLUMNS}

    def __str__(self) -> str:
        what = KIND_NAMES.get(self.kind, f"kind {self.kind}")
        text = f"{what} {self.name!r}"
        if self.kind == Kind.LOG:
            text += f" {self.message!r}"
        if self.attrs:
            text += f" {self.attrs!r}"
        if self.status_message:
            text += f" status={self.status_message!r}"
        if self.error_type or self.error_message:
            text += f" error={self.error_type}: {self.error_message}"
        return text


class Capture:
    """Every record emitted while active, kept in memory; use through :func:`capture`.

    ``spans``, ``logs``, ``records`` and the helpers first take in what was emitted so far, so
    they are complete as soon as the code under test returns, in any thread.
    """

    def __init__(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        attributes: dict[str, Any] | None = None,
        capacity: int = DEFAULT_CAPTURE_CAPACITY,
    ) -> None:
        self._options: dict[str, Any] = {"capacity": capacity}
        if service is not None:
            self._options["service"] = service
        if environment is not None:
            self._options["environment"] = environment
        if attributes is not None:
            self._options["attributes"] = attributes
        self._lock = threading.RLock()
        self._records: list[Record] = []
        self._pipeline: Pipeline | None = None
        self._previous: Pipeline | None = None
        self._active = False

    # ---- activation ----------------------------------------------------------------------------

    def __enter__(self) -> Capture:
        if self._active:
            raise RuntimeError("this capture is already active")
        in_force = state.current()
        # Service, environment and attributes as the application configured them, so records
        # look as they would in production; the environment is not read, so that a test does
        # not depend on the shell it runs in.
        base = in_force.config if in_force is not None else Config()
        config = base.replace(sinks=(), policy="drop_oldest", spill_max_bytes=0, **self._options)
        # No flusher, no sink: the rows come here, in the thread that looks at the capture.
        self._pipeline = Pipeline(config, receiver=self._add_rows)
        # The previous pipeline writes what it holds and stops, until close() puts it back.
        self._previous = state.swap(self._pipeline)
        self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Capture:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Take in what is left and give atrace back its previous configuration."""
        if not self._active:
            return
        self.flush()
        self._active = False
        previous, self._previous = self._previous, None
        # Unless the code under test configured atrace itself: that configuration stays.
        state.swap(previous, replacing=self._pipeline)

    # ---- taking records in ---------------------------------------------------------------------

    def flush(self) -> None:
        """Take in every record emitted so far (the properties and helpers call this)."""
        if self._pipeline is not None:
            self._pipeline.drain()  # hands the rows to _add_rows

    def _add_rows(self, rows: list[Row]) -> None:
        records = [Record.from_row(row) for row in rows]
        with self._lock:
            self._records.extend(records)

    def clear(self) -> None:
        """Forget every record captured so far."""
        self.flush()
        with self._lock:
            self._records.clear()

    # ---- looking ------------------------------------------------------------------------------

    @property
    def records(self) -> list[Record]:
        """Every captured record (logs and ended spans), in the order they were emitted."""
        self.flush()
        with self._lock:
            return list(self._records)

    @property
    def spans(self) -> list[Record]:
        """Ended spans, in the order they ended (a child before its parent)."""
        return [r for r in self.records if r.kind in _ENDED]

    @property
    def logs(self) -> list[Record]:
        """Logs, in the order they were emitted."""
        return [r for r in self.records if r.kind == Kind.LOG]

    @property
    def messages(self) -> list[str | None]:
        """The message of every log, in order."""
        return [r.message for r in self.logs]

    @property
    def dropped(self) -> int:
        """Records lost because more were emitted than ``capacity`` between two looks."""
        return 0 if self._pipeline is None else self._pipeline.ring.dropped

    def find(self, name: str | None = None, /, **attrs: Any) -> list[Record]:
        """Spans named ``name`` (any name when None) whose attributes include ``attrs``."""
        return [
            s
            for s in self.spans
            if (name is None or s.name == name)
            and all(k in s.attrs and s.attrs[k] == v for k, v in attrs.items())
        ]

    def span(self, name: str, /, **attrs: Any) -> Record:
        """The one span named ``name`` (with ``attrs``); AssertionError listing the spans if not."""
        __tracebackhide__ = True  # pytest shows the caller's line, not this one
        found = self.find(name, **attrs)
        if len(found) == 1:
            return found[0]
        what = repr(name) + (f" with {attrs!r}" if attrs else "")
        spans = self.spans
        listing = "\n".join(f"  {s}" for s in spans) or "  (none)"
        lost = f" ({self.dropped} records were dropped: raise capacity)" if self.dropped else ""
        raise AssertionError(
            f"expected exactly one span named {what}, found {len(found)}; "
            f"captured spans ({len(spans)}){lost}:\n{listing}"
        )

    def children(self, span: Record) -> list[Record]:
        """The spans whose parent is ``span``, by start time."""
        return sorted(
            (s for s in self.spans if s.parent_id == span.span_id and s.trace_id == span.trace_id),
            key=lambda s: s.ts,
        )

    def logs_in(self, span: Record) -> list[Record]:
        """The logs emitted while ``span`` was the current span."""
        return [r for r in self.logs if r.span_id == span.span_id and r.trace_id == span.trace_id]

    def tree(self, *, logs: bool = False) -> str:
        """Span names as an indented tree (two spaces a level), roots and siblings by start time.

        With ``logs=True`` each log appears as ``- message`` under the span it was emitted in.
        """
        records = self.records
        spans = [r for r in records if r.kind in _ENDED]
        keys = {(s.trace_id, s.span_id) for s in spans}
        below: dict[Any, list[tuple[int, int, Record]]] = {}
        for order, rec in enumerate(records):
            parent: tuple[str | None, int | None] | None
            if rec.kind in _ENDED:
                parent = (rec.trace_id, rec.parent_id)
            elif logs and rec.kind == Kind.LOG:
                parent = (rec.trace_id, rec.span_id)
            else:
                continue
            if parent not in keys:
                parent = None
            below.setdefault(parent, []).append((rec.ts, order, rec))
        lines: list[str] = []

        def walk(key: Any, depth: int) -> None:
            for _, _, rec in sorted(below.get(key, ()), key=lambda item: item[:2]):
                if rec.kind == Kind.LOG:
                    lines.append(f"{'  ' * depth}- {rec.message}")
                else:
                    lines.append(f"{'  ' * depth}{rec.name}")
                    walk((rec.trace_id, rec.span_id), depth + 1)

        walk(None, 0)
        return "\n".join(lines)

    def __repr__(self) -> str:
        status = "active" if self._active else "closed"
        with self._lock:
            count = len(self._records)
        return f"<Capture {status}, {count} records>"


def capture(
    *,
    service: str | None = None,
    environment: str | None = None,
    attributes: dict[str, Any] | None = None,
    capacity: int = DEFAULT_CAPTURE_CAPACITY,
) -> Capture:
    """Capture every record in memory while a ``with`` / ``async with`` block runs.

    atrace's previous configuration is set aside (its buffered records written by it) and comes
    back on exit. ``service``, ``environment`` and ``attributes`` default to that configuration's;
    the process environment is not read.
    """
    return Capture(
        service=service, environment=environment, attributes=attributes, capacity=capacity
    )


class _Sleeper:
    __slots__ = ("deadline", "future", "loop")

    def __init__(
        self, deadline: float, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]
    ) -> None:
        self.deadline = deadline
        self.loop = loop
        self.future = future


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FakeClock:
    """Time that moves only when a test moves it, to drive ``flush_interval`` without waiting.

    Pipelines configured inside ``with FakeClock() as clock:`` run on it, during the block and
    after: the flush interval, the flusher's tick between two looks at the ring, the retries'
    back-off and the circuit breaker's reset wait for :meth:`advance`. The time-outs that guard
    against a hung sink stay on real time. Any thread and any event loop may sleep on one
    clock. ::

        async def test_written_once_the_interval_passes():
            sink = MemorySink()
            with FakeClock() as clock:
                atrace.configure(sink=sink, flush_interval=5)
            atrace.info("hello")
            await clock.wait_for_sleepers()  # the flusher waits for its next look
            clock.advance(4.9)
            await clock.wait_for_sleepers()  # it looked, and sleeps again: nothing due
            assert atrace.metrics().batches == 0
            clock.advance(0.1)
            await clock.wait_for_sleepers()
            assert atrace.metrics().batches == 1  # the batch is on its way to the sink

    ``start`` is the reading of :meth:`monotonic` at first. :meth:`time_ns` is the real
    wall-clock time moved on by every advance, since records carry real timestamps: a span
    that began before an advance of ten seconds has run for ten seconds by this clock.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._start = float(start)
        self._now = self._start
        self._lock = threading.Lock()
        self._sleepers: set[_Sleeper] = set()
        # wait_for_sleepers() calls not answered yet: (count wanted, the caller's loop, future).
        self._watchers: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._previous: Clock | None = None

    def __enter__(self) -> FakeClock:
        self._previous = state.use_clock(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state.use_clock(self._previous)
        self._previous = None

    def monotonic(self) -> float:
        """Seconds: ``start`` plus every :meth:`advance` so far."""
        return self._now

    def perf_counter(self) -> float:
        """The same reading as :meth:`monotonic`."""
        return self._now

    def time_ns(self) -> int:
        """Wall-clock nanoseconds: the real time now, plus every advance so far."""
        return time.time_ns() + round((self._now - self._start) * 1e9)

    async def sleep(self, seconds: float) -> None:
        """Return once :meth:`advance` has moved the clock ``seconds`` on from now."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            sleeper = _Sleeper(self._now + seconds, loop, future)
            self._sleepers.add(sleeper)
            self._notify_watchers()
        try:
            await future
        finally:
            with self._lock:
                self._sleepers.discard(sleeper)  # cancelled before its time came

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, and wake every sleep whose time has come (from any
        thread; the sleepers run once their loop gets to them)."""
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, not by {seconds!r}")
        with self._lock:
            self._now += seconds
            due = sorted(
                (s for s in self._sleepers if s.deadline <= self._now), key=lambda s: s.deadline
            )
            self._sleepers.difference_update(due)
        for sleeper in due:
            try:
                sleeper.loop.call_soon_threadsafe(_wake, sleeper.future)
            except RuntimeError:  # its loop is closed: nobody is left to wake
                pass

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting on this clock now."""
        return len(self._sleepers)

    async def wait_for_sleepers(self, count: int = 1, *, timeout: float = 10.0) -> None:
        """Return once at least ``count`` sleeps wait on this clock: the flusher, woken by
        :meth:`advance`, has done what the new time allows and waits again.

        ``timeout`` (real seconds) only stops a test that would otherwise hang.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._watchers.append((count, loop, future))
            self._notify_watchers()
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"{self.sleepers} sleeps wait on the clock after {timeout} s, not {count}"
            ) from None
        finally:
            with self._lock:
                self._watchers = [w for w in self._watchers if w[2] is not future]

    def _notify_watchers(self) -> None:
        # Called with self._lock held.
        waiting = len(self._sleepers)
        for count, loop, future in self._watchers:
            if waiting >= count:
                try:
                    loop.call_soon_threadsafe(_wake, future)
                except RuntimeError:
                    pass

    def __repr__(self) -> str:
        return f"<FakeClock at {self._now:g} s, {self.sleepers} sleeping>"
