"""The collector's read API: search, one trace, stats, error groups and the live tail (SSE).

Every route answers for the project of the request's API key (``request[PROJECT]``, set by the
auth middleware) and nothing else. Errors are JSON ``{"error": ..., "field": ...}``: 400 for a
parameter atrace cannot accept (:class:`~atrace.errors.QueryError`), 404 for a trace the project
does not have, 503 while the database cannot be reached; the application's error middleware
turns the exceptions into those answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from ..errors import QueryError, Unavailable
from . import _query as query
from ._state import LIMITS, PROJECT, QUERY_POOL, SCHEMA, TAIL, database

__all__ = ("add_query_routes",)

# Parameters the live tail ignores rather than refuses: a client may reuse its search filters.
_TAIL_IGNORED = frozenset(("since", "until", "limit", "cursor"))


def add_query_routes(app: web.Application) -> None:
    """Register ``GET /v1/search``, ``/v1/traces/{trace_id}``, ``/v1/stats``, ``/v1/errors``
    and ``/v1/tail`` on ``app``, and end live tails when the application shuts down."""
    app.router.add_get("/v1/search", _search)
    app.router.add_get("/v1/traces/{trace_id}", _trace)
    app.router.add_get("/v1/stats", _stats)
    app.router.add_get("/v1/spans", _spans)
    app.router.add_get("/v1/errors", _errors)
    # No HEAD: it would hold a subscription that can never send anything.
    app.router.add_get("/v1/tail", _tail, allow_head=False)
    app.on_shutdown.append(_end_tails)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", charset="utf-8"
    )


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status)


def _where(request: web.Request) -> tuple[str, str]:
    return request.app[SCHEMA], request[PROJECT]


@contextlib.asynccontextmanager
async def _connection(request: web.Request) -> AsyncIterator[Any]:
    """A connection of the read API's own pool, waited for at most ``pool_wait`` seconds (503
    after); errors worth retrying become :class:`Unavailable` too."""
    pool = request.app[QUERY_POOL]
    wait = request.app[LIMITS].pool_wait
    with database():
        try:
            conn = await pool.acquire(timeout=wait)
        except asyncio.TimeoutError:
            raise Unavailable(
                f"no database connection free for queries within {wait} s",
                reason="database",
                bound="query_pool_size",
            ) from None
        try:
            yield conn
        finally:
            await pool.release(conn)


async def _search(request: web.Request) -> web.StreamResponse:
    schema, project = _where(request)
    filters = query.parse_filters(request.query.items(), project=project)
    most = request.app[LIMITS].max_response_bytes
    async with _connection(request) as conn:
        found = await query.search(conn, schema, filters, max_bytes=most)
    return _json(found)


async def _trace(request: web.Request) -> web.StreamResponse:
    schema, project = _where(request)
    most = request.app[LIMITS].max_response_bytes
    async with _connection(request) as conn:
        tree = await query.trace(
            conn, schema, project, request.match_info["trace_id"], max_bytes=most
        )
    if tree is None:
        return _error(404, "no such trace")
    return _json(tree)


async def _stats(request: web.Request) -> web.StreamResponse:
    schema, project = _where(request)
    params = query.stats_params(request.query, now=time.time_ns())
    most = request.app[LIMITS].max_response_bytes
    async with _connection(request) as conn:
        found = await query.stats(conn, schema, project, **params, max_bytes=most)
    return _json(found)


async def _spans(request: web.Request) -> web.StreamResponse:
    schema, project = _where(request)
    params = query.spans_params(request.query, now=time.time_ns())
    async with _connection(request) as conn:
        found = await query.spans(conn, schema, project, **params)
    return _json(found)


async def _errors(request: web.Request) -> web.StreamResponse:
    schema, project = _where(request)
    params = query.errors_params(request.query, now=time.time_ns())
    # The rows scanned are held in memory while grouped: this collector's bound applies.
    most = request.app[LIMITS].max_error_scan
    if params["scan"] > most:
        if "scan" in request.query:
            raise QueryError("scan", params["scan"], f"expected 1 to {most}")
        params["scan"] = most
    # ... and so does the byte bound of an answer, to the text of the rows held.
    held = request.app[LIMITS].max_response_bytes
    async with _connection(request) as conn:
        found = await query.errors(conn, schema, project, **params, max_bytes=held)
    return _json(found)


async def _tail(request: web.Request) -> web.StreamResponse:
    hub = request.app.get(TAIL)
    if hub is None:
        return _error(503, "the live tail is not running")
    items = [(k, v) for k, v in request.query.items() if k not in _TAIL_IGNORED]
    filters = query.parse_filters(items, project=request[PROJECT], default_range_ns=None)
    # Subscribed, bounded and streamed by the hub (429/503 past its bounds; see _tail.py).
    # TailClosed once the collector is stopping: 503
    response: web.StreamResponse = await hub.stream(request, filters)
    return response


async def _end_tails(app: web.Application) -> None:
    # on_shutdown runs before the server waits for open requests: ending the streams here lets
    # it stop at once instead of waiting out its grace period.
    hub = app.get(TAIL)
    if hub is not None:
        hub.close_subscribers()
