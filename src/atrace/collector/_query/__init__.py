"""Reading records back: search, one trace as a tree, stats and error groups, for one project.

Every function takes an asyncpg connection or pool (with or without atrace's codecs), the schema
and the project; the project is always in the WHERE clause, and every query is bounded by a
limit and, except a single trace, a time range. Times go in and come out as integer nanoseconds
since the epoch (PostgreSQL keeps microseconds); ids come out as hex (32 digits for a trace,
16 for a span).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..._emit.ids import format_span_id
from ..._postgres.schema import TEXT_VECTOR
from ..._records import (
    ATTRS,
    COLUMNS,
    DURATION_NS,
    ENVIRONMENT,
    ERROR_MESSAGE,
    ERROR_TYPE,
    HOST,
    KIND,
    KIND_NAMES,
    LEVEL,
    LINKS,
    LOCATION,
    MESSAGE,
    NAME,
    OTLP,
    PARENT_ID,
    PID,
    RESOURCE_ID,
    SERVICE,
    SPAN_ID,
    SPAN_KIND,
    SPAN_KIND_NAMES,
    STACK_TRACE,
    STATUS,
    STATUS_MESSAGE,
    TRACE_FLAGS,
    TRACE_ID,
    TRACE_STATE,
    TS,
    Level,
)
from .error_groups import errors, group_errors
from .params import (
    DEFAULT_ERROR_SCAN,
    DEFAULT_LIMIT,
    DEFAULT_RANGE_NS,
    MAX_LIMIT,
    NS_PER_S,
    Filters,
    attr_alternatives,
    encode_cursor,
    errors_params,
    jsonb_value,
    parse_filters,
    parse_level,
    parse_time,
    parse_trace_param,
    refuse,
    spans_params,
    stats_params,
    trace_hex,
)

# Used only where they now live, but public here before and still importable from here.
from .sql import (
    ENDED_SPANS,
    ERROR_ROWS,
    FAILED,
    SEARCH_VECTOR,
    Args,
    as_ns,
    time_range,
    ts_sql,
    tsquery,
)
from .tree import build_tree

__all__ = (
    "DEFAULT_ERROR_SCAN",
    "DEFAULT_LIMIT",
    "DEFAULT_RANGE_NS",
    "INTERVALS",
    "MAX_LIMIT",
    "MAX_RESPONSE_BYTES",
    "MAX_TRACE_ROWS",
    "Filters",
    "build_tree",
    "errors",
    "errors_params",
    "group_errors",
    "parse_filters",
    "parse_level",
    "parse_time",
    "record_json",
    "search",
    "spans",
    "spans_params",
    "stats",
    "stats_params",
    "trace",
)

# Parsing, the tree and the error groups live in private modules; what they export presents
# itself as this module's, which is where it is imported from (reprs, pickles and documentation).
for _value in (
    Filters,
    build_tree,
    errors,
    errors_params,
    group_errors,
    parse_filters,
    parse_level,
    parse_time,
    spans_params,
    stats_params,
):
    _value.__module__ = __name__
del _value

# A trace longer than this is returned cut, and says so.
MAX_TRACE_ROWS = 10_000
# The most bytes of records one answer carries (counted from the stored text and attributes): a
# search page stops early with a cursor to the rest, a trace is cut and says so.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# What a record's JSON adds to its text fields: names, ids, numbers, punctuation.
_RECORD_OVERHEAD = 400
MAX_BUCKETS = 10_000
# About the fewest bytes one bucket of a stats answer takes as JSON, its service aside.
_BUCKET_OVERHEAD = 64
INTERVALS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}
# COLUMNS, then the nanoseconds of ts below its microsecond (schema 5), which record_json adds.
_SELECT = ", ".join(COLUMNS) + ", ts_frac"
_FRAC = len(COLUMNS)


# -- shaping ----------------------------------------------------------------------------------


def record_json(row: Sequence[Any]) -> dict[str, Any]:
    """One row (COLUMNS order, as stored or as published) as the API's JSON object.

    A stored row may carry ``ts_frac`` after COLUMNS (the nanoseconds timestamptz cannot
    hold); a published row's ``ts`` is exact already."""
    kind = row[KIND]
    frac = row[_FRAC] if len(row) > _FRAC else None
    span_kind = row[SPAN_KIND]
    return {
        "ts": as_ns(row[TS]) + (frac or 0),
        "kind": KIND_NAMES.get(kind, str(kind)),
        "level": row[LEVEL],
        "trace_id": trace_hex(row[TRACE_ID]),
        "span_id": None if row[SPAN_ID] is None else format_span_id(row[SPAN_ID]),
        "parent_id": None if row[PARENT_ID] is None else format_span_id(row[PARENT_ID]),
        "duration_ns": row[DURATION_NS],
        "status": row[STATUS],
        "service": row[SERVICE],
        "environment": row[ENVIRONMENT],
        "host": row[HOST],
        "pid": row[PID],
        "name": row[NAME],
        "message": row[MESSAGE],
        "attrs": jsonb_value(row[ATTRS]) or {},
        "error_type": row[ERROR_TYPE],
        "error_message": row[ERROR_MESSAGE],
        "stack_trace": row[STACK_TRACE],
        "location": row[LOCATION],
        "span_kind": None if span_kind is None else SPAN_KIND_NAMES.get(span_kind, str(span_kind)),
        "trace_state": row[TRACE_STATE],
        "trace_flags": row[TRACE_FLAGS],
        "status_message": row[STATUS_MESSAGE],
        "links": jsonb_value(row[LINKS]),
        "otlp": jsonb_value(row[OTLP]),
        "resource_id": None if row[RESOURCE_ID] is None else format_span_id(row[RESOURCE_ID]),
    }


