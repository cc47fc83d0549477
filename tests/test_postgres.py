"""PostgreSQL sink against a real server: schema, rows, links, sanitising, exactly-once batches."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

import atrace
from atrace._formats.pgcopy import COPY_COLUMNS
from atrace._pipeline.encode import Encoder
from atrace._postgres.schema import SCHEMA_VERSION, ensure_schema, partition_name
from atrace._postgres.session import connection_init
from atrace._postgres.session import copy_rows as session_copy_rows
from atrace._records import COLUMNS
from atrace.sinks import Batch
from atrace.sinks.postgres import PostgresSink, copy_rows


@pytest.fixture
async def db(pg_schema: tuple[str, str]) -> AsyncIterator[Any]:
    """A plain connection to the test database (no atrace codecs)."""
    dsn, _ = pg_schema
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture
def pg_configured(pg_schema: tuple[str, str]) -> tuple[str, str]:
    """atrace configured to write to this test's schema."""
    dsn, schema = pg_schema
    atrace.configure(service="pg-test", sink=dsn, schema=schema, flush_interval=0.05)
    return pg_schema


async def fetch(conn: Any, schema: str, where: str = "true", *args: Any) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT * FROM {schema}.records WHERE {where} ORDER BY ts", *args)
    out = []
    for r in rows:
        d = dict(r)
        d["attrs"] = orjson.loads(d["attrs"]) if d["attrs"] is not None else None
        d["trace_id"] = d["trace_id"].hex if d["trace_id"] is not None else None
        out.append(d)
    return out


class TestSchema:
    async def test_created_on_first_use_and_idempotent(
        self, pg_schema: tuple[str, str], db: Any
    ) -> None:
        """The schema is made at the current version with partitions ahead, indexes, ledger."""
        _, schema = pg_schema
        assert await ensure_schema(db, schema) == SCHEMA_VERSION
        assert await ensure_schema(db, schema) == SCHEMA_VERSION
        tables = {
            r["tablename"]
            for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        }
        today = dt.datetime.now(dt.timezone.utc).date()
        for delta in range(-1, 4):
            assert partition_name(today + dt.timedelta(days=delta)) in tables
        assert {"records", "records_default", "batches", "schema_version"} <= tables
        indexes = {
            r["indexname"]
            for r in await db.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema
            )
        }
        assert {"records_trace_idx", "records_service_ts_idx", "records_errors_idx"} <= indexes
        kind = await db.fetchval(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = 'records'",
            schema,
        )
        assert kind == b"p"  # partitioned

    async def test_concurrent_initialisation(self, pg_schema: tuple[str, str]) -> None:
        """Several processes initialising at once do not collide."""
        dsn, schema = pg_schema
        conns = [await asyncpg.connect(dsn) for _ in range(4)]
        try:
            versions = await asyncio.gather(*(ensure_schema(c, schema) for c in conns))
        finally:
            for c in conns:
                await c.close()
        assert versions == [SCHEMA_VERSION] * 4


