"""Error groups: a range's newest error rows, as occurrences grouped by fingerprint.

One exception is one occurrence, however many records it passed through: the span it was raised
in, each span it left, the log that reported it. atrace marks every record after the first that
carries the same exception object with the attribute ``atrace.exception.origin`` (the hex span
id of the span that first recorded it, ``""`` outside any span); a record without it is an
origin, the one nearest the raise. Groups count origins; the other records are ``linked``.

Records written before that attribute existed are linked by their place in the trace instead:
a span or log whose error type and message equal those of a record one level deeper in the
same trace (a child span, or a log inside the span) is linked to that record, not counted.

A span that failed on its HTTP status without an exception (``"HTTP 502"``, no error type) is
grouped by status, method and route, and labelled ``HTTP 502 GET /order/{order_id}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..._emit.ids import format_span_id
from ..._records import ORIGIN, Kind, Status
from ...errors import QueryError
from .fingerprint import fingerprint
from .params import DEFAULT_ERROR_SCAN, DEFAULT_RANGE_NS, MAX_ERROR_SCAN, trace_hex
from .sql import ERROR_ROWS, Args, as_ns

__all__ = ("errors", "group_errors", "http_failure")

# The attribute naming the span of the record that first recorded the same exception.
_SPAN_KINDS = frozenset((Kind.SPAN_END.value, Kind.SPAN.value))
# Attribute names of OpenTelemetry's HTTP conventions, current first, then the older ones.
_HTTP_STATUS = ("http.response.status_code", "http.status_code")
_HTTP_METHOD = ("http.request.method", "http.method")


def _attr_text(names: tuple[str, ...]) -> str:
    return "coalesce(" + ", ".join(f"attrs ->> '{n}'" for n in names) + ")"


# Stack traces are read cut to their two ends: Python's top frames are at the end, Java's and
# JavaScript's at the start; the middle never decides a fingerprint.
_ERRORS_COLUMNS = (
    "ts, kind, status, trace_id, span_id, parent_id, duration_ns, service, "
    "left(name, 512) AS name, "
    "error_type, left(coalesce(error_message, status_message, message), 2048) AS msg, "
    "CASE WHEN length(stack_trace) <= 16384 THEN stack_trace "
    "ELSE left(stack_trace, 8192) || E'\\n' || right(stack_trace, 8192) END AS stack, "
    f"attrs ->> '{ORIGIN}' AS origin, "
    f"{_attr_text(_HTTP_STATUS)} AS http_status, {_attr_text(_HTTP_METHOD)} AS http_method, "
    "left(attrs ->> 'http.route', 512) AS http_route, "
    "left(attrs ->> 'server.address', 256) AS http_host"
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


# Rows read from the cursor at a time while the scan is held to a byte budget.
_PREFETCH = 500
_TEXT_COLUMNS = ("name", "error_type", "msg", "stack", "http_route", "http_host", "service")


async def _fetch_within(
    conn: Any, sql: str, args: list[Any], max_bytes: int
) -> tuple[list[Any], bool]:
    """The rows of ``sql``, read a few hundred at a time and no further once their text passes
    ``max_bytes`` (True then): the rows a scan holds are bounded in bytes, not only in count."""
    rows: list[Any] = []
    total = 0
    async with conn.transaction(readonly=True):
        async for row in conn.cursor(sql, *args, prefetch=_PREFETCH):
            rows.append(row)
            for column in _TEXT_COLUMNS:
                value = row[column]
                if value is not None:
                    total += len(value)
            if total > max_bytes:
                return rows, True
    return rows, False


def http_failure(row: Mapping[str, Any]) -> tuple[int, str, str] | None:
    """``(status, method, route)`` of a span that failed on its HTTP status with no exception.

    A failed span with no error type whose status attribute is 500 or more, or 400 or more with
    no message other than atrace's ``"HTTP 404"`` (client spans fail on 4xx). The route is
    ``http.route``, else the span name less its method (``"GET /items"`` → ``/items``), else
    the server address (client spans); the method is ``http.request.method`` or
    ``http.method``.
    """
    if row.get("status") != Status.ERROR or row.get("error_type") or not row.get("http_status"):
        return None
    if row.get("kind") not in _SPAN_KINDS:
        return None
    try:
        code = int(str(row["http_status"]).strip())
    except ValueError:
        return None
    msg = row.get("msg") or ""
    if not (code >= 500 or (code >= 400 and msg in ("", f"HTTP {code}"))) or code > 999:
        return None
    method = str(row.get("http_method") or "")
    route = row.get("http_route") or ""
    if not route:
        route = str(row.get("name") or "")
        for prefix in (f"HTTP {method}", method, "HTTP") if method else ("HTTP",):
            if route == prefix or route.startswith(prefix + " "):
                route = route[len(prefix) :].strip()
                break
        route = route or str(row.get("http_host") or "")
    return code, method, route


def _label(error_type: str | None, message: str | None) -> str:
    if error_type and message:
        return f"{error_type}: {message}"
    return error_type or message or ""


def _link_key(trace_id: Any, span_hex: str, error_type: Any) -> tuple[Any, ...]:
    return (span_hex, error_type) if span_hex else (trace_id, "", error_type)


def _span_hex(value: Any) -> str:
    return "" if value is None else format_span_id(value)


def _deeper(rows: list[Mapping[str, Any]], origin: list[str | None]) -> list[int | None]:
    """For rows without the origin attribute (older data): the index of a record one level
    deeper in the same trace with the same exception type and message, else None."""
    children: dict[tuple[Any, ...], list[int]] = {}  # span rows by parent
    logs: dict[tuple[Any, ...], list[int]] = {}  # log rows by the span they were written in
    for i, r in enumerate(rows):
        if origin[i] is not None or not r.get("error_type") or r["trace_id"] is None:
            continue
        error = (r["trace_id"], r["error_type"], r["msg"])
        if r.get("kind") in _SPAN_KINDS:
            children.setdefault((*error, r.get("parent_id")), []).append(i)
        elif r.get("kind") == Kind.LOG:
            logs.setdefault((*error, r.get("span_id")), []).append(i)
    out: list[int | None] = [None] * len(rows)
    if not children and not logs:
        return out
    for i, r in enumerate(rows):
        if origin[i] is not None or not r.get("error_type") or r["trace_id"] is None:
            continue
        key = (r["trace_id"], r["error_type"], r["msg"], r.get("span_id"))
        if r.get("kind") in _SPAN_KINDS:
            # A failed child span, or a log written inside this span, was nearer the raise.
            found = [j for j in (*children.get(key, ()), *logs.get(key, ())) if j != i]
        elif r.get("kind") == Kind.LOG:
            # A child span of the log's span that had failed with it by the time it was logged.
            ts = as_ns(r["ts"])
            found = [
                j
                for j in children.get(key, ())
                if as_ns(rows[j]["ts"]) + (rows[j].get("duration_ns") or 0) <= ts
            ]
        else:
            found = []
        if found:
            out[i] = found[0]
    return out


def group_errors(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Error rows (newest first) as occurrences grouped by fingerprint, most frequent first.

    Each group: ``fingerprint``, ``label`` (``"ValueError: order 42 failed"`` or
    ``"HTTP 502 GET /order/{order_id}"``), ``kind`` (``"exception"``, ``"http"`` or
    ``"error"``: an error log or failed span with no exception), ``error_type``, ``message``,
    ``http`` (``{"status", "method", "route"}`` or None), ``count`` (occurrences), ``linked``
    (further records of those same exceptions, not counted), ``first_seen``, ``last_seen``,
    ``trace_id`` (a sample) and ``services``.
    """
    rows = list(rows)
    origin: list[str | None] = [r.get("origin") for r in rows]
    for i, value in enumerate(origin):
        if value is not None:
            origin[i] = value.strip().lower()
    deeper = _deeper(rows, origin)
    groups: dict[str, dict[str, Any]] = {}
    known: dict[tuple[Any, Any, Any], str] = {}
    # Each row's occurrence: the index of the row counted for it.
    owner: list[int] = list(range(len(rows)))
    # Counted rows by what a linked record's origin names: the span (ids are random 64-bit
    # numbers, so the span alone will do; a log outside any span has no trace id either), or
    # for "" (no span) the trace.
    origins: dict[tuple[Any, ...], int] = {}
    for i, r in enumerate(rows):
        if origin[i] is None and deeper[i] is None:
            key = _link_key(r["trace_id"], _span_hex(r.get("span_id")), r["error_type"])
            origins.setdefault(key, i)
    for i, r in enumerate(rows):
        j, seen, nxt = i, {i}, deeper[i]
        while nxt is not None and nxt not in seen:  # a cycle only in broken parent links
            j = nxt
            seen.add(j)
            nxt = deeper[j]
        owner[i] = j
        where = origin[i]
        if where is not None:
            key = _link_key(r["trace_id"], where, r["error_type"])
            if where or r["trace_id"] is not None:
                # When the first record is not among the rows read (older, or a warning),
                # the first of its followers read stands for the occurrence.
                owner[i] = origins.setdefault(key, i)
            else:
                owner[i] = origins.get(key, i)
    fps: list[str | None] = [None] * len(rows)
    for i, r in enumerate(rows):
        if owner[i] != i:
            continue
        http = http_failure(r)
        if http is not None:
            code, method, route = http
            fp = hashlib.sha256(f"http\x1f{code}\x1f{method}\x1f{route}".encode()).hexdigest()
        else:
            key3 = (r["error_type"], r["msg"], r["stack"])
            cached = known.get(key3)
            fp = known[key3] = fingerprint(*key3) if cached is None else cached
        fps[i] = fp
        ts = as_ns(r["ts"])
        trace_id = trace_hex(r["trace_id"])
        g = groups.get(fp)
        if g is None:
            if http is not None:
                label = " ".join(p for p in ("HTTP", str(http[0]), http[1], http[2]) if p)
                kind = "http"
                detail: dict[str, Any] | None = {
                    "status": http[0],
                    "method": http[1],
                    "route": http[2],
                }
            else:
                label = _label(r["error_type"], r["msg"])
                kind = "exception" if r["error_type"] else "error"
                detail = None
            groups[fp] = {
                "fingerprint": fp,
                "label": label,
                "kind": kind,
                "error_type": r["error_type"],
                "message": r["msg"],
                "http": detail,
                "count": 1,
                "linked": 0,
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
    for i in range(len(rows)):
        counted = fps[owner[i]]
        if owner[i] != i and counted is not None:
            groups[counted]["linked"] += 1
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
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """Error groups of ``[since, until)`` (default: the last 24 h), at most ``limit`` groups
    (``group_count`` says how many there were), from the newest ``scan`` error rows (records,
    linked ones included) and at most about ``max_bytes`` of their text; ``truncated`` says the
    range held more and older ones were not read. See :func:`group_errors` for what a group
    holds and what it counts."""
    now = time.time_ns() if now is None else now
    if since is None:
        since = (now if until is None else until) - DEFAULT_RANGE_NS
    if not 1 <= scan <= MAX_ERROR_SCAN:
        raise QueryError("scan", scan, f"expected 1 to {MAX_ERROR_SCAN}")
    sql, args = _errors_sql(schema, project, since, until, service, scan)
    if max_bytes is None:
        rows, cut = await conn.fetch(sql, *args), False
    else:
        rows, cut = await _fetch_within(conn, sql, args, max_bytes)
    truncated = cut or len(rows) > scan
    rows = rows[:scan]
    # Hashing and regexes over thousands of rows: off the loop, so other requests keep going.
    groups = await asyncio.to_thread(group_errors, rows)
    return {
        "groups": groups[:limit],
        "group_count": len(groups),
        "occurrences": sum(g["count"] for g in groups),
        "scanned": len(rows),
        "scan_limit": scan,
        "truncated": truncated,
        "since": since,
        "until": until,
    }
