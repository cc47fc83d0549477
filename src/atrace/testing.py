r"""Helpers for testing code that uses atrace: ``capture()`` of every record, and a memory sink.

``capture()`` routes every record to memory for the duration of a ``with`` (or ``async with``)
block and hands back a :class:`Capture`: records appear as soon as the code under test has run,
without a flush interval, a background thread, a server or an ``await``::

    with atrace.testing.capture() as cap:
        handle_order(42)
    assert cap.span("charge").attrs["order_id"] == 42
    assert cap.tree() == "handle_order\n  charge"

The pytest fixture ``atrace_capture`` (:mod:`atrace.pytest_plugin`) yields one per test.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from types import TracebackType
from typing import Any

import orjson

from ._emit.runtime import runtime
from ._pipeline import state as _pipeline
from ._pipeline.encode import COLUMNS, Row
from ._pipeline.pipeline import Pipeline
from ._pipeline.state import Metrics
from .config import Config
from .sinks import Batch

__all__ = ("Capture", "MemorySink", "Record", "capture")

# Enough for any test; the ring allocates lazily-touched memory, so a large capacity is cheap.
DEFAULT_CAPTURE_CAPACITY = 1_000_000
_KIND_NAMES = {0: "log", 1: "span start", 2: "span end", 3: "span"}


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
        """Every row as a dict keyed by column name, attrs decoded from JSON."""
        out = []
        for row in self.rows:
            rec = dict(zip(COLUMNS, row, strict=True))
            if rec["attrs"] is not None:
                rec["attrs"] = orjson.loads(rec["attrs"])
            out.append(rec)
        return out

    def spans(self) -> list[dict[str, Any]]:
        """Rows of ended spans (complete, or end rows)."""
        return [r for r in self.records() if r["kind"] in (2, 3)]

    def logs(self) -> list[dict[str, Any]]:
        """Log rows."""
        return [r for r in self.records() if r["kind"] == 0]

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

    @classmethod
    def from_row(cls, row: Row) -> Record:
        """A record from a row in COLUMNS order (``attrs`` as JSON bytes or None)."""
        values = dict(zip(COLUMNS, row, strict=True))
        raw = values["attrs"]
        values["attrs"] = {} if raw is None else orjson.loads(raw)
        return cls(**values)

    @property
    def is_span(self) -> bool:
        """Whether this is an ended span (a complete row or an end row)."""
        return self.kind in (2, 3)

    @property
    def is_log(self) -> bool:
        """Whether this is a log."""
        return self.kind == 0

    @property
    def failed(self) -> bool:
        """Whether the span failed (status 2)."""
        return self.status == 2

    def as_dict(self) -> dict[str, Any]:
        """The record as a dict keyed by column name."""
        return {name: getattr(self, name) for name in COLUMNS}

    def __str__(self) -> str:
        what = _KIND_NAMES.get(self.kind, f"kind {self.kind}")
        text = f"{what} {self.name!r}"
        if self.kind == 0:
            text += f" {self.message!r}"
        if self.attrs:
            text += f" {self.attrs!r}"
        if self.error_type or self.error_message:
            text += f" error={self.error_type}: {self.error_message}"
        return text


class _CaptureSink:
    """Where the pipeline would write, were a flusher ever to run: straight into the capture."""

    name = "capture"

    def __init__(self, capture: Capture) -> None:
        self._capture = capture

    async def open(self) -> None:
        pass

    async def write(self, batch: Batch) -> None:
        self._capture._add_rows(batch.rows)

    async def close(self) -> None:
        pass


class _CapturePipeline(Pipeline):
    """A pipeline with no flusher: the capture drains its ring synchronously, on access."""

    def __init__(self, config: Config, capture: Capture) -> None:
        super().__init__(config)
        self._capture = capture

    def push_starting(self, record: tuple[Any, ...]) -> bool:
        return self.ring.push(record)

    def start(self) -> None:
        pass  # nothing to start: no thread, no task

    def request_flush(self) -> concurrent.futures.Future[bool]:
        self._capture.flush()
        return _done()

    def stop_nowait(self) -> concurrent.futures.Future[bool]:
        self._capture.flush()
        return _done()

    def flush_at_exit(self, timeout: float) -> None:
        self._capture.flush()

    def metrics(self) -> Metrics:
        # Written means captured here: no sink lane ever sees the rows.
        values = super().metrics().as_dict()
        values["written"] = self._capture._written
        return Metrics(**values)


def _done() -> concurrent.futures.Future[bool]:
    fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
    fut.set_result(True)
    return fut


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
        self._written = 0
        self._pipeline: _CapturePipeline | None = None
        self._previous: Any = None
        self._active = False

    # ---- activation ----------------------------------------------------------------------------

    def __enter__(self) -> Capture:
        if self._active:
            raise RuntimeError("this capture is already active")
        with _pipeline._global_lock:
            previous = _pipeline._pipeline
            # Service, environment and attributes as the application configured them, so
            # records look as they would in production; the environment is not read, so that
            # a test does not depend on the shell it runs in.
            base = previous.config if previous is not None else Config()
            config = base.replace(
                sinks=(_CaptureSink(self),),
                policy="drop_oldest",
                spill_max_bytes=0,
                **self._options,
            )
            pipe = _CapturePipeline(config, self)
            self._previous = previous
            self._pipeline = pipe
            _pipeline._install(pipe)  # the previous pipeline writes what it holds and stops
            runtime.push = pipe.ring.push
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
        with _pipeline._global_lock:
            self._active = False
            if _pipeline._pipeline is self._pipeline:
                previous, self._previous = self._previous, None
                if previous is None:
                    _pipeline.reset()
                else:
                    _pipeline._install(previous)
            # else: the code under test configured atrace itself; leave that in place

    # ---- taking records in ---------------------------------------------------------------------

    def flush(self) -> None:
        """Take in every record emitted so far (the properties and helpers call this)."""
        pipe = self._pipeline
        if pipe is None:
            return
        ring = pipe.ring
        with self._lock:
            while len(ring):
                records = ring.drain(len(ring))
                if not records:
                    break
                self._add_rows(pipe.encoder.rows(records))

    def _add_rows(self, rows: list[Row]) -> None:
        with self._lock:
            self._records.extend(Record.from_row(row) for row in rows)
            self._written += len(rows)

    def clear(self) -> None:
        """Forget every record captured so far."""
        with self._lock:
            self.flush()
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
        return [r for r in self.records if r.kind in (2, 3)]

    @property
    def logs(self) -> list[Record]:
        """Logs, in the order they were emitted."""
        return [r for r in self.records if r.kind == 0]

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
        spans = [r for r in records if r.kind in (2, 3)]
        keys = {(s.trace_id, s.span_id) for s in spans}
        below: dict[Any, list[tuple[int, int, Record]]] = {}
        for order, rec in enumerate(records):
            parent: tuple[str | None, int | None] | None
            if rec.kind in (2, 3):
                parent = (rec.trace_id, rec.parent_id)
            elif logs and rec.kind == 0:
                parent = (rec.trace_id, rec.span_id)
            else:
                continue
            if parent not in keys:
                parent = None
            below.setdefault(parent, []).append((rec.ts, order, rec))
        lines: list[str] = []

        def walk(key: Any, depth: int) -> None:
            for _, _, rec in sorted(below.get(key, ()), key=lambda item: item[:2]):
                if rec.kind == 0:
                    lines.append(f"{'  ' * depth}- {rec.message}")
                else:
                    lines.append(f"{'  ' * depth}{rec.name}")
                    walk((rec.trace_id, rec.span_id), depth + 1)

        walk(None, 0)
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "active" if self._active else "closed"
        with self._lock:
            count = len(self._records)
        return f"<Capture {state}, {count} records>"


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
