"""The data model of a record: kinds, statuses, levels and their names; the row; the batch.

These numbers are the storage contract (the ``records`` table, the wire format, spill files).
Every module outside the hot path names them through this one table. The hot path (the emit
twins, the ring, the compiled encoders and decoders) keeps plain int constants of the same
values, so that it never looks up an enum member; ``tests/test_records.py`` holds both to it.
"""

from __future__ import annotations

import enum
import time
from types import MappingProxyType

TYPE_CHECKING = False
if TYPE_CHECKING:
    import uuid
    from typing import Any

__all__ = (
    "ATTRS",
    "COLUMNS",
    "DURATION_NS",
    "ENVIRONMENT",
    "ERROR_MESSAGE",
    "ERROR_TYPE",
    "HOST",
    "KIND",
    "KIND_NAMES",
    "LEVEL",
    "LEVELS",
    "LEVEL_NAMES",
    "LINKS",
    "LOCATION",
    "MAX_LEVEL",
    "MESSAGE",
    "NAME",
    "ORIGIN",
    "OTLP",
    "PARENT_ID",
    "PID",
    "RESOURCE_ID",
    "SERVICE",
    "SPAN_ID",
    "SPAN_KIND",
    "SPAN_KIND_NAMES",
    "STACK_TRACE",
    "STATUS",
    "STATUS_MESSAGE",
    "STATUS_NAMES",
    "TRACE_FLAGS",
    "TRACE_ID",
    "TRACE_STATE",
    "TS",
    "Batch",
    "Frozen",
    "Kind",
    "Level",
    "Row",
    "SpanKind",
    "Status",
    "broken_row",
    "level_name",
    "row_dict",
)


class Kind(enum.IntEnum):
    """What a row records (the ``kind`` column)."""

    LOG = 0
    # A span announced when it starts (so that a long one shows while it runs); its end row
    # follows with the same span id.
    SPAN_START = 1
    # The end of an announced span: its duration, status and final attributes.
    SPAN_END = 2
    # A span written once, when it ended.
    SPAN = 3


class SpanKind(enum.IntEnum):
    """A span's role in a trace (the ``span_kind`` column): OpenTelemetry's numbers, so that they
    travel through OTLP as they are. A log row has none (null)."""

    UNSPECIFIED = 0
    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class Status(enum.IntEnum):
    """How a span ended (the ``status`` column; a log row is always UNSET)."""

    UNSET = 0
    OK = 1
    ERROR = 2


class Level(enum.IntEnum):
    """Severity (the ``level`` column): Python's logging numbers. Any number from 0 to
    :data:`MAX_LEVEL` may be stored; these are the ones with a name of their own."""

    NOTSET = 0
    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40
    CRITICAL = 50


MAX_LEVEL = 100

# What users see for each number: the API's JSON, the CLI, the console sink, testing's records.
KIND_NAMES: dict[int, str] = {kind.value: kind.name.lower() for kind in Kind}
STATUS_NAMES: dict[int, str] = {status.value: status.name.lower() for status in Status}
SPAN_KIND_NAMES: dict[int, str] = {kind.value: kind.name.lower() for kind in SpanKind}
LEVEL_NAMES: dict[int, str] = {level.value: level.name.lower() for level in Level}
# The names a level may be given by (log calls, query filters), with logging's and structlog's
# aliases. Values are plain ints: a log call hands them to the hot path as they are.
LEVELS: dict[str, int] = {
    "debug": Level.DEBUG.value,
    "info": Level.INFO.value,
    "warning": Level.WARNING.value,
    "warn": Level.WARNING.value,
    "error": Level.ERROR.value,
    "exception": Level.ERROR.value,
    "critical": Level.CRITICAL.value,
    "fatal": Level.CRITICAL.value,
}


def level_name(level: int) -> str:
    """The lower-case name of a level number.

    The names of :class:`Level`; for other numbers a name registered with
    ``logging.addLevelName`` (uvicorn's ``trace`` for 5), else ``"level N"`` as logging says it.
    """
    name = LEVEL_NAMES.get(level)
    if name is not None:
        return name
    # Imported here: importing atrace does not load logging, and most numbers have a name.
    import logging

    return str(logging.getLevelName(level)).lower()


# The attribute that links a record to the first record of the same exception: the hex span id
# of that record's span ("" outside any span). A record without it is the one nearest the raise;
# error groups count those alone, and the terminal views do not show it.
ORIGIN = "atrace.exception.origin"

