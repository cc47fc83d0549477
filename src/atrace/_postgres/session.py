"""A PostgreSQL session as atrace uses it: codecs on each connection, binary COPY of rows.

Shared by the PostgreSQL sink, the collector and the command line; which errors of a session
are worth retrying is in the one table of ``atrace._delivery.classify``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from .._formats.pgcopy import HEADER, TRAILER, copy_columns, encode_rows
from .._records import Row

__all__ = ("COPY_SLICE", "connection_init", "copy_rows", "store_resources")

# PostgreSQL's timestamps count microseconds from 2000-01-01 UTC.
PG_EPOCH_US = 946_684_800_000_000
# Rows encoded per COPY data slice before the event loop gets a turn (~0.3-0.5 us a row).
COPY_SLICE = 500


def _ts_encode(ns: int) -> tuple[int]:
    return (ns // 1000 - PG_EPOCH_US,)


def _ts_decode(value: tuple[int]) -> int:
    return (value[0] + PG_EPOCH_US) * 1000


def _jsonb_encode(data: bytes) -> bytes:
    return b"\x01" + data


def _jsonb_decode(data: bytes) -> bytes:
    return data[1:]


async def connection_init(conn: Any) -> None:
    """Codecs for atrace's own connections: ts as integer nanoseconds, jsonb as JSON bytes.

    Rows then go to COPY exactly as the encoder built them, without a datetime or str per value.
    """
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_ts_encode, decoder=_ts_decode, format="tuple"
    )
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_encode, decoder=_jsonb_decode, format="binary"
    )


async def copy_rows(
    conn: Any,
    schema: str,
    rows: Sequence[Row],
    *,
    extra_columns: tuple[str, ...] = (),
    extra_values: tuple[Any, ...] = (),
    step: int = COPY_SLICE,
    on_error: Callable[[Any, Exception], Row] | None = None,
) -> None:
    """COPY ``rows`` (COLUMNS order, then ``extra_values`` for ``extra_columns`` on every row)
    into ``<schema>.records`` in binary, encoded and sent ``step`` rows at a time.

    The loop gets a turn between slices, so a large batch never holds it for long, and the
    connection sends one slice while the next is encoded. A row that cannot be encoded raises,
    unless ``on_error(row, exc)`` gives the row to write in its place.
    """

    # Only the optional columns the batch has values in: each field costs PostgreSQL.
    columns, keep = copy_columns(rows)

    async def source() -> AsyncIterator[bytes]:
        yield HEADER
        for start in range(0, len(rows), step):
            if start:
                await asyncio.sleep(0)
            yield encode_rows(rows, start, start + step, extra_values, on_error, keep)
        yield TRAILER

    await conn.copy_to_table(
        "records",
        schema_name=schema,
        columns=columns + extra_columns,
        source=source(),
        format="binary",
    )


async def store_resources(conn: Any, schema: str, project: str, docs: Mapping[int, bytes]) -> None:
    """Write resource and scope documents (id → JSON bytes) for ``project``, each once: one
    already stored is left as it is. Run in the transaction that writes the records naming
    them, so that no committed record names a document that is not there."""
    if not docs:
        return
    await conn.execute(
        f"INSERT INTO {schema}.resources (project, resource_id, doc) "
        "SELECT $1, r.id, r.doc FROM unnest($2::bigint[], $3::jsonb[]) AS r(id, doc) "
        "ON CONFLICT DO NOTHING",
        project,
        list(docs),
        list(docs.values()),
    )
