"""Reading records back: search, one trace as a tree, stats and error groups, for one project.

Every function takes an asyncpg connection or pool (with or without atrace's codecs), the schema
and the project; the project is always in the WHERE clause, and every query is bounded by a
limit and, except a single trace, a time range. Times go in and come out as integer nanoseconds
since the epoch (PostgreSQL keeps microseconds); ids come out as hex (32 digits for a trace,
16 for a span).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .._ids import format_span_id, parse_trace_id
from ..encode import COLUMNS
from ..errors import ConfigError
from ..fingerprint import fingerprint
from ..schema import TEXT_VECTOR

__all__ = (
    "DEFAULT_ERROR_SCAN",
    "DEFAULT_LIMIT",
    "DEFAULT_RANGE_NS",
    "INTERVALS",
    "KIND_NAMES",
    "MAX_LIMIT",
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

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Search, stats and errors look this far back unless told otherwise.
DEFAULT_RANGE_NS = 24 * 3600 * 1_000_000_000
# A trace longer than this is returned cut, and says so.
MAX_TRACE_ROWS = 10_000
# Error groups are computed over at most this many of the newest error rows of the range.
DEFAULT_ERROR_SCAN = 10_000
MAX_ERROR_SCAN = 100_000
MAX_BUCKETS = 10_000
MAX_ATTR_FILTERS = 20
INTERVALS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}
KIND_NAMES = ("log", "span_start", "span_end", "span")
_KIND_FILTERS = {
    "log": (0,),
    "span": (1, 2, 3),
    "span_start": (1,),
    "span_end": (2,),
    "0": (0,),
    "1": (1,),
    "2": (2,),
    "3": (3,),
}
LEVELS = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "warn": 30,
    "error": 40,
    "critical": 50,
    "fatal": 50,
}
_NS = 1_000_000_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(\d{1,9})\s*([smhdw])", re.I)
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?",
    re.I,
)
_CTID = re.compile(r"\(\d{1,10},\d{1,5}\)")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_SELECT = ", ".join(COLUMNS)


def _ts_sql(n: int) -> str:
    # A bound travels as integer microseconds and becomes a timestamptz in SQL, so the same
    # statement works whether or not the connection carries atrace's timestamptz codec.
    return f"(timestamptz 'epoch' + ${n}::bigint * interval '1 microsecond')"


# -- parsing ----------------------------------------------------------------------------------


def parse_time(value: str | int | dt.datetime, *, now: int, field: str = "time") -> int:
    """Nanoseconds since the epoch from ISO 8601, a relative age (``15m``, ``2h``, ``1d``: that
    long before ``now``), ``now``, integer nanoseconds, or a datetime (naive means UTC)."""
    if isinstance(value, dt.datetime):
        return _datetime_ns(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() == "now":
        return now
    if text.isdigit():
        return int(text)
    m = _RELATIVE.fullmatch(text)
    if m is not None:
        return now - int(m[1]) * _UNITS[m[2].lower()] * _NS
    m = _ISO.fullmatch(text)
    if m is not None:
        try:
            return _iso_ns(m)
        except ValueError:
            pass
    raise ConfigError(
        field, value, "expected ISO 8601, a relative age like 15m, 2h or 1d, or integer ns"
    )


def _iso_ns(m: re.Match[str]) -> int:
    year, month, day, hour, minute, second = (int(m[i] or 0) for i in range(1, 7))
    zone = m[8]
    tz = dt.timezone.utc
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        tz = dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0)))
    base = dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)
    fraction = int((m[7] or "").ljust(9, "0"))
    return _datetime_ns(base) + fraction


def _datetime_ns(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return (value - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def parse_level(value: str | int) -> int:
    """A level name (``debug`` … ``critical``, ``warn``, ``fatal``) or number, as a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in LEVELS:
        return LEVELS[text]
    if text.isdigit() and int(text) <= 100:
        return int(text)
    raise ConfigError("level", value, "expected debug, info, warning, error, critical or 0-100")


