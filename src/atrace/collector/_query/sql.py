"""What the query statements share: numbered parameters, time bounds in, timestamps out."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..._postgres.schema import TEXT_VECTOR
from ..._records import Kind, Level, Status
from ...errors import QueryError
from .params import DEFAULT_RANGE_NS, datetime_ns

# Conditions on the stored numbers, named once. ERROR_ROWS is word for word the predicate of the
# partial index records_errors_idx (schema.py), so that the planner may use that index.
ENDED_SPANS = f"kind IN ({Kind.SPAN_END:d}, {Kind.SPAN:d})"
FAILED = f"status = {Status.ERROR:d}"
ERROR_ROWS = f"(level >= {Level.ERROR:d} OR {FAILED})"

# What ``q`` searches: the words of the name and message (TEXT_VECTOR, which the opt-in index
# covers), of the error type and message, and of every string, number and boolean among the
# attribute values (not their keys). Every word of ``q`` must appear, in any of these fields.
SEARCH_VECTOR = (
    f"({TEXT_VECTOR} || to_tsvector('simple'::regconfig, "
    "coalesce(error_type, '') || ' ' || coalesce(error_message, '')) || "
    "jsonb_to_tsvector('simple'::regconfig, coalesce(attrs, '{}'::jsonb), "
    """'["string", "numeric", "boolean"]'::jsonb))"""
)


def tsquery(placeholder: str) -> str:
    """The words of ``q`` as a query, every one required."""
    return f"plainto_tsquery('simple', {placeholder})"


def ts_sql(n: int) -> str:
    # A bound travels as integer microseconds and becomes a timestamptz in SQL, so the same
    # statement works whether or not the connection carries atrace's timestamptz codec.
    return f"(timestamptz 'epoch' + ${n}::bigint * interval '1 microsecond')"


def as_ns(value: Any) -> int:
    # With atrace's codec a timestamptz arrives as int ns; without it, as a datetime.
    if isinstance(value, dt.datetime):
        return datetime_ns(value)
    return int(value)


class Args:
    """Positional parameters of one statement; ``add`` returns the placeholder."""

    def __init__(self, *initial: Any) -> None:
        self.values = list(initial)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"

    def ts(self, ns: int) -> str:
        self.values.append(ns // 1000)
        return ts_sql(len(self.values))


def time_range(since: int | None, until: int | None, now: int) -> tuple[int, int]:
    """``[since, until)`` with the defaults: until now, since 24 h before until."""
    until = now if until is None else until
    since = until - DEFAULT_RANGE_NS if since is None else since
    if until <= since:
        raise QueryError("until", until, "must be after since")
    return since, until