async def resources_of(conn: Any, schema: str, project: str, rows: Sequence[Any]) -> dict[str, Any]:
    """The resource and scope documents the rows name, by ``resource_id`` as the answers give
    it (16 hex digits)."""
    ids = {row[RESOURCE_ID] for row in rows if row[RESOURCE_ID] is not None}
    if not ids:
        return {}
    found = await conn.fetch(
        f"SELECT resource_id, doc FROM {schema}.resources "
        "WHERE project = $1 AND resource_id = ANY($2::bigint[])",
        project,
        sorted(ids),
    )
    return {format_span_id(r["resource_id"]): jsonb_value(r["doc"]) for r in found}


# -- queries ----------------------------------------------------------------------------------


def _search_sql(schema: str, f: Filters) -> tuple[str, list[Any]]:
    a = Args(f.project)
    where = ["project = $1"]
    if f.since is not None:
        where.append(f"ts >= {a.ts(f.since)}")
    if f.until is not None:
        where.append(f"ts < {a.ts(f.until)}")
    if f.service is not None:
        where.append(f"service = {a.add(f.service)}")
    if f.min_level is not None:
        where.append(f"level >= {a.add(f.min_level)}::smallint")
        if f.min_level >= Level.ERROR:
            # Written out as the partial index's predicate, so the planner may use that index.
            where.append(ERROR_ROWS)
    if f.kinds is not None:
        where.append(f"kind = ANY({a.add(list(f.kinds))}::smallint[])")
    if f.span_kind is not None:
        where.append(f"span_kind = {a.add(f.span_kind)}::smallint")
    words = tsquery(a.add(f.q)) if f.q else None
    if f.attrs:
        where.extend(_attrs_sql(a, f.attrs))
    if f.trace_id is not None:
        where.append(f"trace_id = {a.add(uuid.UUID(f.trace_id))}")
    if f.cursor is not None:
        ts_us, rid = f.cursor
        bound = a.ts(ts_us * 1000)
        # Keyset: strictly after the last row of the previous page in (ts, ctid) order; ctid
        # breaks ties between equal timestamps (rows are never updated, so it is stable).
        where.append(f"ts <= {bound} AND (ts < {bound} OR ctid < {a.add(rid)}::text::tid)")
    limit = a.add(f.limit + 1)
    table = f"{schema}.records"
    if words is None:
        sql = (
            f"SELECT {_SELECT}, ctid::text AS rid FROM {table} "
            f"WHERE {' AND '.join(where)} ORDER BY ts DESC, ctid DESC LIMIT {limit}"
        )
        return sql, a.values
    # Which way to read is settled when the statement runs, by whether the opt-in full-text
    # index exists: a condition without columns is a one-time filter, so a branch it turns
    # off is never executed. Without the index, one scan of the time range matches every
    # field. With it, the rows whose name or message hold every word come through the index
    # (the expression is the index's, word for word), and the rows that need the other fields
    # from the time range, as without the index. One page of each branch, merged.
    indexed = f"(SELECT to_regclass({a.add(f'{schema}.records_text_idx')}::text) IS NOT NULL)"
    both = " AND ".join(where)
    each = f"SELECT {_SELECT}, ctid AS c, ctid::text AS rid FROM {table} WHERE {both}"
    order = f"ORDER BY ts DESC, ctid DESC LIMIT {limit}"
    sql = (
        f"SELECT {_SELECT}, rid FROM ("
        f"({each} AND NOT {indexed} AND {SEARCH_VECTOR} @@ {words} {order}) UNION ALL "
        f"({each} AND {indexed} AND {TEXT_VECTOR} @@ {words} {order}) UNION ALL "
        f"({each} AND {indexed} AND NOT ({TEXT_VECTOR} @@ {words}) "
        f"AND {SEARCH_VECTOR} @@ {words} {order})"
        f") AS found ORDER BY ts DESC, c DESC LIMIT {limit}"
    )
    return sql, a.values