# Column order of a row, and of the ``records`` table (names are a contract, see DESIGN).
COLUMNS = (
    "ts",  # int nanoseconds since the epoch
    "kind",  # Kind
    "level",  # Level number, 0-100
    "trace_id",  # 32 hex digits, or None
    "span_id",  # signed 64-bit int, or None
    "parent_id",  # signed 64-bit int, or None
    "duration_ns",  # span rows: int nanoseconds
    "status",  # Status
    "service",
    "environment",
    "host",
    "pid",
    "name",  # span name, or the logger's
    "message",
    "attrs",  # JSON bytes, or None
    "error_type",
    "error_message",
    "stack_trace",
    "location",  # "file:line"
    # Added in schema 5 (a batch may leave them out: null):
    "span_kind",  # SpanKind, spans only
    "trace_state",  # the W3C tracestate of the span's context, or None when empty
    "trace_flags",  # the W3C trace flags (bit 0 sampled, bit 1 random), or None if unknown
    "status_message",  # the status description set with the status, apart from any error
    # Added in schema 6 (a batch may leave them out: null):
    "links",  # JSON bytes of a span's links ([{"trace_id", "span_id", ...}]), or None
    # JSON bytes of what OTLP sent that has no column of its own (_formats/otlp's docstring)
    "otlp",
    # Added in schema 7 (a batch may leave it out: null):
    "resource_id",  # the resource and instrumentation scope (``<schema>.resources``), or None
)
# Positions in a row, one per column: plain ints, because rows are read column by column in
# per-row loops (tail filters, console, OTLP), where an enum member would cost a lookup each.
(
    TS,
    KIND,
    LEVEL,
    TRACE_ID,
    SPAN_ID,
    PARENT_ID,
    DURATION_NS,
    STATUS,
    SERVICE,
    ENVIRONMENT,
    HOST,
    PID,
    NAME,
    MESSAGE,
    ATTRS,
    ERROR_TYPE,
    ERROR_MESSAGE,
    STACK_TRACE,
    LOCATION,
    SPAN_KIND,
    TRACE_STATE,
    TRACE_FLAGS,
    STATUS_MESSAGE,
    LINKS,
    OTLP,
    RESOURCE_ID,
) = range(len(COLUMNS))

if TYPE_CHECKING:
    Row = tuple[Any, ...]
else:
    Row = tuple  # one value per column, in COLUMNS order (typing stays off `import atrace`)


def row_dict(row: Row) -> dict[str, Any]:
    """A row as a dict keyed by column name; a row of the wrong width raises ``ValueError``."""
    return dict(zip(COLUMNS, row, strict=True))


def broken_row(
    ts: int | None,
    error_type: str,
    error_message: str,
    *,
    name: str,
    message: str,
    service: str,
    environment: str | None = None,
    host: str | None = None,
    pid: int | None = None,
) -> Row:
    """An error log row standing in for a record or row that could not be encoded or written.

    The failure lands, described, instead of failing its batch: ``error_type`` and
    ``error_message`` say what went wrong, ``message`` what was lost. Text must already be
    clean (no NUL, no lone surrogate); ``ts`` None means now.
    """
    row: list[Any] = [None] * len(COLUMNS)
    row[TS] = time.time_ns() if ts is None else ts
    row[KIND] = Kind.LOG.value
    row[LEVEL] = Level.ERROR.value
    row[STATUS] = Status.UNSET.value
    row[SERVICE] = service
    row[ENVIRONMENT] = environment
    row[HOST] = host
    row[PID] = pid
    row[NAME] = name
    row[MESSAGE] = message
    row[ERROR_TYPE] = error_type
    row[ERROR_MESSAGE] = error_message
    return tuple(row)


class Batch:
    """Rows to write together, under one id: a sink that stores the id stores the batch once."""

    __slots__ = ("id", "rows")

    def __init__(self, rows: list[Row], batch_id: uuid.UUID | None = None) -> None:
        self.rows = rows
        if batch_id is None:
            # uuid (and the platform module it loads) stays off `import atrace`: no batch is made
            # before the flusher runs.
            import uuid

            batch_id = uuid.uuid4()
        self.id = batch_id

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"<Batch {self.id} of {len(self.rows)}>"


class Frozen:
    """The base of the immutable values ``import atrace`` loads: Config, Metrics, LaneStats and
    SpanContext. The other values are frozen dataclasses; these four are not, because importing
    ``dataclasses`` (and the ``inspect`` it loads) and generating each class would cost about
    10 ms, half of ``import atrace``.

    A subclass lists its fields in ``__slots__``, annotates them in the order they are shown,
    and sets them in ``__init__`` with :meth:`_set`. It gets ``__repr__``, ``__eq__``,
    ``__hash__``, :meth:`replace` and :meth:`as_dict` from its fields and refuses assignment;
    ``_hidden`` names fields left out of all of them (derived, not arguments), ``_unhashed``
    fields left out of the hash only.
    """

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _hidden: frozenset[str] = frozenset()
    _unhashed: frozenset[str] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Fields in the order the class annotates them (slots are sorted; annotations are not).
        slots = {name for klass in cls.__mro__ for name in klass.__dict__.get("__slots__", ())}
        # Read directly: inspect.get_annotations would load inspect, which this class avoids.
        annotated = (k.__dict__.get("__annotations__", {}) for k in reversed(cls.__mro__))  # noqa: RUF063
        names = (name for group in annotated for name in group)
        cls._fields = tuple(n for n in names if n in slots and n not in cls._hidden)

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, in declaration order."""
        return {name: getattr(self, name) for name in self._fields}

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed, built (and validated) again."""
        return type(self)(**{**self.as_dict(), **changes})

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self._fields)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self._fields if n not in self._unhashed))

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt through __init__ (assignment is refused), so a copy is validated again and a
        # Config unpickled in another process has that process's host and pid.
        fields = {
            k: dict(v) if type(v) is MappingProxyType else v for k, v in self.as_dict().items()
        }
        return (_rebuild, (type(self), fields))


def _rebuild(cls: type[Frozen], fields: dict[str, Any]) -> Frozen:
    return cls(**fields)
