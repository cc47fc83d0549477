"""PostgreSQL sink: binary COPY of each batch, in one transaction with its id in a ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import importlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .._delivery.retry import Verdict
from .._formats.pgcopy import HEADER, TRAILER, encode_rows
from .._pipeline.encode import COLUMNS, Row, sanitize_text
from .._postgres.schema import ensure_partitions, ensure_schema
from ..errors import MissingExtraError, SinkClosedError
from . import Batch

__all__ = ("COPY_SLICE", "PostgresSink", "broken_row", "classify", "connection_init", "copy_rows")

# PostgreSQL's timestamps count microseconds from 2000-01-01 UTC.
_PG_EPOCH_US = 946_684_800_000_000
_NS_PER_DAY = 86_400 * 1_000_000_000


def _ts_encode(ns: int) -> tuple[int]:
    return (ns // 1000 - _PG_EPOCH_US,)


def _ts_decode(value: tuple[int]) -> int:
    return (value[0] + _PG_EPOCH_US) * 1000


def _jsonb_encode(data: bytes) -> bytes:
    return b"\x01" + data


def _jsonb_decode(data: bytes) -> bytes:
    return data[1:]


async def connection_init(conn: Any) -> None:
    """Codecs for the sink's own connections: ts as integer nanoseconds, jsonb as JSON bytes.

    Rows then go to COPY exactly as the encoder built them, without a datetime or str per value.
    """
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_ts_encode, decoder=_ts_decode, format="tuple"
    )
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_encode, decoder=_jsonb_decode, format="binary"
    )


async def _off_loop(fn: Any, *args: Any) -> Any:
    # Slow set-up (importing asyncpg, starting the embedded server) runs in a worker thread so
    # the application's tasks keep running; at interpreter exit the default executor refuses
    # new work, and the call then runs inline.
    try:
        return await asyncio.to_thread(fn, *args)
    except RuntimeError:
        return fn(*args)


# SQLSTATE classes worth retrying: connection exceptions (08), insufficient resources such as
# too_many_connections (53), operator intervention such as admin_shutdown (57), system errors
# (58), and transaction rollbacks such as serialization_failure or deadlock (40). Everything else
# (bad data 22, constraint 23, syntax or missing objects 42, authorisation 28) fails the same way
# every time.
_RETRYABLE_CLASSES = ("08", "40", "53", "57", "58")


def classify(exc: BaseException) -> Verdict:
    """Whether a failed write is worth retrying."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return Verdict(sqlstate[:2] in _RETRYABLE_CLASSES, reason=f"SQLSTATE {sqlstate}")
    name = type(exc).__name__
    # asyncpg's client-side errors for a lost connection carry no SQLSTATE.
    # InternalClientError: a connection left mid-operation by an earlier failure; a new one works.
    if name in (
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "InterfaceError",
        "InternalClientError",
    ):
        return Verdict(True, reason=name)
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, EOFError)):
        return Verdict(True, reason=name)
    return Verdict(False, reason=name)


# Rows encoded per COPY data slice before the event loop gets a turn (~0.3-0.5 us a row).
COPY_SLICE = 500


def broken_row(row: Any, exc: Exception) -> Row:
    """A row that could not be COPYed, replaced by one saying why (the rest of the batch lands)."""
    ts = row[0] if isinstance(row, tuple) and row and type(row[0]) is int else time.time_ns()
    service = row[8] if isinstance(row, tuple) and len(row) > 8 and type(row[8]) is str else None
    detail = sanitize_text(str(exc), 4096)
    return (
        ts,
        0,
        40,
        None,
        None,
        None,
        None,
        0,
        service or "unknown",
        None,
        None,
        None,
        "atrace",
        "atrace: a row could not be written",
        None,
        type(exc).__name__,
        detail,
        None,
        None,
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
    """COPY ``rows`` (COLUMNS order, then ``extra_values`` for ``extra_columns`` on every row)
    into ``<schema>.records`` in binary, encoded and sent ``step`` rows at a time.

    The loop gets a turn between slices, so a large batch never holds it for long, and the
    connection sends one slice while the next is encoded.
    """

    async def source() -> AsyncIterator[bytes]:
        yield HEADER
        for start in range(0, len(rows), step):
            if start:
                await asyncio.sleep(0)
            yield encode_rows(rows, start, start + step, extra_values, broken_row)
        yield TRAILER

    await conn.copy_to_table(
        "records",
        schema_name=schema,
        columns=COLUMNS + extra_columns,
        source=source(),
        format="binary",
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

    def __repr__(self) -> str:
        return f"PostgresSink(schema={self.schema!r})"

    def classify(self, exc: BaseException) -> Verdict:
        """Retry connection loss, too many connections, serialization failure, shutdowns."""
        return classify(exc)

    async def open(self) -> None:
        """Connect, create or migrate the schema, and make partitions ahead."""
        try:
            asyncpg = sys.modules.get("asyncpg") or await _off_loop(
                importlib.import_module, "asyncpg"
            )
        except ImportError:
            raise MissingExtraError("asyncpg", "pg") from None
        self._partition_lock = None
        dsn = self.dsn
        if dsn is None:
            from .._postgres.embedded import embedded_dsn

            dsn = self.dsn = await _off_loop(embedded_dsn)
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
            if rows[-1][0] >= self._covered_until_ns - _NS_PER_DAY:
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
            await copy_rows(conn, schema, rows, step=self.copy_chunk)
            await conn.execute("COMMIT")
        except BaseException:
            # Whatever went wrong (a lost connection, a hung server, a time-out cancelling us),
            # the session is in an unknown state: drop it now rather than wait on a reset.
            conn.terminate()
            raise
        finally:
            await pool.release(conn)

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
