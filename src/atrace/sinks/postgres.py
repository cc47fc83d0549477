"""PostgreSQL sink: binary COPY of each batch, in one transaction with its id in a ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import importlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from .._delivery.classify import Verdict, classify
from .._formats.resources import named_by
from .._pipeline.sanitize import sanitize_text
from .._postgres import session
from .._postgres.schema import ensure_partitions, ensure_schema
from .._postgres.session import COPY_SLICE, connection_init
from .._records import SERVICE, TS, Batch, Row
from .._records import broken_row as error_row
from ..errors import MissingExtraError, SinkClosedError
from ._base import off_loop

__all__ = ("COPY_SLICE", "PostgresSink", "broken_row", "classify", "connection_init", "copy_rows")

_NS_PER_DAY = 86_400 * 1_000_000_000


def broken_row(row: Any, exc: Exception) -> Row:
    """A row that could not be COPYed, replaced by one saying why (the rest of the batch lands)."""
    ts = row[TS] if isinstance(row, tuple) and row and type(row[TS]) is int else None
    service = (
        row[SERVICE]
        if isinstance(row, tuple) and len(row) > SERVICE and type(row[SERVICE]) is str
        else None
    )
    return error_row(
        ts,
        type(exc).__name__,
        sanitize_text(str(exc), 4096),
        name="atrace",
        message="atrace: a row could not be written",
        service=service or "unknown",
    )


async def copy_rows(
    conn: Any,
    schema: str,
    rows: Sequence[Row],
    *,
    extra_columns: tuple[str, ...] = (),
    extra_values: tuple[Any, ...] = (),
    step: int = COPY_SLICE,
) -> None:
    """COPY ``rows`` into ``<schema>.records`` as the sink does: in binary, ``step`` rows at a
    time, each row that cannot be encoded written as a :func:`broken_row` in its place."""
    await session.copy_rows(
        conn,
        schema,
        rows,
        extra_columns=extra_columns,
        extra_values=extra_values,
        step=step,
        on_error=broken_row,
    )


async def _keep_session(conn: Any) -> None:
    # The sink's connections run nothing but its own statements, so the round trip of the
    # pool's default reset (RESET ALL, UNLISTEN ...) on every release buys nothing.
    return None


class PostgresSink:
    """Writes batches to ``<schema>.records`` with binary COPY, one transaction per batch.

    ``dsn=None`` means the embedded server (started in a worker thread on open). The schema is
    created or migrated on open; day partitions are kept ahead of the newest row written.
    """

    name = "postgresql"

    def __init__(
        self,
        dsn: str | None,
        *,
        schema: str = "atrace",
        pool_size: int = 2,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
        copy_chunk: int = COPY_SLICE,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.copy_chunk = copy_chunk
        # Batches may be written side by side, one per connection: rows carry their own time.
        self.concurrency = pool_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._pool: Any = None
        # Names this destination's spill directory, the same in every process writing here.
        where = dsn or "embedded"
        digest = hashlib.sha256(f"{where}|{schema}".encode()).hexdigest()[:12]
        self.spill_key = f"postgresql-{schema}-{digest}"
        self._covered_until_ns = 0
        self._partition_lock: asyncio.Lock | None = None
        # The resource documents (ids) this sink has stored: each is written once.
        self._resources_stored: set[int] = set()

    def __repr__(self) -> str:
        return f"PostgresSink(schema={self.schema!r})"

    def classify(self, exc: BaseException) -> Verdict:
        """Retry connection loss, too many connections, serialization failure, shutdowns."""
        return classify(exc)

    async def open(self) -> None:
        """Connect, create or migrate the schema, and make partitions ahead."""
        try:
            asyncpg: Any = sys.modules.get("asyncpg") or await off_loop(
                importlib.import_module, "asyncpg", offload=True
            )
        except ImportError:
            raise MissingExtraError("asyncpg", "pg") from None
        self._partition_lock = None
        dsn = self.dsn
        if dsn is None:
            from .._postgres.embedded import embedded_dsn

            dsn = self.dsn = await off_loop(embedded_dsn, offload=True)
        if self._pool is not None:  # a half-finished earlier open: never leave its connections
            self._pool.terminate()
            self._pool = None
        pool = await asyncpg.create_pool(
            dsn,
            # No floor: a pool that keeps reconnecting in the background during an outage only
            # adds noise; connections are made when a batch needs one.
            min_size=0,
            max_size=self.pool_size,
            init=connection_init,
            reset=_keep_session,
            # Operators can tell atrace's sessions apart in pg_stat_activity.
            server_settings={"application_name": "atrace"},
            timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
        )
        try:
            conn = await pool.acquire()
            try:
                await ensure_schema(conn, self.schema)
                await self._extend_partitions(conn)
            except BaseException:
                conn.terminate()
                raise
            finally:
                await pool.release(conn)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def _extend_partitions(self, conn: Any) -> None:
        if self._partition_lock is None:
            # Made here, on the loop that uses it: a sink may be reopened on another loop.
            self._partition_lock = asyncio.Lock()
        async with self._partition_lock:  # two writers would race on the same CREATE TABLE
            if self._covered_until_ns and not self._needs_partitions_now():
                return
            last = await ensure_partitions(conn, self.schema)
            end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
            self._covered_until_ns = int(end.timestamp()) * 1_000_000_000

    def _needs_partitions_now(self) -> bool:
        return time.time_ns() >= self._covered_until_ns - _NS_PER_DAY

    async def write(self, batch: Batch) -> None:
        """Store the batch once: a batch id already in the ledger makes this a no-op."""
        pool = self._pool
        if pool is None:
            raise SinkClosedError("not open", sink=self.name, batch_size=len(batch))
        rows = batch.rows
        if not rows:
            return
        schema = self.schema
        conn = await pool.acquire()
        try:
            # Rows come roughly in time order; a late outlier lands in the default partition.
            if rows[-1][TS] >= self._covered_until_ns - _NS_PER_DAY:
                await self._extend_partitions(conn)
            # BEGIN with the ledger entry, COPY, COMMIT. The id is a UUID atrace made (str() of
            # uuid.UUID), so inlining it in the SQL is safe.
            status = await conn.execute(
                f"BEGIN; INSERT INTO {schema}.batches (batch_id, records) "
                f"VALUES ('{batch.id}', {len(rows):d}) ON CONFLICT DO NOTHING"
            )
            if status != "INSERT 0 1":  # stored before: write nothing twice
                await conn.execute("ROLLBACK")
                return
            docs = self._new_resources(rows)
            await session.store_resources(conn, schema, "default", docs)
            await copy_rows(conn, schema, rows, step=self.copy_chunk)
            await conn.execute("COMMIT")
            self._resources_stored.update(docs)
        except BaseException:
            # Whatever went wrong (a lost connection, a hung server, a time-out cancelling us),
            # the session is in an unknown state: drop it now rather than wait on a reset.
            conn.terminate()
            raise
        finally:
            await pool.release(conn)

    def _new_resources(self, rows: list[Any]) -> dict[int, bytes]:
        # This process's resource documents the rows name that this sink has not stored yet.
        docs = named_by(rows)
        return {rid: doc for rid, doc in docs.items() if rid not in self._resources_stored}

    async def close(self) -> None:
        """Close the pool; the sink can be opened again."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except BaseException:
                # Out of time or cancelled: never leave connections behind.
                pool.terminate()
                raise
