"""The PostgreSQL schema atrace owns: DDL, versioned migrations, and day partitions made ahead."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Any

__all__ = (
    "PARTITION_DAYS_AHEAD",
    "SCHEMA_VERSION",
    "TEXT_VECTOR",
    "ensure_partitions",
    "ensure_schema",
    "ensure_text_index",
    "migrations",
    "partition_name",
    "tail_channel",
)

SCHEMA_VERSION = 7
PARTITION_DAYS_AHEAD = 3
_log = logging.getLogger("atrace.schema")

# The full-text document of a row; queries must use the same expression to use the index.
TEXT_VECTOR = "to_tsvector('simple'::regconfig, coalesce(name, '') || ' ' || coalesce(message, ''))"


def tail_channel(schema: str) -> str:
    """The NOTIFY channel announcing rows committed to ``<schema>.records`` (live tails)."""
    name = f"atrace_tail_{schema}"
    if len(name.encode()) <= 63:  # PostgreSQL's limit on a channel name
        return name
    return f"atrace_tail_{hashlib.sha256(schema.encode()).hexdigest()[:32]}"


def migrations(schema: str) -> list[tuple[int, list[str]]]:
    """``(version, statements)`` in order; each version is applied once, in one transaction."""
    s = schema
    return [
        (
            1,
            [
                f"""CREATE TABLE {s}.records (
                    ts            timestamptz NOT NULL,
                    kind          smallint    NOT NULL,
                    level         smallint    NOT NULL,
                    trace_id      uuid,
                    span_id       bigint,
                    parent_id     bigint,
                    duration_ns   bigint,
                    status        smallint    NOT NULL DEFAULT 0,
                    service       text        NOT NULL,
                    environment   text,
                    host          text,
                    pid           integer,
                    name          text,
                    message       text,
                    attrs         jsonb,
                    error_type    text,
                    error_message text,
                    stack_trace   text,
                    location      text
                ) PARTITION BY RANGE (ts)""",
                # Rows outside every day partition (a skewed clock) land here instead of failing.
                f"CREATE TABLE {s}.records_default PARTITION OF {s}.records DEFAULT",
                f"CREATE INDEX records_trace_idx ON {s}.records (trace_id, ts)",
                f"CREATE INDEX records_service_ts_idx ON {s}.records (service, ts DESC)",
                f"CREATE INDEX records_errors_idx ON {s}.records (ts DESC) WHERE level >= 40",
                f"""CREATE TABLE {s}.batches (
                    batch_id   uuid        PRIMARY KEY,
                    records    integer     NOT NULL,
                    written_at timestamptz NOT NULL DEFAULT now()
                )""",
            ],
        ),
        (
            2,
            [
                # Every row belongs to a project: the collector's API keys are per project and a
                # key never reads or writes another project's rows. Direct writers use 'default'.
                f"ALTER TABLE {s}.records ADD COLUMN project text NOT NULL DEFAULT 'default'",
                f"DROP INDEX {s}.records_trace_idx",
                f"DROP INDEX {s}.records_service_ts_idx",
                f"DROP INDEX {s}.records_errors_idx",
                f"CREATE INDEX records_trace_idx ON {s}.records (project, trace_id, ts)",
                f"CREATE INDEX records_service_ts_idx ON {s}.records (project, service, ts DESC)",
                f"CREATE INDEX records_ts_idx ON {s}.records (project, ts DESC)",
                f"""CREATE INDEX records_errors_idx ON {s}.records (project, ts DESC)
                    WHERE level >= 40 OR status = 2""",
                # The ledger is per project: one project's batch ids never shadow another's.
                f"ALTER TABLE {s}.batches ADD COLUMN project text NOT NULL DEFAULT 'default'",
                f"ALTER TABLE {s}.batches DROP CONSTRAINT batches_pkey",
                f"ALTER TABLE {s}.batches ADD PRIMARY KEY (project, batch_id)",
                # API keys of the collector: only a SHA-256 of the secret is stored.
                f"""CREATE TABLE {s}.api_keys (
                    key_id     text        PRIMARY KEY,
                    project    text        NOT NULL,
                    name       text,
                    secret_sha bytea       NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    revoked_at timestamptz
                )""",
            ],
        ),
        (
            3,
            [
                # Live tails in every collector see every committed row, whoever wrote it (a
                # collector's ingest or a PostgresSink): once per INSERT or COPY statement, one
                # NOTIFY per project carries the transaction id and the statement's time range;
                # a listener fetches exactly those rows by (project, ts range, xmin). NOTIFY is
                # sent at COMMIT only, so a rolled-back batch is never announced.
                f"""CREATE FUNCTION {s}.records_announce() RETURNS trigger
                    LANGUAGE plpgsql AS $fn$
                    BEGIN
                        PERFORM pg_notify(
                            {_literal(tail_channel(s))},
                            json_build_object(
                                'p', g.project,
                                'x', txid_current() % 4294967296,
                                'a', (extract(epoch FROM g.lo) * 1000000)::bigint,
                                'b', (extract(epoch FROM g.hi) * 1000000)::bigint,
                                'n', g.n
                            )::text)
                        FROM (SELECT project, min(ts) AS lo, max(ts) AS hi, count(*) AS n
                              FROM new_rows GROUP BY project) AS g;
                        RETURN NULL;
                    END
                    $fn$""",
                f"""CREATE TRIGGER records_announce AFTER INSERT ON {s}.records
                    REFERENCING NEW TABLE AS new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION {s}.records_announce()""",
            ],
        ),
        (
            4,
            [
                # Time ascending in every index: new rows then land on the rightmost leaf, which
                # PostgreSQL inserts into without a descent; with ts DESC each row went to the
                # leftmost leaf and the (project, service, ts) index alone halved COPY speed.
                # Newest-first queries read the same indexes backwards.
                f"DROP INDEX {s}.records_service_ts_idx",
                f"DROP INDEX {s}.records_ts_idx",
                f"DROP INDEX {s}.records_errors_idx",
                f"CREATE INDEX records_service_ts_idx ON {s}.records (project, service, ts)",
                f"CREATE INDEX records_ts_idx ON {s}.records (project, ts)",
                f"""CREATE INDEX records_errors_idx ON {s}.records (project, ts)
                    WHERE level >= 40 OR status = 2""",
            ],
        ),
        (
            5,
            [
                # OpenTelemetry's and W3C's span context and status, kept as they came: the
                # span's kind, its tracestate and trace flags, the status description apart
                # from the error; and the nanoseconds of ts that timestamptz cannot hold (null
                # for 0), so that a time reads back exact. All null on older rows.
                f"""ALTER TABLE {s}.records
                    ADD COLUMN span_kind smallint,
                    ADD COLUMN trace_state text,
                    ADD COLUMN trace_flags smallint,
                    ADD COLUMN status_message text,
                    ADD COLUMN ts_frac smallint""",
            ],
        ),
        (
            6,
            [
                # A span's links, and what OpenTelemetry sent that has no column of its own
                # (a log's severity number and text, observed time and typed body, a span
                # event's mark, an exception event's time and other attributes, the types of
                # values JSON cannot hold): null on rows that have none.
                f"""ALTER TABLE {s}.records
                    ADD COLUMN links jsonb,
                    ADD COLUMN otlp jsonb""",
            ],
        ),
        (
            7,
            [
                # Where a record came from, kept as OpenTelemetry sends it: the resource (all of
                # its attributes, service.name and the rest) and the instrumentation scope,
                # stored once per distinct pair and project; a record names its pair by id (a
                # hash of the document), null when its columns say it all.
                f"""CREATE TABLE {s}.resources (
                    project     text        NOT NULL,
                    resource_id bigint      NOT NULL,
                    doc         jsonb       NOT NULL,
                    first_seen  timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (project, resource_id)
                )""",
                f"ALTER TABLE {s}.records ADD COLUMN resource_id bigint",
            ],
        ),
    ]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def ensure_schema(conn: Any, schema: str) -> int:
    """Create or migrate the schema to SCHEMA_VERSION; safe when many processes start at once."""
    current = await _version(conn, schema)
    if current >= SCHEMA_VERSION:
        return current
    async with conn.transaction():
        # One migrator at a time across processes; the others wait, then find nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"atrace:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {schema}.schema_version (
                    version    integer     PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )"""
        )
        current = await conn.fetchval(
            f"SELECT coalesce(max(version), 0) FROM {schema}.schema_version"
        )
        for version, statements in migrations(schema):
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                f"INSERT INTO {schema}.schema_version (version) VALUES ($1)", version
            )
            current = version
    await ensure_partitions(conn, schema)
    return int(current)