class TestRows:
    async def test_concurrent_tasks_links_and_counts(
        self, pg_configured: tuple[str, str], db: Any
    ) -> None:
        """100 concurrent tasks with nested spans land with exact counts, links and trace ids."""
        _, schema = pg_configured

        async def request(i: int) -> None:
            async with atrace.span("request", i=i):
                for step in range(2):
                    async with atrace.span("step", i=i, step=step):
                        await asyncio.sleep(0)
                        atrace.info("progress", i=i, step=step)

        await asyncio.gather(*(request(i) for i in range(100)))
        assert await atrace.aflush()
        rows = await fetch(db, schema)
        roots = {r["attrs"]["i"]: r for r in rows if r["name"] == "request"}
        steps = [r for r in rows if r["name"] == "step"]
        logs = [r for r in rows if r["kind"] == 0]
        assert (len(roots), len(steps), len(logs)) == (100, 200, 200)
        assert len({r["trace_id"] for r in roots.values()}) == 100
        for s in steps:
            root = roots[s["attrs"]["i"]]
            assert s["parent_id"] == root["span_id"] and s["trace_id"] == root["trace_id"]
            assert s["kind"] == 3 and s["status"] == 0 and s["span_kind"] == 1
            assert s["trace_flags"] == root["trace_flags"] == 3 and s["trace_state"] is None
        step_ids = {(s["attrs"]["i"], s["attrs"]["step"]): s["span_id"] for s in steps}
        for log in logs:
            assert log["span_id"] == step_ids[(log["attrs"]["i"], log["attrs"]["step"])]
            assert log["parent_id"] is None
        assert all(r["service"] == "pg-test" and r["pid"] and r["host"] for r in rows)

    async def test_status_and_error_fields(self, pg_configured: tuple[str, str], db: Any) -> None:
        """A failed span and an error log store status, level, type, message and stack."""
        _, schema = pg_configured
        with pytest.raises(ZeroDivisionError):
            async with atrace.span("divide"):
                1 / 0  # noqa: B018
        try:
            raise LookupError("no such order")
        except LookupError:
            atrace.exception("lookup")
        await atrace.aflush()
        span, log = await fetch(db, schema, "true")
        assert (span["status"], span["level"], span["error_type"]) == (2, 40, "ZeroDivisionError")
        assert span["error_message"] == "division by zero"
        assert "1 / 0" in span["stack_trace"]
        assert (log["level"], log["error_type"], log["error_message"]) == (
            40,
            "LookupError",
            "no such order",
        )

    async def test_span_context_and_status_message_columns(
        self, pg_configured: tuple[str, str], db: Any
    ) -> None:
        """A span's kind, tracestate, trace flags and status message land in their columns; a
        log leaves them null."""
        _, schema = pg_configured
        remote = atrace.SpanContext(
            "0af7651916cd43dd8448eb211c80319c", 5, flags=1, trace_state="v=1"
        )
        with atrace.trace_context(remote), atrace.span("serve", kind="server") as sp:
            sp.set_status("error", "quota exceeded")
        with atrace.span("call", kind=atrace.SpanKind.CLIENT) as ok:
            ok.set_status("ok", "ignored")
        atrace.info("plain log")
        await atrace.aflush()
        rows = {r["name"] if r["kind"] else "log": r for r in await fetch(db, schema)}
        cols = ("span_kind", "trace_state", "trace_flags", "status", "status_message")
        got = {name: tuple(r[c] for c in cols) for name, r in rows.items()}
        assert got == {
            "serve": (2, "v=1", 1, 2, "quota exceeded"),
            "call": (3, None, 3, 1, None),
            "log": (None, None, None, 0, None),
        }
        assert rows["serve"]["error_message"] is None and rows["serve"]["error_type"] is None

    async def test_nanoseconds_kept_in_ts_frac(self, pg_schema: tuple[str, str], db: Any) -> None:
        """The nanoseconds below ts's microsecond go to ts_frac (null when there are none)."""
        dsn, schema = pg_schema
        await ensure_schema(db, schema)
        base = int(dt.datetime.now().timestamp()) * 10**9 + 123_456_000
        fields = {"kind": 0, "level": 20, "status": 0, "service": "s"}
        rows = [tuple({**fields, "ts": ts}.get(c) for c in COLUMNS) for ts in (base, base + 789)]
        conn = await asyncpg.connect(dsn)
        try:
            await connection_init(conn)
            await copy_rows(conn, schema, rows)
        finally:
            await conn.close()
        stored = await db.fetch(f"SELECT ts, ts_frac FROM {schema}.records ORDER BY ts_frac")
        assert [r["ts_frac"] for r in stored] == [789, None]
        assert stored[0]["ts"] == stored[1]["ts"]  # the same microsecond

    async def test_attrs_round_trip(self, pg_configured: tuple[str, str], db: Any) -> None:
        """Attributes of every JSON type, and common Python types, round-trip through jsonb."""
        _, schema = pg_configured
        when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
        ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
        atrace.info(
            "types",
            s="naïve ☃",
            i=-(1 << 63),
            f=1.5,
            b=True,
            n=None,
            lst=[1, "a", [2]],
            d={"x": {"y": 1}},
            when=when,
            ident=ident,
            tup=(1, 2),
        )
        await atrace.aflush()
        (row,) = await fetch(db, schema)
        assert row["attrs"] == {
            "s": "naïve ☃",
            "i": -(1 << 63),
            "f": 1.5,
            "b": True,
            "n": None,
            "lst": [1, "a", [2]],
            "d": {"x": {"y": 1}},
            "when": "2024-01-02T03:04:05+00:00",
            "ident": str(ident),
            "tup": [1, 2],
        }
        assert row["ts"].tzinfo is not None

    async def test_long_span_visible_while_running(
        self, pg_configured: tuple[str, str], db: Any
    ) -> None:
        """A long span has a start row in the database while it runs, then an end row."""
        _, schema = pg_configured
        async with atrace.span("long-job") as sp:
            await asyncio.sleep(0.12)
            await atrace.aflush()
            running = await fetch(db, schema, "span_id = $1", sp.span_id)
            assert [(r["kind"], r["status"]) for r in running] == [(1, 0)]
        await atrace.aflush()
        done = await fetch(db, schema, "span_id = $1", sp.span_id)
        assert [(r["kind"], r["status"]) for r in done] == [(1, 0), (2, 0)]


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr fails too")


