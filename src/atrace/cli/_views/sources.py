"""Where the views read from: PostgreSQL directly, or a collector's query API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

__all__ = ("DbSource", "Unreachable", "UrlSource", "api_params", "where")


class Unreachable(Exception):
    """The database or the collector could not be reached; the message says which and why."""


class DbSource:
    """Reads atrace's tables over one asyncpg connection."""

    def __init__(self, dsn: str, schema: str, project: str) -> None:
        self.dsn, self.schema, self.project = dsn, schema, project
        self.conn: Any = None

    async def __aenter__(self) -> DbSource:
        import asyncpg

        from ..._postgres.session import connection_init

        try:
            self.conn = await asyncpg.connect(self.dsn, timeout=10)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            raise Unreachable(f"cannot reach the database ({where(self.dsn)}): {exc}") from exc
        await connection_init(self.conn)
        exists = await self.conn.fetchval("SELECT to_regclass($1)", f"{self.schema}.records")
        if exists is None:
            await self.conn.close()
            raise Unreachable(f"no atrace schema {self.schema!r} in the database (atrace db init)")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()

    async def spans(self, **params: Any) -> dict[str, Any]:
        from ...collector import _query as query

        return await query.spans(self.conn, self.schema, self.project, **params)

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        from ...collector import _query as query

        return await query.trace(self.conn, self.schema, self.project, trace_id)

    async def errors(self, **params: Any) -> dict[str, Any]:
        from ...collector import _query as query

        return await query.errors(self.conn, self.schema, self.project, **params)

    async def recent(self, params: dict[str, str]) -> list[dict[str, Any]]:
        from ...collector import _query as query

        filters = query.parse_filters(params, project=self.project)
        return list((await query.search(self.conn, self.schema, filters))["records"])

    async def follow(self, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        import asyncpg

        from ...collector import _query as query
        from ...collector._tail import TailHub

        filters = query.parse_filters(params, project=self.project, default_range_ns=None)
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        hub = TailHub(self.schema)
        await hub.start(pool, dsn=self.dsn)
        sub = hub.subscribe(filters)
        try:
            while True:
                for row in await sub.take():
                    yield query.record_json(row)
        finally:
            hub.unsubscribe(sub)
            await hub.stop()
            await pool.close()


class UrlSource:
    """Reads a collector's query API."""

    def __init__(self, url: str, api_key: str | None) -> None:
        from ...client import AsyncClient

        self.url = url
        self.client = AsyncClient(url, api_key=api_key)

    async def __aenter__(self) -> UrlSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def _call(self, coro: Any) -> Any:
        from ...errors import (
            AuthenticationError,
            NotFoundError,
            PermissionDeniedError,
            ServerError,
            TransportError,
            redact,
        )

        try:
            return await coro
        except TransportError as exc:
            # The message without the request's URL: the collector's address says enough.
            reason = redact(exc.message)
            raise Unreachable(f"cannot reach the collector at {self.url}: {reason}") from exc
        except (AuthenticationError, PermissionDeniedError) as exc:
            reason = redact(exc.message)
            raise Unreachable(f"the collector at {self.url} refused the API key: {reason}") from exc
        except ServerError as exc:
            reason = redact(f"{exc.status} {exc.message}")
            raise Unreachable(f"the collector at {self.url} failed: {reason}") from exc
        except NotFoundError:
            return None

    async def spans(self, **params: Any) -> dict[str, Any]:
        return await self._call(self.client.spans(**api_params(params)))  # type: ignore[no-any-return]

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        return await self._call(self.client.trace(trace_id))  # type: ignore[no-any-return]

    async def errors(self, **params: Any) -> dict[str, Any]:
        return await self._call(self.client.errors(**api_params(params)))  # type: ignore[no-any-return]

    async def recent(self, params: dict[str, str]) -> list[dict[str, Any]]:
        page = await self._call(self.client.search_page(**params))
        return list(page["records"]) if page else []

    async def follow(self, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        from ...errors import (
            AuthenticationError,
            PermissionDeniedError,
            ServerError,
            TransportError,
        )

        filters: dict[str, Any] = dict(params)
        try:
            async with self.client.tail(**filters) as stream:
                async for rec in stream:
                    yield rec
        except (TransportError, ServerError) as exc:
            raise Unreachable(f"lost the collector at {self.url}: {exc}") from exc
        except (AuthenticationError, PermissionDeniedError) as exc:
            raise Unreachable(f"the collector at {self.url} refused the API key: {exc}") from exc


def api_params(params: dict[str, Any]) -> dict[str, Any]:
    # Keyword names of the query functions → the API's parameter names.
    out = {k: v for k, v in params.items() if v is not None and v is not False}
    if "slow_ns" in out:
        out["slow_ms"] = out.pop("slow_ns") / 1e6
    if out.pop("errors_only", False):
        out["errors"] = "true"
    return out


def where(dsn: str) -> str:
    # host:port/db of a DSN, never its password.
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(dsn)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"
    except ValueError:
        return "the configured DSN"