async def _version(conn: Any, schema: str) -> int:
    exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schema_version")
    if exists is None:
        return 0
    return int(
        await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {schema}.schema_version")
    )


async def ensure_text_index(conn: Any, schema: str) -> None:
    """Create the full-text index (GIN over TEXT_VECTOR) if it is missing.

    Opt-in (``atrace db init --text-index``): it makes ``q`` searches index-backed instead of a
    filter over the time range, and costs about half of COPY throughput, so it is not part of
    the default schema. Queries use the same expression either way and return the same rows.
    """
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS records_text_idx ON {schema}.records USING gin ({TEXT_VECTOR})"
    )


def partition_name(day: dt.date) -> str:
    """The partition table holding one UTC day."""
    return f"records_{day:%Y%m%d}"


async def _move_out_of_default(
    conn: Any, schema: str, name: str, day: dt.date, nxt: dt.date
) -> None:
    """Make ``day``'s partition from the rows the default partition holds for it.

    Rows for a day with no partition land in the default one (a record far ahead or behind,
    or one written before the partitions were made); while they sit there, that day's partition
    cannot be created, for any tenant. In one transaction, with inserts into the default
    partition held back: a table of the parent's shape, the rows moved into it, attached as the
    day's partition (PostgreSQL builds its indexes). Any failure leaves everything as it was.
    """
    # Literals, not parameters: the collector's connections carry their own timestamp codec.
    start, end = f"'{day.isoformat()} 00:00:00+00'", f"'{nxt.isoformat()} 00:00:00+00'"
    bounds = f"FROM ({start}) TO ({end})"
    try:
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {schema}.records_default IN EXCLUSIVE MODE")
            await conn.execute(
                f"CREATE TABLE {schema}.{name} (LIKE {schema}.records INCLUDING DEFAULTS "
                "INCLUDING CONSTRAINTS)"
            )
            moved = await conn.execute(
                f"WITH moved AS (DELETE FROM {schema}.records_default "
                f"WHERE ts >= {start} AND ts < {end} RETURNING *) "
                f"INSERT INTO {schema}.{name} SELECT * FROM moved"
            )
            await conn.execute(
                f"ALTER TABLE {schema}.records ATTACH PARTITION {schema}.{name} FOR VALUES {bounds}"
            )
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == "42P07":
            return  # another process made it meanwhile
        _log.warning("atrace: could not create partition %s.%s: %s", schema, name, exc)
        return
    _log.info("atrace: partition %s.%s made from %s", schema, name, moved)


async def ensure_partitions(
    conn: Any, schema: str, *, today: dt.date | None = None, ahead: int = PARTITION_DAYS_AHEAD
) -> dt.date:
    """Create day partitions from yesterday to ``ahead`` days on; returns the last day covered."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    day = today - dt.timedelta(days=1)
    last = today + dt.timedelta(days=ahead)
    while day <= last:
        nxt = day + dt.timedelta(days=1)
        name = partition_name(day)
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {schema}.{name} PARTITION OF {schema}.records "
                f"FOR VALUES FROM ('{day.isoformat()} 00:00:00+00') "
                f"TO ('{nxt.isoformat()} 00:00:00+00')"
            )
        except Exception as exc:
            state = getattr(exc, "sqlstate", None)
            if state in ("42P07", "23505"):
                pass  # another process created it at the same moment
            elif state == "42P17":
                pass  # the day is covered already: its traces kept by retention
            elif state == "23514":
                # Rows already in the default partition for that day block it
                # (check_violation): move them into the day's own table, then attach it.
                await _move_out_of_default(conn, schema, name, day, nxt)
            else:
                raise  # a lost connection and the like: the caller's to retry
        day = nxt
    return last