class Custom:
    def __repr__(self) -> str:
        return "<Custom thing>"


class TestSanitising:
    async def test_each_bad_value_lands_sanitised_in_one_batch(
        self, pg_schema: tuple[str, str], db: Any
    ) -> None:
        """Every kind of bad value lands sanitised, in the same batch as good records, none lost."""
        dsn, schema = pg_schema
        atrace.configure(
            service="pg-test", sink=dsn, schema=schema, flush_interval=3600, max_message_length=100
        )
        cyclic: dict[str, Any] = {"name": "loop"}
        cyclic["self"] = cyclic
        atrace.info("good before")
        atrace.info("nul\x00message", case="nul-message")
        atrace.info("nul attr", case="nul-attr", value="a\x00b", **{"k\x00ey": 1})
        atrace.info("surrogate \ud800 message", case="surrogate", value="x\udfffy")
        atrace.info("object", case="object", value=Custom(), other=Unprintable(), raw=b"\x00\xff")
        atrace.info("floats", case="floats", nan=float("nan"), inf=float("inf"), ninf=float("-inf"))
        atrace.info("bigint", case="bigint", big=1 << 80, neg=-(1 << 70))
        atrace.info("cycle", case="cycle", value=cyclic)
        atrace.info("x" * 500, case="oversize")
        atrace.info(Unprintable(), case="unprintable-message")
        with atrace.span("span\x00name", case="nul-span"):
            pass
        atrace.info("good after")
        assert await atrace.aflush()
        m = atrace.metrics()
        assert (m.written, m.dropped, m.batches) == (12, 0, 1)
        rows = {
            r["attrs"]["case"] if r["attrs"] and "case" in r["attrs"] else r["message"]: r
            for r in await fetch(db, schema)
        }
        assert len(rows) == 12
        assert rows["nul-message"]["message"] == "nul\ufffdmessage"
        assert (
            rows["nul-attr"]["attrs"]["value"] == "a\ufffdb"
            and rows["nul-attr"]["attrs"]["k\ufffdey"] == 1
        )
        assert rows["surrogate"]["message"] == "surrogate \ufffd message"
        assert rows["surrogate"]["attrs"]["value"] == "x\ufffdy"
        assert rows["object"]["attrs"]["value"] == "<Custom thing>"
        assert rows["object"]["attrs"]["other"] == "<unrepresentable Unprintable>"
        assert rows["object"]["attrs"]["raw"] == repr(b"\x00\xff")
        assert rows["floats"]["attrs"] == {"case": "floats", "nan": None, "inf": None, "ninf": None}
        assert rows["bigint"]["attrs"]["big"] == str(1 << 80)
        assert rows["bigint"]["attrs"]["neg"] == str(-(1 << 70))
        assert rows["cycle"]["attrs"]["value"] == {"name": "loop", "self": "<cycle>"}
        oversize = rows["oversize"]["message"]
        assert oversize.startswith("x" * 100) and oversize.endswith("…[truncated 400 chars]")
        assert rows["unprintable-message"]["message"] == "<unrepresentable Unprintable>"
        assert rows["nul-span"]["name"] == "span\ufffdname"
        assert "good before" in rows and "good after" in rows

    async def test_row_outside_partitions_lands_in_default(
        self, pg_schema: tuple[str, str], db: Any
    ) -> None:
        """A record far from today still lands (default partition), with its batch intact."""
        dsn, schema = pg_schema
        sink = PostgresSink(dsn, schema=schema)
        enc = Encoder(service="s", environment=None, host="h", pid=1)
        old = dt.datetime(1990, 5, 1, tzinfo=dt.timezone.utc).timestamp()
        rows = enc.rows(
            [
                (
                    0,
                    int(old * 1e9),
                    20,
                    None,
                    None,
                    None,
                    None,
                    0,
                    None,
                    "n",
                    "old",
                    None,
                    None,
                    None,
                ),
                (
                    0,
                    int(dt.datetime.now().timestamp() * 1e9),
                    20,
                    None,
                    None,
                    None,
                    None,
                    0,
                    None,
                    "n",
                    "new",
                    None,
                    None,
                    None,
                ),
            ]
        )
        await sink.open()
        try:
            await sink.write(Batch(rows))
        finally:
            await sink.close()
        got = await db.fetch(
            f"SELECT message, tableoid::regclass::text AS part FROM {schema}.records ORDER BY ts"
        )
        assert [r["message"] for r in got] == ["old", "new"]
        assert got[0]["part"].endswith("records_default")


