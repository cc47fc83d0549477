"""What the collector's parts share through the aiohttp application and request."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from .._delivery.classify import classify
from ..errors import Unavailable

__all__ = ("POOL", "PROJECT", "SCHEMA", "TAIL", "database")

# The asyncpg pool (connections carry atrace's codecs: ts as int ns, jsonb as JSON bytes).
POOL: web.AppKey[Any] = web.AppKey("atrace_pool", object)
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
        raise Unavailable(f"database unavailable: {verdict.reason}", reason="database") from exc
