"""What the collector's parts share through the aiohttp application and request."""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ("POOL", "PROJECT", "SCHEMA", "TAIL")

# The asyncpg pool (connections carry atrace's codecs: ts as int ns, jsonb as JSON bytes).
POOL: web.AppKey[Any] = web.AppKey("atrace_pool", object)
# The PostgreSQL schema holding records, batches and api_keys.
SCHEMA: web.AppKey[str] = web.AppKey("atrace_schema", str)
# The live-tail hub: ingest publishes committed rows, /v1/tail subscribes.
TAIL: web.AppKey[Any] = web.AppKey("atrace_tail", object)
# request[PROJECT]: the project of the authenticated API key.
PROJECT: web.RequestKey[str] = web.RequestKey("atrace_project", str)