class TestExactlyOnce:
    async def test_same_batch_twice_stored_once(self, pg_schema: tuple[str, str], db: Any) -> None:
        """Writing the same batch (same id) twice, even concurrently, stores its rows once."""
        dsn, schema = pg_schema
        enc = Encoder(service="s", environment=None, host="h", pid=1)
        now = int(dt.datetime.now().timestamp() * 1e9)
        rows = enc.rows(
            [
                (0, now + i, 20, None, None, None, None, 0, None, "n", f"m{i}", None, None, None)
                for i in range(50)
            ]
        )
        batch = Batch(rows)
        a, b = PostgresSink(dsn, schema=schema), PostgresSink(dsn, schema=schema)
        await a.open()
        await b.open()
        try:
            await a.write(batch)
            await a.write(batch)
            again = Batch(rows, batch_id=uuid.uuid4())
            await asyncio.gather(a.write(again), b.write(again))
        finally:
            await a.close()
            await b.close()
        assert await db.fetchval(f"SELECT count(*) FROM {schema}.records") == 100
        assert await db.fetchval(f"SELECT count(*) FROM {schema}.batches") == 2
        assert (
            await db.fetchval(f"SELECT records FROM {schema}.batches WHERE batch_id = $1", batch.id)
            == 50
        )

    async def test_columns_contract(self, pg_schema: tuple[str, str], db: Any) -> None:
        """The table has exactly the contract's columns, in the encoder's order."""
        dsn, schema = pg_schema
        sink = PostgresSink(dsn, schema=schema)
        await sink.open()
        await sink.close()
        cols = [
            r["column_name"]
            for r in await db.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 "
                "AND table_name = 'records' ORDER BY ordinal_position",
                schema,
            )
        ]
        # The columns atrace writes up to location, the project (filled by default for direct
        # writers, added by schema 3), then the columns schemas 5 and 6 added: COPY names each
        # one.
        location = COLUMNS.index("location") + 1
        status_message = COLUMNS.index("status_message") + 1
        assert tuple(cols) == (
            *COLUMNS[:location],
            "project",
            *COLUMNS[location:status_message],
            "ts_frac",
            *COLUMNS[status_message:],
        )
        assert set(COPY_COLUMNS) == set(cols) - {"project"}


class TestFailures:
    async def test_unreachable_database_never_reaches_the_app(self, memory_sink: Any) -> None:
        """With the database unreachable, emits and flushes return, errors are only counted."""
        atrace.configure(
            service="t",
            sinks=["postgresql://postgres@127.0.0.1:1/none", memory_sink],
            flush_interval=0.05,
            retry_attempts=2,
        )
        with atrace.span("still works"):
            atrace.info("hello")
        assert not await atrace.aflush(timeout=30)  # returns, and says: not all written
        m = atrace.metrics()
        assert m.sink_errors == 2 and m.written == 0
        assert m.spilled == m.spilled_pending == 2  # on disk, to be replayed
        assert m.accepted == m.written + m.dropped + m.queue_size + m.in_flight + m.spilled_pending
        assert [r["name"] for r in memory_sink.spans()] == ["still works"]