def _attrs_sql(a: Args, attrs: Mapping[str, Any]) -> list[str]:
    # Values with one form go into one containment test; a number or boolean matches either of
    # its forms (42 or "42"), so it gets a test of its own.
    exact: dict[str, Any] = {}
    out: list[str] = []
    for key, value in attrs.items():
        forms = attr_alternatives(value)
        if len(forms) == 1:
            exact[key] = value
            continue
        tests = [f"attrs @> {a.add(orjson.dumps({key: v}).decode())}::text::jsonb" for v in forms]
        out.append(f"({' OR '.join(tests)})")
    if exact:
        out.insert(0, f"attrs @> {a.add(orjson.dumps(exact).decode())}::text::jsonb")
    return out


async def search(
    conn: Any, schema: str, filters: Filters, *, max_bytes: int = MAX_RESPONSE_BYTES
) -> dict[str, Any]:
    """Newest first, at most ``filters.limit`` records and about ``max_bytes`` of them (at least
    one): ``{"records": [...], "next_cursor": str | None}``, the cursor naming the next page when
    there are more."""
    sql, args = _search_sql(schema, filters)
    rows = await conn.fetch(sql, *args)
    more = len(rows) > filters.limit
    rows = rows[: filters.limit]
    kept = _within(rows, max_bytes)
    if kept < len(rows):
        rows, more = rows[:kept], True
    cursor = None
    if more and rows:
        last = rows[-1]
        cursor = encode_cursor(as_ns(last["ts"]) // 1000, last["rid"])
    return {
        "records": [record_json(tuple(r)[:-1]) for r in rows],
        "next_cursor": cursor,
        "resources": await resources_of(conn, schema, filters.project, rows),
    }


# The columns whose size varies: what an answer's size is counted from.
_SIZED = (NAME, MESSAGE, ATTRS, ERROR_TYPE, ERROR_MESSAGE, STACK_TRACE, LOCATION, LINKS, OTLP)


def _within(rows: Sequence[Any], max_bytes: int) -> int:
    """How many of ``rows`` (at least one) fit in about ``max_bytes`` of answer."""
    total = 0
    for i, row in enumerate(rows):
        size = _RECORD_OVERHEAD
        for column in _SIZED:
            value = row[column]
            if value is not None:
                size += len(value)
        total += size
        if total > max_bytes and i:
            return i
    return len(rows)


def _trace_sql(schema: str) -> str:
    return (
        f"SELECT {_SELECT} FROM {schema}.records WHERE project = $1 AND trace_id = $2 "
        "ORDER BY ts, kind LIMIT $3"
    )


async def trace(
    conn: Any,
    schema: str,
    project: str,
    trace_id: str,
    *,
    now: int | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> dict[str, Any] | None:
    """The trace as a tree (see :func:`build_tree`), or None when the project has no such trace.

    ``trace_id`` that is not 32 hex digits raises :class:`QueryError`.
    """
    tid = parse_trace_param(trace_id)
    rows = await conn.fetch(_trace_sql(schema), project, uuid.UUID(tid), MAX_TRACE_ROWS + 1)
    if not rows:
        return None
    truncated = len(rows) > MAX_TRACE_ROWS
    rows = rows[:MAX_TRACE_ROWS]
    kept = _within(rows, max_bytes)
    truncated = truncated or kept < len(rows)
    records = [record_json(tuple(r)) for r in rows[:kept]]
    tree = build_tree(records, now=time.time_ns() if now is None else now)
    tree["trace_id"] = tid
    tree["truncated"] = truncated
    tree["resources"] = await resources_of(conn, schema, project, rows[:kept])
    return tree


def _interval_seconds(value: str | int | None) -> int:
    if value is None or value == "":
        return 300
    if isinstance(value, str) and value in INTERVALS:
        return INTERVALS[value]
    raise refuse("interval", value, f"expected one of {', '.join(INTERVALS)}")


def _stats_sql(schema: str, service: bool) -> str:
    where = f"project = $1 AND ts >= {ts_sql(3)} AND ts < {ts_sql(4)}"
    if service:
        where += " AND service = $5"
    return (
        f"SELECT date_bin($2::text::interval, ts, timestamptz 'epoch') AS bucket, service, level, "
        f"count(*) AS n FROM {schema}.records WHERE {where} "
        f"GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LIMIT ${6 if service else 5}"
    )


def _durations_sql(schema: str, service: bool) -> str:
    where = f"project = $1 AND ts >= {ts_sql(2)} AND ts < {ts_sql(3)} AND {ENDED_SPANS}"
    if service:
        where += " AND service = $4"
    return (
        "SELECT service, name, count(*) AS n, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ns) AS p50, "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ns) AS p95 "
        f"FROM {schema}.records WHERE {where} AND duration_ns IS NOT NULL "
        "GROUP BY service, name ORDER BY n DESC, service, name LIMIT 200"
    )


async def stats(
    conn: Any,
    schema: str,
    project: str,
    *,
    interval: str | None = None,
    since: int | None = None,
    until: int | None = None,
    service: str | None = None,
    durations: bool = False,
    now: int | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> dict[str, Any]:
    """Record counts per ``interval`` bucket, service and level over ``[since, until)`` (default:
    the last 24 h), and with ``durations`` the p50/p95 span duration per service and name.

    The buckets take about ``max_bytes`` of answer at most (many services over many intervals
    could take any amount): past it the earliest are kept and ``truncated`` is true."""
    now = time.time_ns() if now is None else now
    step = _interval_seconds(interval)
    since, until = time_range(since, until, now)
    if (until - since) // (step * NS_PER_S) > MAX_BUCKETS:
        raise refuse("interval", interval, f"more than {MAX_BUCKETS} buckets in the range")
    args: list[Any] = [project, f"{step} seconds", since // 1000, until // 1000]
    if service:
        args.append(service)
    args.append(max_bytes // _BUCKET_OVERHEAD + 1)
    rows = await conn.fetch(_stats_sql(schema, bool(service)), *args)
    kept, total = len(rows), 0
    for i, r in enumerate(rows):
        total += _BUCKET_OVERHEAD + len(r["service"])
        if total > max_bytes:
            kept = i
            break
    truncated = kept < len(rows)
    rows = rows[:kept]
    out: dict[str, Any] = {
        "interval": f"{step}s" if interval is None else interval,
        "interval_ns": step * NS_PER_S,
        "since": since,
        "until": until,
        "buckets": [
            {
                "ts": as_ns(r["bucket"]),
                "service": r["service"],
                "level": r["level"],
                "count": r["n"],
            }
            for r in rows
        ],
        "truncated": truncated,
    }
    if durations:
        dargs: list[Any] = [project, since // 1000, until // 1000]
        if service:
            dargs.append(service)
        drows = await conn.fetch(_durations_sql(schema, bool(service)), *dargs)
        out["durations"] = [
            {
                "service": r["service"],
                "name": r["name"],
                "count": r["n"],
                "p50_ns": round(r["p50"]),
                "p95_ns": round(r["p95"]),
            }
            for r in drows
        ]
    return out


def _spans_sql(
    schema: str,
    project: str,
    since: int,
    until: int,
    service: str | None,
    slow_ns: int | None,
    errors_only: bool = False,
) -> tuple[str, list[Any]]:
    a = Args(project)
    where = [f"project = $1 AND ts >= {a.ts(since)} AND ts < {a.ts(until)} AND {ENDED_SPANS}"]
    if service:
        where.append(f"service = {a.add(service)}")
    if slow_ns is not None:
        where.append(f"duration_ns >= {a.add(int(slow_ns))}")
    having = f"HAVING count(*) FILTER (WHERE {FAILED}) > 0 " if errors_only else ""
    sql = (
        f"SELECT service, name, count(*) AS n, count(*) FILTER (WHERE {FAILED}) AS failed, "
        "max(ts) AS last_ts, (array_agg(status ORDER BY ts DESC))[1] AS last_status, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ns) AS p50, "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ns) AS p95 "
        f"FROM {schema}.records WHERE {' AND '.join(where)} "
        f"GROUP BY service, name {having}ORDER BY n DESC, service, name"
    )
    return sql, a.values


async def spans(
    conn: Any,
    schema: str,
    project: str,
    *,
    since: int | None = None,
    until: int | None = None,
    service: str | None = None,
    slow_ns: int | None = None,
    errors_only: bool = False,
    limit: int = DEFAULT_LIMIT,
    now: int | None = None,
) -> dict[str, Any]:
    """Ended spans per service and name over ``[since, until)`` (default: the last 24 h): count,
    failed, last seen and its status, p50/p95 duration. ``slow_ns`` keeps only spans that took
    at least that long; ``errors_only`` only names with a failed span."""
    now = time.time_ns() if now is None else now
    since, until = time_range(since, until, now)
    sql, args = _spans_sql(schema, project, since, until, service, slow_ns, errors_only)
    sql += f" LIMIT {int(limit):d}"
    rows = await conn.fetch(sql, *args)
    out = [
        {
            "service": r["service"],
            "name": r["name"],
            "count": r["n"],
            "errors": r["failed"],
            "last_seen": as_ns(r["last_ts"]),
            "last_status": r["last_status"],
            "p50_ns": round(r["p50"] or 0),
            "p95_ns": round(r["p95"] or 0),
        }
        for r in rows
    ]
    return {"since": since, "until": until, "spans": out}
