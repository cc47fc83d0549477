"""What the collector's parts share through the aiohttp application and request."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from .._delivery.classify import classify
from ..errors import Unavailable
from ._limits import Limits

__all__ = ("LIMITS", "POOL", "PROJECT", "QUERY_POOL", "SCHEMA", "TAIL", "database")

# The asyncpg pool of ingest and API-key checks (connections carry atrace's codecs: ts as int
# ns, jsonb as JSON bytes).
POOL: web.AppKey[Any] = web.AppKey("atrace_pool", object)
# The read API's own pool (same codecs): queries never take an ingest's connection.
QUERY_POOL: web.AppKey[Any] = web.AppKey("atrace_query_pool", object)
# The collector's limits.
LIMITS: web.AppKey[Limits] = web.AppKey("atrace_limits", Limits)
# The PostgreSQL schema holding records, batches and api_keys.
SCHEMA: web.AppKey[str] = web.AppKey("atrace_schema", str)
# The live-tail hub: ingest publishes committed rows, /v1/tail subscribes.
TAIL: web.AppKey[Any] = web.AppKey("atrace_tail", object)
# request[PROJECT]: the project of the authenticated API key.
PROJECT: web.RequestKey[str] = web.RequestKey("atrace_project", str)


@contextlib.contextmanager
def database() -> Iterator[None]:
    """Around the collector's calls to PostgreSQL: an error worth retrying (the connection lost,
    the server restarting, no connection free in time) becomes :class:`Unavailable`, which the
    collector answers with 503 and ``Retry-After``; any other error goes on as it is (a bug is a
    logged 500, never a "retry later")."""
    try:
        yield
    except Exception as exc:
        verdict = classify(exc)
        if not verdict.retryable:
            raise
        # The client is told only that; what failed (which may name the database's address)
        # stays on the exception's __cause__, for the collector's own log.
        raise Unavailable("database unavailable: retry later", reason="database") from exc
