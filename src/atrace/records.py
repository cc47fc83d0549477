"""The in-memory record: a plain tuple built on the emit path, turned into a row by the flusher.

Records are tuples, not objects, because building a tuple is the cheapest thing the emit path can
do; the field positions below are the contract between emit, ring, flusher, encoders and sinks.
Nothing in a record is sanitised yet: that happens in :mod:`atrace.encode`, at flush time.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = (
    "ATTRS",
    "DURATION",
    "ERROR",
    "FIELDS",
    "KIND",
    "LEVEL",
    "LOCATION",
    "MESSAGE",
    "NAME",
    "PARENT_ID",
    "SERVICE",
    "SPAN_ID",
    "STATUS",
    "TRACE_ID",
    "TS",
    "Kind",
    "Record",
    "Status",
)

Record = tuple[Any, ...]


class Kind(enum.IntEnum):
    """What a row is; stored in the ``kind`` column."""

    LOG = 0
    SPAN_START = 1
    SPAN_END = 2
    SPAN = 3  # a complete span in one row: it ended before its start was flushed


class Status(enum.IntEnum):
    """A span's outcome; stored in the ``status`` column."""

    UNSET = 0
    OK = 1
    ERROR = 2


# Field positions. ERROR holds whatever the emit path had at hand (an exception, a stack summary,
# or a (type, message, stack) triple of strings); the flusher turns it into the three error columns.
KIND = 0  # int, a Kind value
TS = 1  # int, nanoseconds since the epoch (span: start time)
LEVEL = 2  # int, logging level number
TRACE_ID = 3  # str, 32 lowercase hex digits, or None for a log outside any trace
SPAN_ID = 4  # int, signed 64-bit (span: itself; log: the span it was emitted in) or None
PARENT_ID = 5  # int, signed 64-bit, or None
DURATION = 6  # int nanoseconds, or None
STATUS = 7  # int, a Status value
SERVICE = 8  # str or None (None: the configured service)
NAME = 9  # str: span name, or logger / module name for a log
MESSAGE = 10  # str or None (any object for a log: str() at flush)
ATTRS = 11  # dict or None
ERROR = 12  # None | BaseException | traceback.StackSummary | tuple[str|None, str|None, str|None]
LOCATION = 13  # str "file:line" or None

FIELDS = (
    "kind",
    "ts",
    "level",
    "trace_id",
    "span_id",
    "parent_id",
    "duration_ns",
    "status",
    "service",
    "name",
    "message",
    "attrs",
    "error",
    "location",
)