def _parse_limit(value: str | int | None, default: int, maximum: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise ConfigError(name, value, "expected an integer") from None
    if not 1 <= limit <= maximum:
        raise ConfigError(name, value, f"expected 1 to {maximum}")
    return limit


def _parse_trace_id(value: str) -> str:
    trace_id = parse_trace_id(value.strip())
    if trace_id is None:
        raise ConfigError("trace_id", value, "expected 32 hex digits (not all zero)")
    return trace_id


def _attr_value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


@dataclass(frozen=True)
class Filters:
    """What to select, parsed and validated; ``since``/``until`` are ns (``until`` exclusive)."""

    project: str
    since: int | None = None
    until: int | None = None
    service: str | None = None
    min_level: int | None = None
    kinds: tuple[int, ...] | None = None
    q: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    trace_id: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: tuple[int, str] | None = None

    def matches(self, row: Sequence[Any], attrs: Any = None) -> bool:
        """Whether a row (COLUMNS order) passes the filters, in memory (the live tail).

        ``q`` is a case-insensitive substring of the name and message here; ``attrs`` is the
        row's decoded attributes when the caller already has them.
        """
        if self.service is not None and row[8] != self.service:
            return False
        if self.min_level is not None and row[2] < self.min_level:
            return False
        if self.kinds is not None and row[1] not in self.kinds:
            return False
        if self.trace_id is not None and _trace_hex(row[3]) != self.trace_id:
            return False
        if self.q:
            text = f"{row[12] or ''} {row[13] or ''}".lower()
            if self.q.lower() not in text:
                return False
        if self.attrs:
            have = attrs if attrs is not None else _json(row[14])
            if not isinstance(have, dict) or not _contains(have, self.attrs):
                return False
        return True


def _contains(have: Any, want: Any) -> bool:
    # jsonb's @>: objects by key, arrays by element, scalars by equal value (true is not 1).
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            k in have and _contains(have[k], v) for k, v in want.items()
        )
    if isinstance(want, list):
        if not isinstance(have, list):
            return False
        return all(any(_contains(h, w) for h in have) for w in want)
    if isinstance(want, bool) or isinstance(have, bool):
        return type(want) is type(have) and want == have
    return bool(have == want)


def parse_filters(
    params: Iterable[tuple[str, str]] | Mapping[str, str],
    *,
    project: str,
    now: int | None = None,
    default_range_ns: int | None = DEFAULT_RANGE_NS,
) -> Filters:
    """Filters from query parameters: ``service``, ``level``, ``kind``, ``since``, ``until``,
    ``q``, ``attr.KEY=VALUE`` (VALUE as JSON when it parses, else a string), ``trace_id``,
    ``limit``, ``cursor``. Unknown parameters are refused, so a typo never widens a query."""
    now = time.time_ns() if now is None else now
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    seen: dict[str, str] = {}
    attrs: dict[str, Any] = {}
    for key, value in items:
        if key.startswith("attr."):
            name = key[5:]
            if not name:
                raise ConfigError(key, value, "an attribute filter needs a key: attr.KEY=VALUE")
            attrs[name] = _attr_value(value)
        elif key in _FILTER_KEYS:
            seen[key] = value
        else:
            raise ConfigError(key, value, f"unknown parameter; expected one of {_FILTER_NAMES}")
    if len(attrs) > MAX_ATTR_FILTERS:
        raise ConfigError("attr", len(attrs), f"at most {MAX_ATTR_FILTERS} attribute filters")
    since = seen.get("since")
    until = seen.get("until")
    kind = seen.get("kind")
    if kind is not None and kind.strip().lower() not in _KIND_FILTERS:
        raise ConfigError("kind", kind, "expected log, span, span_start or span_end")
    q = (seen.get("q") or "").strip()
    level = seen.get("level")
    service = seen.get("service")
    trace_id = seen.get("trace_id")
    cursor = seen.get("cursor")
    until_ns = parse_time(until, now=now, field="until") if until else None
    if since:
        since_ns: int | None = parse_time(since, now=now, field="since")
    elif default_range_ns is not None:
        # The default window ends where the range does: "until=2h" alone means 26 h to 2 h ago.
        since_ns = (now if until_ns is None else until_ns) - default_range_ns
    else:
        since_ns = None
    return Filters(
        project=project,
        since=since_ns,
        until=until_ns,
        service=service or None,
        min_level=parse_level(level) if level else None,
        kinds=_KIND_FILTERS[kind.strip().lower()] if kind else None,
        q=q or None,
        attrs=attrs,
        trace_id=_parse_trace_id(trace_id) if trace_id else None,
        limit=_parse_limit(seen.get("limit"), DEFAULT_LIMIT, MAX_LIMIT, "limit"),
        cursor=_decode_cursor(cursor) if cursor else None,
    )


