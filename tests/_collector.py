"""The collector under test: the real aiohttp app on 127.0.0.1 (port 0) over the test PostgreSQL.

Fixture (import it into a test module)::

    collector_server   function scope, async: a started :class:`CollectorServer` on a fresh schema

Helpers: :func:`make_rows` (valid rows of every kind), :func:`native_body` (a batch in the wire
format), :func:`raw_request` (a hand-written HTTP/1.1 request over a plain socket, for what
aiohttp's client will not send), :func:`atrace_command` (the installed console script).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest_asyncio
from aiohttp import web

from _helpers import wait_until
from atrace._emit.ids import new_span_id, new_trace_id
from atrace._formats.wire import encode_batch
from atrace._postgres.session import connection_init
from atrace._records import COLUMNS, Row
from atrace.collector._app import METRICS, make_app, make_runner
from atrace.collector._auth import create_key
from atrace.collector._limits import Limits
from atrace.collector._prometheus import Metrics
from atrace.sinks import Batch

__all__ = (
    "CollectorServer",
    "Response",
    "atrace_command",
    "collector_server",
    "make_rows",
    "native_body",
    "raw_request",
    "wait_until",
)


def atrace_command() -> list[str]:
    """The installed ``atrace`` console script next to this interpreter, else ``-m atrace.cli``."""
    beside = Path(sys.executable).with_name("atrace")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("atrace")
    return [found] if found else [sys.executable, "-m", "atrace.cli"]


class Response:
    """What a request got back: status, headers, body, and the body as JSON when it is."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


