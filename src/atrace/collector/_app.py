"""The collector's aiohttp application: database lifecycle, middlewares, health and metrics.

``make_app`` builds the application; ``make_runner`` wraps it with the server options the
collector relies on (its own bounded gzip inflation, no access log); ``serve`` runs it until
SIGTERM or SIGINT, then stops accepting, lets requests in flight finish within
``shutdown_timeout``, stops the live tail and closes the pool.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from .._postgres.session import connection_init
from ..config import check_schema
from ..errors import AuthError, ConfigError, QueryError, TailClosed, Unavailable, WireError
from ._auth import KeyStore, auth_middleware
from ._ingest import add_ingest_routes
from ._limits import DEFAULT_LIMITS, Limits
from ._prometheus import CONTENT_TYPE, Metrics
from ._state import POOL, SCHEMA, TAIL

__all__ = ("KEYS", "LIMITS", "METRICS", "PUBLIC_PATHS", "make_app", "make_runner", "serve")

_log = logging.getLogger("atrace.collector")

KEYS: web.AppKey[KeyStore] = web.AppKey("atrace_keys", KeyStore)
LIMITS: web.AppKey[Limits] = web.AppKey("atrace_limits", Limits)
METRICS: web.AppKey[Metrics] = web.AppKey("atrace_metrics", Metrics)
# Paths that need no API key.
PUBLIC_PATHS = frozenset({"/healthz", "/metrics"})
_HEALTH_TIMEOUT = 2.0
_POOL_CLOSE_TIMEOUT = 10.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    # Unmatched paths share one label: a scanner's guesses must not grow the metrics.
    return "unmatched" if resource is None else resource.canonical


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    default = f"{exc.status}: {exc.reason}"
    message = exc.text if exc.text and exc.text != default else exc.reason
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    return _error(exc.status, message or exc.reason, headers)


_REASONS = {400: "bad_request", 408: "timeout", 413: "too_large", 415: "unsupported"}


def _observe(metrics: Metrics, retry_after: int) -> Any:
    """The one map from exceptions to answers: each class gets its status and JSON error body
    here, and every request is counted. No answer and no log line carries a secret: messages
    name a key's fault, never the key, and a database failure by its class or SQLSTATE."""
    busy = {"Retry-After": str(retry_after)}

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except AuthError as exc:
            metrics.error("unauthorized")
            status = 401
            return _error(401, str(exc), {"WWW-Authenticate": 'Bearer realm="atrace"'})
        except QueryError as exc:
            metrics.error("bad_request")
            status = 400
            return web.json_response({"error": str(exc), "field": exc.field}, status=400)
        except WireError as exc:
            status = exc.status
            metrics.error(_REASONS.get(status, "bad_request"))
            response = _error(status, str(exc))
            if status == 413:
                # Whatever the client still sends is not wanted; end the connection after this.
                response.force_close()
            return response
        except Unavailable as exc:
            metrics.error(f"unavailable_{exc.reason}")
            status = 503
            return _error(503, str(exc), busy)
        except TailClosed:
            metrics.error("unavailable_stopping")
            status = 503
            return _error(503, "the collector is stopping")
        except web.HTTPException as exc:
            status = exc.status
            if status < 400:
                raise
            metrics.error(_REASONS.get(status, f"http_{status}"))
            response = _from_http_exception(exc)
            if status in (408, 413):
                response.force_close()
            return response
        except Exception:
            # A database error worth retrying arrives as Unavailable (collector._state.database);
            # anything else is a bug.
            _log.exception("atrace collector: %s %s failed", request.method, request.path)
            metrics.error("internal")
            return _error(500, "internal error")
        finally:
            metrics.request(_route(request), request.method, status, time.perf_counter() - started)

    return observe