class TestClassify:
    @pytest.mark.parametrize(
        ("exc", "retryable"),
        [
            (asyncpg.exceptions.TooManyConnectionsError("too many"), True),
            (asyncpg.exceptions.SerializationError("serialize"), True),
            (asyncpg.exceptions.DeadlockDetectedError("deadlock"), True),
            (asyncpg.exceptions.AdminShutdownError("shutdown"), True),
            (asyncpg.exceptions.CannotConnectNowError("starting"), True),
            (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), True),
            (ConnectionRefusedError(), True),
            (TimeoutError(), True),
            (asyncpg.exceptions.InvalidPasswordError("auth"), False),
            (asyncpg.exceptions.UniqueViolationError("dup"), False),
            (asyncpg.exceptions.InvalidTextRepresentationError("bad"), False),
            (asyncpg.exceptions.UndefinedTableError("missing"), False),
            (ValueError("bug"), False),
        ],
    )
    def test_retryable_or_permanent(self, exc: BaseException, retryable: bool) -> None:
        """Connection loss, resource and shutdown errors are retried; data and auth errors not."""
        assert PostgresSink("postgresql://x@127.0.0.1/x").classify(exc).retryable is retryable

    async def test_real_server_errors(self, pg_schema: tuple[str, str]) -> None:
        """Errors raised by a real server classify by their SQLSTATE."""
        dsn, schema = pg_schema
        conn = await asyncpg.connect(dsn)
        try:
            with pytest.raises(asyncpg.PostgresError) as missing:
                await conn.execute(f"SELECT * FROM {schema}.nope")
            with pytest.raises(asyncpg.PostgresError) as bad:
                await conn.execute("SELECT 'x'::int")
        finally:
            await conn.close()
        sink = PostgresSink(dsn)
        assert not sink.classify(missing.value).retryable
        assert not sink.classify(bad.value).retryable
        with pytest.raises(OSError) as refused:
            await asyncpg.connect("postgresql://postgres@127.0.0.1:1/x", timeout=5)
        assert sink.classify(refused.value).retryable


class TestSlicedCopy:
    async def test_batch_copied_in_slices_is_one_transaction(
        self, pg_schema: tuple[str, str], db: Any
    ) -> None:
        """A batch larger than copy_chunk lands whole, once, under a single ledger entry."""
        dsn, schema = pg_schema
        sink = PostgresSink(dsn, schema=schema, copy_chunk=7)
        enc = Encoder(service="s", environment=None, host="h", pid=1)
        now = int(dt.datetime.now().timestamp() * 1e9)
        records = [
            (0, now + i, 20, None, None, None, None, 0, None, "n", f"m{i}", None, None, None)
            for i in range(50)
        ]
        batch = Batch(enc.rows(records))
        await sink.open()
        try:
            await sink.write(batch)
            await sink.write(batch)
        finally:
            await sink.close()
        assert await db.fetchval(f"SELECT count(DISTINCT message) FROM {schema}.records") == 50
        assert await db.fetchval(f"SELECT count(*) FROM {schema}.records") == 50
        assert await db.fetchval(f"SELECT count(*) FROM {schema}.batches") == 1

    async def test_bad_row_is_replaced_by_the_sinks_copy_not_the_sessions(
        self, pg_schema: tuple[str, str], db: Any
    ) -> None:
        """The sink's copy_rows writes an unencodable row as an error row; the session's plain
        copy_rows refuses it and writes nothing."""
        dsn, schema = pg_schema
        await ensure_schema(db, schema)
        enc = Encoder(service="s", environment=None, host="h", pid=1)
        now = int(dt.datetime.now().timestamp() * 1e9)
        record = (0, now, 20, None, None, None, None, 0, None, "n", "ok", None, None, None)
        good = enc.rows([record])
        bad = (*good[0][:4], 2**70, *good[0][5:])  # a span id no bigint holds
        conn = await asyncpg.connect(dsn)
        try:
            await connection_init(conn)
            with pytest.raises(OverflowError):
                await session_copy_rows(conn, schema, [good[0], bad])
            await copy_rows(conn, schema, [good[0], bad])
        finally:
            await conn.close()
        rows = await fetch(db, schema)
        assert [r["message"] for r in rows] == ["ok", "atrace: a row could not be written"]
        assert rows[1]["error_type"] == "OverflowError"