class CollectorServer:
    """``make_app`` run by ``make_runner`` on 127.0.0.1 at a free port; ``.url`` once started.

    ``db_dsn`` reaches PostgreSQL directly for set-up and checks, while the app itself may be
    given another DSN (through a fault proxy).
    """

    def __init__(
        self,
        db_dsn: str,
        schema: str,
        *,
        app_dsn: str | None = None,
        limits: Limits | None = None,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.db_dsn = db_dsn
        self.app_dsn = app_dsn or db_dsn
        self.schema = schema
        self.limits = limits
        self.shutdown_timeout = shutdown_timeout
        self.url = ""
        self.app: web.Application | None = None
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Start the app and listen."""
        self.app = make_app(self.app_dsn, schema=self.schema, limits=self.limits)
        self.runner = make_runner(self.app, shutdown_timeout=self.shutdown_timeout)
        await self.runner.setup()
        try:
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
        except BaseException:
            await self.runner.cleanup()
            raise
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Shut the server down (gracefully), then close the client session; safe to repeat."""
        session, self.session = self.session, None
        runner, self.runner = self.runner, None
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            if session is not None:
                await session.close()

    async def __aenter__(self) -> CollectorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def metrics(self) -> Metrics:
        """The app's metrics registry."""
        assert self.app is not None
        return self.app[METRICS]

    async def create_key(self, project: str = "alpha", name: str | None = None) -> str:
        """A new API key for ``project``."""
        conn = await asyncpg.connect(self.db_dsn)
        try:
            return await create_key(conn, self.schema, project, name)
        finally:
            await conn.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """One request with the shared client session; the key goes as a Bearer token."""
        assert self.session is not None
        sent = dict(headers or {})
        if key is not None:
            sent.setdefault("Authorization", f"Bearer {key}")
        if content_type is not None:
            sent["Content-Type"] = content_type
        async with self.session.request(
            method, self.url + path, data=body, headers=sent, compress=None
        ) as resp:
            return Response(resp.status, resp.headers, await resp.read())

    async def post(self, path: str, body: bytes, key: str | None, **kw: Any) -> Response:
        """POST ``body`` to ``path``."""
        return await self.request("POST", path, key=key, body=body, **kw)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of a query, read with atrace's codecs (ts as int ns, jsonb as bytes)."""
        conn = await asyncpg.connect(self.db_dsn)
        try:
            await connection_init(conn)
            return await conn.fetch(sql.replace("{schema}", self.schema), *args)
        finally:
            await conn.close()

    async def records(self, project: str | None = None) -> list[asyncpg.Record]:
        """Every stored record (of ``project`` if given), oldest first."""
        return await self.fetch(
            "SELECT * FROM {schema}.records WHERE $1::text IS NULL OR project = $1 "
            "ORDER BY ts, span_id NULLS FIRST, kind",
            project,
        )

    async def count(self, project: str | None = None) -> int:
        """How many records are stored (for ``project`` if given)."""
        return len(await self.records(project))


@pytest_asyncio.fixture
async def collector_server(pg_schema: tuple[str, str]) -> AsyncIterator[CollectorServer]:
    """A started collector over a fresh schema, shut down after the test."""
    dsn, schema = pg_schema
    server = CollectorServer(dsn, schema)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def make_rows(n: int, *, service: str = "svc", trace_id: str | None = None) -> list[Row]:
    """``n`` valid rows cycling through every kind, with attrs, errors and locations."""
    trace = trace_id or new_trace_id()
    now = time.time_ns() // 1000 * 1000  # PostgreSQL keeps microseconds
    rows: list[Row] = []
    root = new_span_id()
    for i in range(n):
        kind = i % 4
        failed = i % 7 == 3
        rows.append(
            (
                now + i * 1000,
                kind,
                40 if failed else 20,
                trace,
                root if kind == 0 else new_span_id(),
                None if kind == 0 else root,
                None if kind in (0, 1) else 1000 + i,
                2 if failed else (0 if kind in (0, 1) else 1),
                service,
                "test",
                "host-1",
                4242,
                f"op-{i}",
                f"message {i}" if kind == 0 else None,
                f'{{"i": {i}, "tag": "t{i % 3}"}}'.encode(),
                "ValueError" if failed else None,
                "bad value" if failed else None,
                "Traceback ..." if failed else None,
                f"app.py:{i + 1}",
                None if kind == 0 else 1 + i % 5,
                f"vendor=v{i}" if kind >= 2 and i % 2 else None,
                None if kind == 0 else 3,
                "gave up" if failed and kind >= 2 else None,
                # (as PostgreSQL's jsonb writes it back: shorter keys first, ", " and ": ")
                f'[{{"span_id": "{i:016x}", "trace_id": "{trace}"}}]'.encode()
                if kind == 3 and i % 2
                else None,
                b'{"severity_text": "Information"}' if kind == 0 and i % 8 == 4 else None,
                None if i % 5 else -(i + 1),  # a resource id (its document sent apart)
            )
        )
    assert all(len(r) == len(COLUMNS) for r in rows)
    return rows


def native_body(
    rows: list[Row], fmt: str = "msgpack", batch_id: uuid.UUID | None = None
) -> tuple[uuid.UUID, bytes]:
    """A batch of ``rows`` as a ``/v1/ingest`` body; returns its id too."""
    batch = Batch(rows, batch_id)
    return batch.id, encode_batch(batch, fmt)


async def raw_request(
    host: str, port: int, head: bytes, chunks: AsyncIterator[bytes] | None = None
) -> tuple[int, bytes, int]:
    """Send ``head`` (request line and headers) then ``chunks`` while reading the answer.

    Stops sending as soon as a status line arrives. Returns the status, the raw response and
    how many body bytes were sent.
    """
    reader, writer = await asyncio.open_connection(host, port)
    sent = 0
    try:
        writer.write(head)
        await writer.drain()

        async def pump() -> None:
            nonlocal sent
            if chunks is None:
                return
            async for chunk in chunks:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(pump())
        status_line = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        try:
            await asyncio.wait({sender, status_line}, return_when=asyncio.FIRST_COMPLETED)
            if not status_line.done():
                await status_line
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        head_in = status_line.result()
        try:
            rest = await asyncio.wait_for(reader.read(65536), 5)
        except (asyncio.TimeoutError, ConnectionError):
            rest = b""
        status = int(head_in.split(b" ", 2)[1])
        return status, head_in + rest, sent
    finally:
        writer.transport.abort()


def child_env() -> dict[str, str]:
    """The environment for an ``atrace`` subprocess: this one, with ``src`` importable."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parent.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env