async def _healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 when PostgreSQL answers, 503 otherwise."""
    pool = request.app[POOL]
    try:
        async with pool.acquire(timeout=_HEALTH_TIMEOUT) as conn:
            await conn.fetchval("SELECT 1", timeout=_HEALTH_TIMEOUT)
    except Exception as exc:
        return web.json_response(
            {"status": "unavailable", "error": f"database: {type(exc).__name__}"}, status=503
        )
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text format."""
    body = request.app[METRICS].render().encode()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _reset(conn: Any) -> None:
    # The pool's connections carry no session state (no SET, LISTEN or advisory locks: the tail
    # listens on its own connection), so the default reset's round trip on every release buys
    # nothing; a transaction left open by a failed request is the one thing to undo.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _database(dsn: str, schema: str, limits: Limits) -> Any:
    async def database(app: web.Application) -> AsyncIterator[None]:
        import asyncpg

        from .._postgres.schema import ensure_schema
        from ._tail import TailHub

        pool = await asyncpg.create_pool(
            dsn,
            # No floor: during an outage a pool reconnecting in the background only adds noise.
            min_size=0,
            max_size=limits.pool_size,
            init=connection_init,
            reset=_reset,
            server_settings={"application_name": "atrace-collector"},
            timeout=limits.connect_timeout,
            command_timeout=limits.command_timeout,
        )
        try:
            async with pool.acquire(timeout=limits.connect_timeout) as conn:
                await ensure_schema(conn, schema)
            hub = TailHub(schema)
            # The tail listens on a connection of its own: the pool stays whole for requests.
            await hub.start(pool, dsn=dsn)
        except BaseException:
            pool.terminate()
            raise
        app[POOL] = pool
        app[TAIL] = hub
        try:
            yield
        finally:
            try:
                await hub.stop()
            finally:
                try:
                    await asyncio.wait_for(pool.close(), _POOL_CLOSE_TIMEOUT)
                except BaseException:
                    pool.terminate()
                    raise

    return database


def make_app(dsn: str, *, schema: str = "atrace", limits: Limits | None = None) -> web.Application:
    """The collector application for PostgreSQL at ``dsn``.

    On startup: an asyncpg pool, the schema created or migrated, the live tail started. On
    cleanup: the tail stopped and the pool closed. Run it with :func:`make_runner` (or
    :func:`serve`), which turns off aiohttp's own request decompression so that gzip bodies are
    inflated under ``limits.max_inflated``.
    """
    from ._api import add_query_routes

    schema = check_schema(schema)
    limits = limits or DEFAULT_LIMITS
    registry = Metrics()
    keys = KeyStore(schema, ttl=limits.key_cache_ttl, pool_wait=limits.pool_wait)
    app = web.Application(
        middlewares=[
            _observe(registry, limits.retry_after),
            auth_middleware(keys, lambda: app[POOL], PUBLIC_PATHS),
        ],
        client_max_size=limits.max_body,
    )
    app[SCHEMA] = schema
    app[LIMITS] = limits
    app[METRICS] = registry
    app[KEYS] = keys
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    add_ingest_routes(app, limits, registry, schema)
    add_query_routes(app)
    app.cleanup_ctx.append(_database(dsn, schema, limits))
    return app


def make_runner(
    app: web.Application, *, shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
) -> web.AppRunner:
    """An AppRunner with the collector's server options; ``cleanup()`` waits up to
    ``shutdown_timeout`` seconds for requests in flight."""
    return web.AppRunner(
        app,
        # The ingest path inflates gzip itself, bounded by max_inflated.
        auto_decompress=False,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        handle_signals=False,
    )


def _url(address: Any) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    dsn: str,
    *,
    schema: str = "atrace",
    host: str = "127.0.0.1",
    port: int = 4319,
    limits: Limits | None = None,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Run the collector until SIGTERM or SIGINT, then shut down gracefully.

    ``ready(url)`` is called once the socket listens.
    """
    runner = make_runner(
        make_app(dsn, schema=schema, limits=limits), shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                "port", port, f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready(_url(runner.addresses[0]))
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
