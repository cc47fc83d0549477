"""Error groups: a range's newest error rows, grouped by fingerprint, most frequent first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ...errors import QueryError
from .fingerprint import fingerprint
from .params import DEFAULT_ERROR_SCAN, DEFAULT_RANGE_NS, MAX_ERROR_SCAN, trace_hex
from .sql import ERROR_ROWS, Args, as_ns

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
    a = Args(project)
    # The partial index's predicate, written out as in its definition.
    where = ["project = $1", ERROR_ROWS, f"ts >= {a.ts(since)}"]
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
        ts = as_ns(r["ts"])
        trace_id = trace_hex(r["trace_id"])
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
        raise QueryError("scan", scan, f"expected 1 to {MAX_ERROR_SCAN}")
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
