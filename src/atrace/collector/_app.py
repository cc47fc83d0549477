"""The collector's aiohttp application: database lifecycle, middlewares, health and metrics.

``make_app`` builds the application; ``make_runner`` wraps it with the server options the
collector relies on (its own bounded gzip inflation, no access log, the header time-out and the
connection caps of :class:`_Gate`); ``serve`` runs it until
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
from ..errors import (
    AuthError,
    ConfigError,
    QueryError,
    RateLimited,
    TailClosed,
    Unavailable,
    WireError,
)
from ._auth import KeyStore, auth_middleware, parse_key, request_key
from ._ingest import INGEST, add_ingest_routes
from ._limits import DEFAULT_LIMITS, KeyGate, Limits
from ._prometheus import CONTENT_TYPE, Metrics
from ._redact import CollectorRunner, install_filters
from ._state import LIMITS, POOL, PROJECT, QUERY_POOL, SCHEMA, TAIL

__all__ = ("KEYS", "LIMITS", "METRICS", "PUBLIC_PATHS", "make_app", "make_runner", "serve")

_log = logging.getLogger("atrace.collector")

KEYS: web.AppKey[KeyStore] = web.AppKey("atrace_keys", KeyStore)
METRICS: web.AppKey[Metrics] = web.AppKey("atrace_metrics", Metrics)
# Paths that need no API key.
PUBLIC_PATHS = frozenset({"/healthz", "/metrics"})
_HEALTH_TIMEOUT = 2.0
_POOL_CLOSE_TIMEOUT = 10.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
# Descriptors kept free of client connections: the pools, the live tail, logs and files.
_FD_RESERVE = 64
# A cause of refusal is logged at most once in this many seconds, with how often it happened.
_LOG_EVERY = 60.0

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


def _unread(request: web.Request, response: web.Response) -> web.Response:
    # A body refused unread (or half read) is not drained: the connection ends after the answer.
    if request.body_exists and not request.content.at_eof():
        response.force_close()
    return response


_REASONS = {400: "bad_request", 408: "timeout", 413: "too_large", 415: "unsupported"}


def _observe(metrics: Metrics, retry_after: int) -> Any:
    """The one map from exceptions to answers: each class gets its status and JSON error body
    here, and every request is counted. No answer and no log line carries a secret: messages
    name a key's fault, never the key, and a database failure by its class or SQLSTATE.

    A refusal at one of the collector's limits (413, 429, 503, 408) is also counted by that
    limit's name (``atrace_collector_refused_total{cause}``) and logged at most once a minute
    per limit, with how often it struck meanwhile."""
    busy = {"Retry-After": str(retry_after)}
    throttled = _Throttled()

    def refused(bound: str | None, status: int, message: str) -> None:
        if bound is not None:
            metrics.refused(bound)
            throttled.warn(bound, f"refused with {status} ({bound}): {message}")

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
            refused(exc.bound, status, str(exc))
            response = _error(status, str(exc))
            if status == 413:
                # Whatever the client still sends is not wanted; end the connection after this.
                response.force_close()
            return response
        except Unavailable as exc:
            metrics.error(f"unavailable_{exc.reason}")
            status = 503
            refused(exc.bound or exc.reason, status, str(exc))
            return _unread(request, _error(503, str(exc), busy))
        except RateLimited as exc:
            metrics.error(f"rate_limited_{exc.reason}")
            status = 429
            refused(exc.bound, status, str(exc))
            answer = _error(429, str(exc), {"Retry-After": str(exc.retry_after)})
            return _unread(request, answer)
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
            if status == 408:
                refused("body_timeout", status, exc.text or exc.reason)
            if status in (408, 413):
                response.force_close()
            return response
        except ConnectionError:
            # The client went away mid-request (reset, or closed in the middle of its body):
            # nothing to answer, nothing written, and no bug either; counted, and logged once
            # a minute at most, since any client can do it at will.
            metrics.error("client_gone")
            status = 400
            throttled.warn("client_gone", "clients went away in the middle of a request")
            return _error(400, "connection lost")
        except Exception:
            # A database error worth retrying arrives as Unavailable (collector._state.database);
            # anything else is a bug.
            _log.exception("atrace collector: %s %s failed", request.method, request.path)
            metrics.error("internal")
            return _error(500, "internal error")
        finally:
            metrics.request(_route(request), request.method, status, time.perf_counter() - started)

    return observe


class _Throttled:
    """One log line per cause and minute at most, saying how often the cause struck since the
    last line: refusals under attack must not fill the disk."""

    __slots__ = ("_counts", "_last")

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def warn(self, cause: str, message: str) -> None:
        n = self._counts.get(cause, 0) + 1
        now = time.monotonic()
        last = self._last.get(cause)
        if last is not None and now - last < _LOG_EVERY:
            self._counts[cause] = n
            return
        self._last[cause] = now
        self._counts[cause] = 0
        _log.warning("atrace collector: %s (%d since the last such line)", message, n)


def _fairness(limits: Limits) -> tuple[Any, KeyGate]:
    """Per API key, after authentication: ingest (every POST) and queries (every other
    authenticated route) each under a token bucket and a cap on requests in flight; queries also
    under ``max_inflight_queries`` for all keys. The live tail spends a query token only (its
    own bounds are the tail's)."""
    ingest = KeyGate(
        limits.ingest_rate,
        limits.ingest_burst,
        limits.max_ingest_per_key,
        share=limits.pool_size,
        names=("ingest_rate", "max_ingest_per_key", "max_inflight_requests"),
    )
    queries = KeyGate(
        limits.query_rate,
        limits.query_burst,
        limits.max_queries_per_key,
        limits.max_inflight_queries,
        names=("query_rate", "max_queries_per_key", "max_inflight_queries"),
    )

    @web.middleware
    async def fairness(request: web.Request, handler: Handler) -> web.StreamResponse:
        project = request.get(PROJECT)
        if project is None:  # a public path
            return await handler(request)
        parsed = parse_key(request_key(request) or "")
        key = project if parsed is None else parsed[0]
        if request.method == "POST":
            gate, what = ingest, "ingest"
        else:
            gate, what = queries, "query"
        gate.enter(key, what)
        if request.path == "/v1/tail":
            gate.leave(key)
            return await handler(request)
        try:
            return await handler(request)
        finally:
            gate.leave(key)

    return fairness, queries


async def _healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 when PostgreSQL answers, 503 otherwise; with the live tail's state
    (``degraded`` while its listener is being restarted: ingest and queries still work)."""
    pool = request.app[POOL]
    hub = request.app.get(TAIL)
    tail = hub.health() if hub is not None else None
    try:
        async with pool.acquire(timeout=_HEALTH_TIMEOUT) as conn:
            await conn.fetchval("SELECT 1", timeout=_HEALTH_TIMEOUT)
    except Exception as exc:
        return web.json_response(
            {"status": "unavailable", "error": f"database: {type(exc).__name__}", "tail": tail},
            status=503,
        )
    return web.json_response({"status": "ok", "tail": tail})


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


def _pool(dsn: str, limits: Limits, size: int, name: str) -> Any:
    import asyncpg

    return asyncpg.create_pool(
        dsn,
        # No floor: during an outage a pool reconnecting in the background only adds noise.
        min_size=0,
        max_size=size,
        init=connection_init,
        reset=_reset,
        server_settings={"application_name": name},
        timeout=limits.connect_timeout,
        command_timeout=limits.command_timeout,
    )


def _database(dsn: str, schema: str, limits: Limits) -> Any:
    async def database(app: web.Application) -> AsyncIterator[None]:
        from .._postgres.schema import ensure_schema
        from ._tail import TailHub

        # Two pools: ingest (and key checks) apart from queries, so that no amount of querying
        # leaves an ingest without a connection.
        pool = await _pool(dsn, limits, limits.pool_size, "atrace-collector")
        try:
            query_pool = await _pool(dsn, limits, limits.query_pool_size, "atrace-collector-query")
        except BaseException:
            pool.terminate()
            raise
        try:
            async with pool.acquire(timeout=limits.connect_timeout) as conn:
                await ensure_schema(conn, schema)
            hub = TailHub(
                schema,
                queue_bytes=limits.tail_queue_bytes,
                total_bytes=limits.tail_total_bytes,
                max_subscribers=limits.max_tail_subscribers,
                max_per_key=limits.max_tail_per_key,
                keys=app[KEYS],
                retry_after=limits.retry_after,
            )
            hub.export(app[METRICS])
            # The tail listens on a connection of its own: the pools stay whole for requests.
            await hub.start(query_pool, dsn=dsn)
        except BaseException:
            pool.terminate()
            query_pool.terminate()
            raise
        app[POOL] = pool
        app[QUERY_POOL] = query_pool
        app[TAIL] = hub
        retention = None
        if limits.retention_days or limits.retention_max_size:
            retention = asyncio.create_task(_retention_loop(pool, schema, limits))
        try:
            yield
        finally:
            if retention is not None:
                retention.cancel()
                await asyncio.gather(retention, return_exceptions=True)
            try:
                await hub.stop()
            finally:
                for each in (pool, query_pool):
                    try:
                        await asyncio.wait_for(each.close(), _POOL_CLOSE_TIMEOUT)
                    except BaseException:
                        each.terminate()
                        raise

    return database


async def _retention_loop(pool: Any, schema: str, limits: Limits) -> None:
    """Retention at startup, then every ``retention_interval`` seconds; one collector at a time
    (``apply_retention`` holds an advisory lock), never failing the collector. Each round also
    makes the day partitions ahead, so a day with no writer never lacks its partition."""
    from .._postgres.retention import Keep, apply_retention
    from .._postgres.schema import ensure_partitions

    days = limits.retention_days or 36_500  # a size bound alone: no age limit to speak of
    keep = None
    if limits.retention_errors_days:
        keep = Keep(
            limits.retention_errors_days,
            limits.retention_slow_ms or None,
            limits.retention_keep_rate,
        )
    while True:
        try:
            async with pool.acquire(timeout=limits.connect_timeout) as conn:
                await ensure_partitions(conn, schema)
                report = await apply_retention(
                    conn,
                    schema,
                    days=days,
                    max_bytes=limits.retention_max_size or None,
                    keep=keep,
                )
            if report.dropped or report.default_rows or report.failed or report.skipped:
                _log.info("atrace collector: retention: %s", "; ".join(report.lines()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.warning("atrace collector: retention failed, tried again later: %s", exc)
        await asyncio.sleep(limits.retention_interval)


def make_app(dsn: str, *, schema: str = "atrace", limits: Limits | None = None) -> web.Application:
    """The collector application for PostgreSQL at ``dsn``.

    On startup: two asyncpg pools (ingest and queries), the schema created or migrated, the live
    tail started. On cleanup: the tail stopped and the pools closed. Run it with
    :func:`make_runner` (or :func:`serve`), which turns off aiohttp's own request decompression
    so that gzip bodies are inflated under ``limits.max_inflated``, and bounds connections and
    the time to send a request head.
    """
    from ._api import add_query_routes

    install_filters()  # no API key, password or credential in any log line of the collector
    schema = check_schema(schema)
    limits = limits or DEFAULT_LIMITS
    registry = Metrics()
    fairness, query_gate = _fairness(limits)
    keys = KeyStore(schema, ttl=limits.key_cache_ttl, pool_wait=limits.pool_wait)
    app = web.Application(
        middlewares=[
            _observe(registry, limits.retry_after),
            auth_middleware(keys, lambda: app[POOL], PUBLIC_PATHS),
            fairness,
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
    registry.gauge("inflight_bytes", lambda: app[INGEST].admission.bytes)
    registry.gauge("inflight_queries", lambda: query_gate.inflight)
    add_query_routes(app)
    app.cleanup_ctx.append(_database(dsn, schema, limits))
    return app


def _fd_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


class _Guard(asyncio.Protocol):
    """One accepted connection: refused at once past the caps, else handed to aiohttp's own
    protocol, and closed if it has not delivered a complete request head within
    ``header_timeout`` (later heads are bounded by the keep-alive time-out, set to the same)."""

    __slots__ = ("_address", "_gate", "_inner", "_tail", "_timer", "_transport")

    def __init__(self, gate: _Gate) -> None:
        self._gate = gate
        self._inner: Any = None
        self._transport: Any = None
        self._address: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self._gate
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        cause = gate.admit(address)
        if cause is not None:
            transport.abort()  # type: ignore[attr-defined]  # a socket transport
            return
        self._address = address
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(gate.header_timeout, self._expire)
        self._inner = gate.server()
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._gate.refused(
                "header_timeout",
                f"closed connections that sent no complete request head within "
                f"{self._gate.header_timeout} s",
            )
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-3:]
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._address is not None:
            self._gate.release(self._address)
            self._address = None
        if self._inner is not None:
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)
        self._transport = None


class _Gate:
    """The protocol factory handed to the listening socket: counts open connections in all and
    per client address, and makes a :class:`_Guard` for each."""

    def __init__(self, server: Any, limits: Limits, metrics: Metrics | None) -> None:
        self.server = server
        self.header_timeout = limits.header_timeout
        self.max_total = limits.max_connections
        fds = _fd_limit()
        if fds is not None:
            reserve = limits.pool_size + limits.query_pool_size + _FD_RESERVE
            self.max_total = max(1, min(self.max_total, fds - reserve))
        self.max_per_address = limits.max_connections_per_address
        self.open = 0
        self.per_address: dict[str, int] = {}
        self._metrics = metrics
        self._log = _Throttled()
        if metrics is not None:
            metrics.gauge("connections_open", lambda: self.open)

    def __call__(self) -> _Guard:
        return _Guard(self)

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; the cause if it must be closed instead."""
        if self.open >= self.max_total:
            self.refused(
                "max_connections", f"refused connections past {self.max_total} open in all"
            )
            return "max_connections"
        n = self.per_address.get(address, 0)
        if n >= self.max_per_address:
            self.refused(
                "per_address",
                f"refused connections past {self.max_per_address} open from one address",
            )
            return "per_address"
        self.per_address[address] = n + 1
        self.open += 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        n = self.per_address.get(address, 1) - 1
        if n:
            self.per_address[address] = n
        else:
            self.per_address.pop(address, None)

    def refused(self, cause: str, message: str) -> None:
        if self._metrics is not None:
            self._metrics.closed(cause)
        self._log.warn(cause, message)


class _Runner(CollectorRunner):
    """An AppRunner whose listening sockets make :class:`_Guard` connections."""

    __slots__ = ("_gate", "_limits")

    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits
        self._gate: _Gate | None = None

    @property
    def server(self) -> Any:
        inner = super().server
        if inner is None:
            return None
        if self._gate is None or self._gate.server is not inner:
            self._gate = _Gate(inner, self._limits, self.app.get(METRICS))
        return self._gate


def make_runner(
    app: web.Application, *, shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
) -> web.AppRunner:
    """An AppRunner with the collector's server options; ``cleanup()`` waits up to
    ``shutdown_timeout`` seconds for requests in flight.

    Its sites bound connections (``max_connections``, lowered below the process's descriptor
    limit, and ``max_connections_per_address``: further ones are closed at accept) and close a
    connection that has not sent a complete request head within ``header_timeout``.
    """
    limits = app.get(LIMITS) or DEFAULT_LIMITS
    return _Runner(
        app,
        limits,
        # The ingest path inflates gzip itself, bounded by max_inflated.
        auto_decompress=False,
        access_log=None,
        # Between requests, the next head must arrive within the header time-out too.
        keepalive_timeout=limits.header_timeout,
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