_FILTER_KEYS = frozenset(
    ("service", "level", "kind", "since", "until", "q", "trace_id", "limit", "cursor")
)
_FILTER_NAMES = ", ".join(sorted(_FILTER_KEYS)) + ", attr.KEY"


def _encode_cursor(ts_us: int, rid: str) -> str:
    raw = orjson.dumps([ts_us, rid])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(text: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        ts_us, rid = orjson.loads(raw)
        if type(ts_us) is int and isinstance(rid, str) and _CTID.fullmatch(rid):
            return ts_us, rid
    except (ValueError, TypeError):
        pass
    raise ConfigError("cursor", text, "not a cursor this API returned")


# -- shaping ----------------------------------------------------------------------------------


def _ns(value: Any) -> int:
    # With atrace's codec a timestamptz arrives as int ns; without it, as a datetime.
    if isinstance(value, dt.datetime):
        return _datetime_ns(value)
    return int(value)


def _trace_hex(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return value.hex
    return str(value).replace("-", "").lower()


def _json(value: Any) -> Any:
    # jsonb arrives as bytes (atrace's codec), str (asyncpg's default) or already decoded.
    if value is None or isinstance(value, (dict, list)):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def record_json(row: Sequence[Any]) -> dict[str, Any]:
    """One row (COLUMNS order, as stored or as published) as the API's JSON object."""
    kind = row[1]
    return {
        "ts": _ns(row[0]),
        "kind": KIND_NAMES[kind] if 0 <= kind < len(KIND_NAMES) else str(kind),
        "level": row[2],
        "trace_id": _trace_hex(row[3]),
        "span_id": None if row[4] is None else format_span_id(row[4]),
        "parent_id": None if row[5] is None else format_span_id(row[5]),
        "duration_ns": row[6],
        "status": row[7],
        "service": row[8],
        "environment": row[9],
        "host": row[10],
        "pid": row[11],
        "name": row[12],
        "message": row[13],
        "attrs": _json(row[14]) or {},
        "error_type": row[15],
        "error_message": row[16],
        "stack_trace": row[17],
        "location": row[18],
    }


# -- the trace tree -------------------------------------------------------------------------

# Deeper spans hang from the root (marked): JSON encoders refuse very deep nesting, and no
# reader follows a tree 100 levels down.
MAX_DEPTH = 100
_SPAN_FIELDS = (
    "span_id",
    "parent_id",
    "name",
    "service",
    "environment",
    "host",
    "pid",
    "message",
    "attrs",
    "error_type",
    "error_message",
    "stack_trace",
    "location",
)


def _span_node(rec: dict[str, Any]) -> dict[str, Any]:
    node = {k: rec[k] for k in _SPAN_FIELDS}
    node.update(
        type="span",
        start=rec["ts"],
        end=None,
        duration_ns=None,
        elapsed_ns=None,
        status=rec["status"],
        level=rec["level"],
        in_flight=True,
        orphan=False,
        logs=[],
        children=[],
    )
    return node


def _close_span(node: dict[str, Any], rec: dict[str, Any]) -> None:
    # The end row (kind 2) or a complete span (kind 3) carries the final status, attributes,
    # error and duration.
    for k in _SPAN_FIELDS:
        if rec[k] is not None and rec[k] != {}:
            node[k] = rec[k]
    duration = rec["duration_ns"] or 0
    node.update(
        start=rec["ts"],
        duration_ns=duration,
        end=rec["ts"] + duration,
        status=rec["status"],
        level=rec["level"],
        in_flight=False,
    )


def build_tree(records: Sequence[dict[str, Any]], *, now: int) -> dict[str, Any]:
    """A trace's records (as :func:`record_json` gives them, oldest first) as a tree.

    A span start (kind 1) and its end (kind 2) become one span; a start without its end is
    ``in_flight``, with ``elapsed_ns`` up to ``now``. Logs hang under their span (``logs``),
    spans under their parent (``children``), both oldest first. A span whose parent is not in
    the data, a log whose span is not, and a span in a parent cycle sit at the root with
    ``orphan`` set.
    """
    spans: dict[str, dict[str, Any]] = {}
    logs: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        kind = rec["kind"]
        if kind == "log":
            log = dict(rec)
            log.update(type="log", orphan=False)
            logs.append(log)
            continue
        key = rec["span_id"] or f"row{i}"
        node = spans.get(key)
        if kind == "span_start":
            if node is None:
                spans[key] = _span_node(rec)
            continue
        if node is None:
            node = spans[key] = _span_node(rec)
        _close_span(node, rec)
    parents = _parents(spans)
    roots: list[dict[str, Any]] = []
    for key, node in spans.items():
        parent = parents.get(key)
        if parent is None:
            node["orphan"] = node["orphan"] or node["parent_id"] is not None
            roots.append(node)
        else:
            spans[parent]["children"].append(node)
    root_logs: list[dict[str, Any]] = []
    for log in logs:
        owner = spans.get(log["span_id"]) if log["span_id"] else None
        if owner is None:
            log["orphan"] = log["span_id"] is not None
            root_logs.append(log)
        else:
            owner["logs"].append(log)
    for node in spans.values():
        node["children"].sort(key=_start)
        if node["in_flight"]:
            node["elapsed_ns"] = max(0, now - node["start"])
    roots.sort(key=_start)
    roots.extend(_flatten_deep(roots))
    return _summary(records, spans, roots, root_logs, now)


def _start(node: dict[str, Any]) -> int:
    return int(node["start"])


def _parents(spans: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each span's parent key when the parent is present, with every cycle broken once."""
    parents = {
        k: n["parent_id"]
        for k, n in spans.items()
        if n["parent_id"] is not None and n["parent_id"] in spans and n["parent_id"] != k
    }
    for k, n in spans.items():
        if n["parent_id"] == k:
            n["orphan"] = True
    state: dict[str, int] = {}  # absent: not seen, 1: on the current path, 2: settled
    for start in spans:
        path = []
        cur: str | None = start
        while cur is not None and cur not in state:
            state[cur] = 1
            path.append(cur)
            cur = parents.get(cur)
        if cur is not None and state[cur] == 1:
            # A parent cycle: cut it at the span where the walk came back round.
            del parents[cur]
            spans[cur]["orphan"] = True
        for k in path:
            state[k] = 2
    return parents


def _flatten_deep(roots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Detach spans deeper than MAX_DEPTH; they are returned to hang from the root, marked."""
    moved: list[dict[str, Any]] = []
    stack = [(node, 0) for node in roots]
    while stack:
        node, depth = stack.pop()
        kept = []
        for child in node["children"]:
            if depth + 1 >= MAX_DEPTH:
                child["too_deep"] = True
                moved.append(child)
                stack.append((child, 0))
            else:
                kept.append(child)
                stack.append((child, depth + 1))
        node["children"] = kept
    return moved


def _summary(
    records: Sequence[dict[str, Any]],
    spans: dict[str, dict[str, Any]],
    roots: list[dict[str, Any]],
    root_logs: list[dict[str, Any]],
    now: int,
) -> dict[str, Any]:
    start = min(r["ts"] for r in records)
    end = start
    in_flight = False
    for r in records:
        end = max(end, r["ts"] + (r["duration_ns"] or 0))
    for node in spans.values():
        if node["in_flight"]:
            in_flight = True
            end = max(end, now)
    return {
        "trace_id": records[0]["trace_id"],
        "start": start,
        "end": end,
        "duration_ns": end - start,
        "in_flight": in_flight,
        "span_count": len(spans),
        "log_count": sum(1 for r in records if r["kind"] == "log"),
        "error_count": sum(1 for n in spans.values() if n["status"] == 2)
        + sum(1 for r in records if r["kind"] == "log" and r["level"] >= 40),
        "services": sorted({r["service"] for r in records}),
        "spans": roots,
        "logs": root_logs,
    }


# -- queries ----------------------------------------------------------------------------------


class _Args:
    """Positional parameters of one statement; ``add`` returns the placeholder."""

    def __init__(self, *initial: Any) -> None:
        self.values = list(initial)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"

    def ts(self, ns: int) -> str:
        self.values.append(ns // 1000)
        return _ts_sql(len(self.values))


def _search_sql(schema: str, f: Filters) -> tuple[str, list[Any]]:
    a = _Args(f.project)
    where = ["project = $1"]
    if f.since is not None:
        where.append(f"ts >= {a.ts(f.since)}")
    if f.until is not None:
        where.append(f"ts < {a.ts(f.until)}")
    if f.service is not None:
        where.append(f"service = {a.add(f.service)}")
    if f.min_level is not None:
        where.append(f"level >= {a.add(f.min_level)}::smallint")
        if f.min_level >= 40:
            # Written out as the partial index's predicate, so the planner may use that index.
            where.append("(level >= 40 OR status = 2)")
    if f.kinds is not None:
        where.append(f"kind = ANY({a.add(list(f.kinds))}::smallint[])")
    if f.q:
        where.append(f"{TEXT_VECTOR} @@ plainto_tsquery('simple', {a.add(f.q)})")
    if f.attrs:
        where.append(f"attrs @> {a.add(orjson.dumps(dict(f.attrs)).decode())}::text::jsonb")
    if f.trace_id is not None:
        where.append(f"trace_id = {a.add(uuid.UUID(f.trace_id))}")
    if f.cursor is not None:
        ts_us, rid = f.cursor
        bound = a.ts(ts_us * 1000)
        # Keyset: strictly after the last row of the previous page in (ts, ctid) order; ctid
        # breaks ties between equal timestamps (rows are never updated, so it is stable).
        where.append(f"ts <= {bound} AND (ts < {bound} OR ctid < {a.add(rid)}::text::tid)")
    limit = a.add(f.limit + 1)
    sql = (
        f"SELECT {_SELECT}, ctid::text AS rid FROM {schema}.records "
        f"WHERE {' AND '.join(where)} ORDER BY ts DESC, ctid DESC LIMIT {limit}"
    )
    return sql, a.values


async def search(conn: Any, schema: str, filters: Filters) -> dict[str, Any]:
    """Newest first: ``{"records": [...], "next_cursor": str | None}``."""
    sql, args = _search_sql(schema, filters)
    rows = await conn.fetch(sql, *args)
    more = len(rows) > filters.limit
    rows = rows[: filters.limit]
    cursor = None
    if more and rows:
        last = rows[-1]
        cursor = _encode_cursor(_ns(last["ts"]) // 1000, last["rid"])
    return {"records": [record_json(tuple(r)[:-1]) for r in rows], "next_cursor": cursor}


def _trace_sql(schema: str) -> str:
    return (
        f"SELECT {_SELECT} FROM {schema}.records WHERE project = $1 AND trace_id = $2 "
        "ORDER BY ts, kind LIMIT $3"
    )


async def trace(
    conn: Any, schema: str, project: str, trace_id: str, *, now: int | None = None
) -> dict[str, Any] | None:
    """The trace as a tree (see :func:`build_tree`), or None when the project has no such trace.

    ``trace_id`` that is not 32 hex digits raises :class:`ConfigError`.
    """
    tid = _parse_trace_id(trace_id)
    rows = await conn.fetch(_trace_sql(schema), project, uuid.UUID(tid), MAX_TRACE_ROWS + 1)
    if not rows:
        return None
    truncated = len(rows) > MAX_TRACE_ROWS
    records = [record_json(tuple(r)) for r in rows[:MAX_TRACE_ROWS]]
    tree = build_tree(records, now=time.time_ns() if now is None else now)
    tree["trace_id"] = tid
    tree["truncated"] = truncated
    return tree


def _interval_seconds(value: str | int | None) -> int:
    if value is None or value == "":
        return 300
    if isinstance(value, str) and value in INTERVALS:
        return INTERVALS[value]
    raise ConfigError("interval", value, f"expected one of {', '.join(INTERVALS)}")


def _stats_sql(schema: str, service: bool) -> str:
    where = f"project = $1 AND ts >= {_ts_sql(3)} AND ts < {_ts_sql(4)}"
    if service:
        where += " AND service = $5"
    return (
        f"SELECT date_bin($2::text::interval, ts, timestamptz 'epoch') AS bucket, service, level, "
        f"count(*) AS n FROM {schema}.records WHERE {where} "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )


def _durations_sql(schema: str, service: bool) -> str:
    where = f"project = $1 AND ts >= {_ts_sql(2)} AND ts < {_ts_sql(3)} AND kind IN (2, 3)"
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
) -> dict[str, Any]:
    """Record counts per ``interval`` bucket, service and level over ``[since, until)`` (default:
    the last 24 h), and with ``durations`` the p50/p95 span duration per service and name."""
    now = time.time_ns() if now is None else now
    step = _interval_seconds(interval)
    until = now if until is None else until
    since = until - DEFAULT_RANGE_NS if since is None else since
    if until <= since:
        raise ConfigError("until", until, "must be after since")
    if (until - since) // (step * _NS) > MAX_BUCKETS:
        raise ConfigError("interval", interval, f"more than {MAX_BUCKETS} buckets in the range")
    args: list[Any] = [project, f"{step} seconds", since // 1000, until // 1000]
    if service:
        args.append(service)
    rows = await conn.fetch(_stats_sql(schema, bool(service)), *args)
    out: dict[str, Any] = {
        "interval": f"{step}s" if interval is None else interval,
        "interval_ns": step * _NS,
        "since": since,
        "until": until,
        "buckets": [
            {"ts": _ns(r["bucket"]), "service": r["service"], "level": r["level"], "count": r["n"]}
            for r in rows
        ],
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
    schema: str, project: str, since: int, until: int, service: str | None, slow_ns: int | None
) -> tuple[str, list[Any]]:
    a = _Args(project)
    where = [f"project = $1 AND ts >= {a.ts(since)} AND ts < {a.ts(until)} AND kind IN (2, 3)"]
    if service:
        where.append(f"service = {a.add(service)}")
    if slow_ns is not None:
        where.append(f"duration_ns >= {a.add(int(slow_ns))}")
    sql = (
        "SELECT service, name, count(*) AS n, count(*) FILTER (WHERE status = 2) AS failed, "
        "max(ts) AS last_ts, (array_agg(status ORDER BY ts DESC))[1] AS last_status, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ns) AS p50, "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ns) AS p95 "
        f"FROM {schema}.records WHERE {' AND '.join(where)} "
        "GROUP BY service, name ORDER BY n DESC, service, name"
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
    until = now if until is None else until
    since = until - DEFAULT_RANGE_NS if since is None else since
    if until <= since:
        raise ConfigError("until", until, "must be after since")
    sql, args = _spans_sql(schema, project, since, until, service, slow_ns)
    if errors_only:
        sql = sql.replace(
            "ORDER BY n DESC", "HAVING count(*) FILTER (WHERE status = 2) > 0 ORDER BY n DESC"
        )
    sql += f" LIMIT {int(limit):d}"
    rows = await conn.fetch(sql, *args)
    out = [
        {
            "service": r["service"],
            "name": r["name"],
            "count": r["n"],
            "errors": r["failed"],
            "last_seen": _ns(r["last_ts"]),
            "last_status": r["last_status"],
            "p50_ns": round(r["p50"] or 0),
            "p95_ns": round(r["p95"] or 0),
        }
        for r in rows
    ]
    return {"since": since, "until": until, "spans": out}


def spans_params(params: Mapping[str, str], *, now: int) -> dict[str, Any]:
    """Keyword arguments of :func:`spans` from query parameters."""
    _only(params, ("since", "until", "service", "slow_ms", "errors", "limit"))
    flag = params.get("errors", "").strip().lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError("errors", flag, "expected true or false")
    slow = params.get("slow_ms")
    try:
        slow_ns = None if slow in (None, "") else int(float(slow) * 1_000_000)
    except ValueError:
        raise ConfigError("slow_ms", slow, "expected a number of milliseconds") from None
    return {
        "since": parse_time(params["since"], now=now, field="since") if "since" in params else None,
        "until": parse_time(params["until"], now=now, field="until") if "until" in params else None,
        "service": params.get("service") or None,
        "slow_ns": slow_ns,
        "errors_only": flag in ("1", "true", "yes"),
        "limit": _parse_limit(params.get("limit"), DEFAULT_LIMIT, MAX_LIMIT, "limit"),
        "now": now,
    }


# Stack traces are read cut to their two ends: Python's top frames are at the end, Java's and
# JavaScript's at the start; the middle never decides a fingerprint.
_ERRORS_COLUMNS = (
    "ts, trace_id, service, error_type, left(coalesce(error_message, message), 2048) AS msg, "
    "CASE WHEN length(stack_trace) <= 16384 THEN stack_trace "
    "ELSE left(stack_trace, 8192) || E'\\n' || right(stack_trace, 8192) END AS stack"
)


def _errors_sql(
    schema: str, project: str, since: int, until: int | None, service: str | None, scan: int
) -> tuple[str, list[Any]]:
    a = _Args(project)
    # The partial index's predicate, written out as in its definition.
    where = ["project = $1", "(level >= 40 OR status = 2)", f"ts >= {a.ts(since)}"]
    if until is not None:
        where.append(f"ts < {a.ts(until)}")
    if service:
        where.append(f"service = {a.add(service)}")
    sql = (
        f"SELECT {_ERRORS_COLUMNS} FROM {schema}.records WHERE {' AND '.join(where)} "
        f"ORDER BY ts DESC LIMIT {a.add(scan + 1)}"
    )
    return sql, a.values


def group_errors(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Error rows (newest first) grouped by fingerprint, most frequent first."""
    groups: dict[str, dict[str, Any]] = {}
    known: dict[tuple[Any, Any, Any], str] = {}
    for r in rows:
        key = (r["error_type"], r["msg"], r["stack"])
        fp = known.get(key)
        if fp is None:
            fp = known[key] = fingerprint(*key)
        ts = _ns(r["ts"])
        trace_id = _trace_hex(r["trace_id"])
        g = groups.get(fp)
        if g is None:
            groups[fp] = {
                "fingerprint": fp,
                "error_type": r["error_type"],
                "message": r["msg"],
                "count": 1,
                "first_seen": ts,
                "last_seen": ts,
                "trace_id": trace_id,
                "services": {r["service"]},
            }
            continue
        g["count"] += 1
        g["first_seen"] = min(g["first_seen"], ts)
        g["last_seen"] = max(g["last_seen"], ts)
        g["services"].add(r["service"])
        if g["trace_id"] is None:
            g["trace_id"] = trace_id
    out = sorted(groups.values(), key=lambda g: (-g["count"], -g["last_seen"]))
    for g in out:
        g["services"] = sorted(g["services"])
    return out


async def errors(
    conn: Any,
    schema: str,
    project: str,
    *,
    since: int | None = None,
    until: int | None = None,
    service: str | None = None,
    limit: int = 50,
    scan: int = DEFAULT_ERROR_SCAN,
    now: int | None = None,
) -> dict[str, Any]:
    """Error groups of ``[since, until)`` (default: the last 24 h), from the newest ``scan`` error
    rows; ``truncated`` says the range held more and older ones were not counted."""
    now = time.time_ns() if now is None else now
    if since is None:
        since = (now if until is None else until) - DEFAULT_RANGE_NS
    if not 1 <= scan <= MAX_ERROR_SCAN:
        raise ConfigError("scan", scan, f"expected 1 to {MAX_ERROR_SCAN}")
    sql, args = _errors_sql(schema, project, since, until, service, scan)
    rows = await conn.fetch(sql, *args)
    truncated = len(rows) > scan
    rows = rows[:scan]
    # Hashing and regexes over thousands of rows: off the loop, so other requests keep going.
    groups = await asyncio.to_thread(group_errors, rows)
    return {
        "groups": groups[:limit],
        "group_count": len(groups),
        "scanned": len(rows),
        "scan_limit": scan,
        "truncated": truncated,
        "since": since,
        "until": until,
    }


def errors_params(params: Mapping[str, str], *, now: int) -> dict[str, Any]:
    """Keyword arguments of :func:`errors` from query parameters."""
    _only(params, ("since", "until", "service", "limit", "scan"))
    return {
        "since": parse_time(params["since"], now=now, field="since") if "since" in params else None,
        "until": parse_time(params["until"], now=now, field="until") if "until" in params else None,
        "service": params.get("service") or None,
        "limit": _parse_limit(params.get("limit"), 50, 500, "limit"),
        "scan": _parse_limit(params.get("scan"), DEFAULT_ERROR_SCAN, MAX_ERROR_SCAN, "scan"),
        "now": now,
    }


def stats_params(params: Mapping[str, str], *, now: int) -> dict[str, Any]:
    """Keyword arguments of :func:`stats` from query parameters."""
    _only(params, ("since", "until", "service", "interval", "durations"))
    flag = params.get("durations", "").strip().lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError("durations", flag, "expected true or false")
    return {
        "interval": params.get("interval") or None,
        "since": parse_time(params["since"], now=now, field="since") if "since" in params else None,
        "until": parse_time(params["until"], now=now, field="until") if "until" in params else None,
        "service": params.get("service") or None,
        "durations": flag in ("1", "true", "yes"),
        "now": now,
    }


def _only(params: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    for key in params:
        if key not in allowed:
            raise ConfigError(key, params[key], f"unknown parameter; expected {', '.join(allowed)}")
