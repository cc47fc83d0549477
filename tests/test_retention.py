"""Retention on a real PostgreSQL with 30 days of partitions in the past: old days are dropped a
partition at a time, the default partition and the ledger are cut at the same limit, a size
bound drops the oldest first, a dry run changes nothing, and one run goes at a time."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from atrace._postgres.retention import apply_retention, day_partitions, parse_size
from atrace._postgres.schema import ensure_partitions, ensure_schema
from atrace._postgres.session import connection_init, copy_rows
from atrace._records import COLUMNS

ATRACE = str(Path(sys.executable).with_name("atrace"))
TODAY = dt.datetime.now(dt.timezone.utc).date()
DAYS = 30


def _row(when: dt.datetime, message: str) -> tuple[Any, ...]:
    values: dict[str, Any] = dict.fromkeys(COLUMNS)
    values.update(
        ts=int(when.timestamp()) * 10**9, kind=0, level=20, status=0, service="svc", message=message
    )
    return tuple(values[c] for c in COLUMNS)


async def _seed(dsn: str, schema: str) -> Any:
    """Partitions for each of the last 30 days and 3 ahead, 20 records a day, a record in the
    default partition far in the past and one recent, a ledger entry per day."""
    conn = await asyncpg.connect(dsn)
    await connection_init(conn)
    await ensure_schema(conn, schema)
    for back in range(DAYS, 0, -3):
        await ensure_partitions(conn, schema, today=TODAY - dt.timedelta(days=back), ahead=3)
    await ensure_partitions(conn, schema)
    rows = []
    for back in range(DAYS + 1):
        day = TODAY - dt.timedelta(days=back)
        noon = dt.datetime.combine(day, dt.time(12), dt.timezone.utc)
        rows += [_row(noon + dt.timedelta(minutes=i), f"day-{back}") for i in range(20)]
        await conn.execute(
            f"INSERT INTO {schema}.batches (batch_id, records, written_at) VALUES ($1, 20, $2)",
            uuid.uuid4(),
            int(noon.timestamp()) * 10**9,
        )
    await copy_rows(conn, schema, rows)
    # The default partition holds what no day partition covers: a record from a clock years
    # behind, and one from a clock a month ahead.
    far = dt.datetime(2003, 5, 1, tzinfo=dt.timezone.utc)
    ahead = dt.datetime.combine(TODAY + dt.timedelta(days=30), dt.time(1), dt.timezone.utc)
    await copy_rows(conn, schema, [_row(far, "ancient"), _row(ahead, "ahead-default")])
    assert await conn.fetchval(f"SELECT count(*) FROM {schema}.records_default") == 2
    return conn


async def _oldest_kept(conn: Any, schema: str) -> Any:
    return await conn.fetchval(f"SELECT min(ts) FROM {schema}.records")


async def test_old_days_go_a_partition_at_a_time(pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    conn = await _seed(dsn, schema)
    try:
        before, _ = await day_partitions(conn, schema)
        assert before[0].day <= TODAY - dt.timedelta(days=DAYS)
        total = await conn.fetchval(f"SELECT count(*) FROM {schema}.records")

        dry = await apply_retention(conn, schema, days=7, dry_run=True)
        assert [p.day for p in dry.dropped] == [
            p.day for p in before if p.day < TODAY - dt.timedelta(days=7)
        ]
        assert (dry.default_rows, dry.ledger_rows) == (1, DAYS - 7)
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.records") == total

        done = await apply_retention(conn, schema, days=7)
        after, _ = await day_partitions(conn, schema)
        limit = dt.datetime.combine(TODAY - dt.timedelta(days=7), dt.time(), dt.timezone.utc)
        assert done.cutoff == limit
        assert [p.name for p in done.dropped] == [p.name for p in dry.dropped]
        assert after[0].day == TODAY - dt.timedelta(days=7)
        assert {p.name for p in after} == {p.name for p in before} - {p.name for p in done.dropped}
        # Nothing older than the limit is left anywhere: day partitions, default, ledger.
        assert await _oldest_kept(conn, schema) >= int(limit.timestamp()) * 10**9
        messages = {r[0] for r in await conn.fetch(f"SELECT message FROM {schema}.records")}
        assert messages == {f"day-{b}" for b in range(8)} | {"ahead-default"}
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.records") == 8 * 20 + 1
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.batches") == 8
        assert (done.default_rows, done.ledger_rows) == (1, DAYS - 7)
        # Partitions are dropped, not emptied: the tables are gone.
        gone = done.dropped[0].name
        assert await conn.fetchval("SELECT to_regclass($1)", f"{schema}.{gone}") is None
        # A second run finds nothing more to do.
        again = await apply_retention(conn, schema, days=7)
        assert (again.dropped, again.default_rows, again.ledger_rows) == ([], 0, 0)
    finally:
        await conn.close()


async def test_a_size_bound_drops_the_oldest_first(pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    conn = await _seed(dsn, schema)
    try:
        parts, default_bytes = await day_partitions(conn, schema)
        keep_days = [p for p in parts if p.day >= TODAY - dt.timedelta(days=3)]
        bound = default_bytes + sum(p.bytes for p in keep_days)
        report = await apply_retention(conn, schema, days=20, max_bytes=bound)
        after, _ = await day_partitions(conn, schema)
        assert after[0].day == TODAY - dt.timedelta(days=3)
        assert report.kept_bytes <= bound
        # Today's and later partitions stay, whatever the bound.
        await apply_retention(conn, schema, days=20, max_bytes=1)
        after, _ = await day_partitions(conn, schema)
        assert after[0].day == TODAY and after[-1].day >= TODAY + dt.timedelta(days=3)
    finally:
        await conn.close()


async def test_one_run_at_a_time(pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    conn = await _seed(dsn, schema)
    other = await asyncpg.connect(dsn)
    try:
        await other.execute("SELECT pg_advisory_lock(hashtext($1))", f"atrace:retention:{schema}")
        report = await apply_retention(conn, schema, days=7)
        assert report.skipped and report.dropped == []
        assert report.lines() == [f"nothing done: {report.skipped}"]
        assert len((await day_partitions(conn, schema))[0]) > 8 + 3
    finally:
        await other.close()
        await conn.close()


async def test_the_cli(pg_schema: tuple[str, str]) -> None:
    """`atrace db retention` says what it would do, then does it; bad options are one line."""
    dsn, schema = pg_schema
    conn = await _seed(dsn, schema)
    parts, _ = await day_partitions(conn, schema)
    await conn.close()
    old = len([p for p in parts if p.day < TODAY - dt.timedelta(days=7)])
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            ATRACE, "db", "retention", "--dsn", dsn, "--schema", schema, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await run("--days", "7", "--dry-run")
    assert code == 0, err
    assert f"would drop {old} day partitions" in out and "would delete 1 record from" in out
    assert all(len(line) <= 80 for line in out.splitlines())
    code, out, err = await run("--days", "7")
    assert code == 0, err
    assert f"dropped {old} day partitions" in out and "deleted 23 batch ledger entries" in out
    code, out, err = await run("--days", "7", "--max-size", "lots")
    assert code == 2 and out == "" and "--max-size" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "size"),
    [("50GB", 50 * 1024**3), ("512M", 512 * 1024**2), ("1048576", 1048576), ("1.5 kb", 1536)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "-1GB", "0", "12 parsecs"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


async def test_the_collector_runs_it_in_the_background(pg_schema: tuple[str, str]) -> None:
    """`atrace serve --retention-days`: the collector drops old days at startup and then on
    its interval, while it serves; a retention shorter than its late window is refused."""
    from _collector import CollectorServer
    from atrace.collector import Limits
    from atrace.errors import ConfigError

    dsn, schema = pg_schema
    conn = await _seed(dsn, schema)
    try:
        limits = Limits(retention_days=7, retention_interval=0.2)
        async with CollectorServer(dsn, schema, limits=limits) as server:
            limit = dt.datetime.combine(TODAY - dt.timedelta(days=7), dt.time(), dt.timezone.utc)
            for _ in range(200):
                oldest = await _oldest_kept(conn, schema)
                if oldest >= int(limit.timestamp()) * 10**9:
                    break
                await asyncio.sleep(0.05)
            assert oldest >= int(limit.timestamp()) * 10**9
            health = await server.request("GET", "/healthz")
            assert health.status == 200
            # New old partitions (a clock far behind) go on the next round, too.
            await ensure_partitions(conn, schema, today=TODAY - dt.timedelta(days=60), ahead=0)
            name = f"{schema}.records_{TODAY - dt.timedelta(days=61):%Y%m%d}"
            assert await conn.fetchval("SELECT to_regclass($1)", name) is not None
            for _ in range(200):
                if await conn.fetchval("SELECT to_regclass($1)", name) is None:
                    break
                await asyncio.sleep(0.05)
            assert await conn.fetchval("SELECT to_regclass($1)", name) is None
            # A day ahead that lost its partition (no writer made it) gets it back.
            ahead = f"{schema}.records_{TODAY + dt.timedelta(days=2):%Y%m%d}"
            await conn.execute(f"DROP TABLE {ahead}")
            for _ in range(200):
                if await conn.fetchval("SELECT to_regclass($1)", ahead) is not None:
                    break
                await asyncio.sleep(0.05)
            assert await conn.fetchval("SELECT to_regclass($1)", ahead) is not None
    finally:
        await conn.close()
    with pytest.raises(ConfigError, match="late window"):
        Limits(retention_days=3)
    assert Limits(retention_days=3, late_window=2 * 86_400).retention_days == 3


def _span(when: dt.datetime, trace: str, name: str, *, ms: float = 5, status: int = 0) -> Any:
    values: dict[str, Any] = dict.fromkeys(COLUMNS)
    values.update(
        ts=int(when.timestamp() * 10**9),
        kind=3,
        level=40 if status == 2 else 20,
        trace_id=trace,
        span_id=int.from_bytes(os.urandom(8), "big", signed=True) or 1,
        duration_ns=int(ms * 1_000_000),
        status=status,
        service="svc",
        name=name,
    )
    return tuple(values[c] for c in COLUMNS)


def _day(back: int, hour: int = 12, minute: int = 0) -> dt.datetime:
    day = TODAY - dt.timedelta(days=back)
    return dt.datetime.combine(day, dt.time(hour, minute), dt.timezone.utc)


async def test_traces_that_mattered_outlive_their_days(pg_schema: tuple[str, str]) -> None:
    """With errors days, the complete traces with an error or a slow span stay, in their own
    days, readable like any other; the rest of those days goes; a trace that crosses into a
    day still kept is kept whole; the kept days go in their turn."""
    from atrace._postgres.retention import Keep
    from atrace.collector._query import trace as read_trace

    dsn, schema = pg_schema
    conn = await _seed(dsn, schema)
    failed, slow, plain, crossing = (uuid.uuid4().hex for _ in range(4))
    await copy_rows(
        conn,
        schema,
        [
            _span(_day(10), failed, "checkout"),
            _span(_day(10, 12, 1), failed, "charge", status=2),
            _span(_day(20), slow, "report", ms=2500),
            _span(_day(20, 13), plain, "fine"),
            _span(_day(8, 23, 59), crossing, "start"),  # a day that goes ...
            _span(_day(7, 0, 1), crossing, "end", status=2),  # ... and one that stays
        ],
    )
    keep = Keep(30, slow_ms=1000)
    dry = await apply_retention(conn, schema, days=7, keep=keep, dry_run=True)
    assert dry.kept_traces == 3  # failed, slow, crossing (its day-8 part)
    report = await apply_retention(conn, schema, days=7, keep=keep)
    assert report.kept_traces == 3
    parts, _ = await day_partitions(conn, schema)
    kept = {p.day: p.name for p in parts if p.kept}
    assert set(kept) == {TODAY - dt.timedelta(days=d) for d in (8, 10, 20)}
    assert all(name.endswith("_kept") for name in kept.values())
    names = {
        r["trace_id"].hex: sorted(x["name"] for x in rs)
        for r in await conn.fetch(f"SELECT DISTINCT trace_id FROM {schema}.records")
        if r["trace_id"] is not None
        for rs in [
            await conn.fetch(
                f"SELECT name FROM {schema}.records WHERE trace_id = $1", r["trace_id"]
            )
        ]
    }
    assert names == {failed: ["charge", "checkout"], slow: ["report"], crossing: ["end", "start"]}
    # Nothing else of those days: the filler records (no trace) are gone with them.
    assert (
        await conn.fetchval(f"SELECT count(*) FROM {schema}.records WHERE message = 'day-10'") == 0
    )
    # Read as any trace is: the query API's tree.
    tree = await read_trace(conn, schema, "default", failed)
    assert tree is not None and [s["name"] for s in tree["spans"]] == ["checkout", "charge"]
    # Run again: nothing changes; 25 days on, the kept days older than 30 days go.
    again = await apply_retention(conn, schema, days=7, keep=keep)
    assert again.dropped == [] and again.kept_traces == 0
    later = await apply_retention(
        conn, schema, days=7, keep=keep, today=TODAY + dt.timedelta(days=25)
    )
    parts, _ = await day_partitions(conn, schema)
    assert {p.day for p in parts if p.kept} == set()
    assert {p.name for p in later.dropped} >= set(kept.values())
    await conn.close()


async def test_a_keep_rate_keeps_that_share_of_traces(pg_schema: tuple[str, str]) -> None:
    """keep_rate 0.25 over 2,000 plain traces keeps 0.25 ± 0.03 of them, each complete."""
    from atrace._postgres.retention import Keep

    dsn, schema = pg_schema
    conn = await _seed(dsn, schema)
    traces = [uuid.uuid4().hex for _ in range(2000)]
    rows = [_span(_day(12, 10), t, "a") for t in traces]
    rows += [_span(_day(12, 11), t, "b") for t in traces]
    await copy_rows(conn, schema, rows)
    await apply_retention(conn, schema, days=7, keep=Keep(30, rate=0.25))
    counts = await conn.fetch(
        f"SELECT trace_id, count(*) AS n FROM {schema}.records "
        "WHERE trace_id IS NOT NULL GROUP BY trace_id"
    )
    assert 0.22 <= len(counts) / len(traces) <= 0.28
    assert {r["n"] for r in counts} == {2}  # complete: both spans of each kept trace
    # The same trace ids, by the low 56 bits, as OpenTelemetry's ratio sampler decides.
    expected = {t for t in traces if int(t[-14:], 16) < int(0.25 * (1 << 56))}
    assert {r["trace_id"].hex for r in counts} == expected
    await conn.close()


async def test_the_cli_keeps_what_mattered(pg_schema: tuple[str, str]) -> None:
    """`--errors-days` with `--slow-ms`: the report says how many traces stay; options that
    cannot work together are one line and exit 2."""
    dsn, schema = pg_schema
    conn = await _seed(dsn, schema)
    await copy_rows(conn, schema, [_span(_day(15), uuid.uuid4().hex, "x", status=2)])
    await conn.close()
    base = (ATRACE, "db", "retention", "--dsn", dsn, "--schema", schema, "--days", "7")

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *base, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await run("--errors-days", "30", "--slow-ms", "500")
    assert code == 0, err
    assert "kept 1 trace that mattered" in out
    for bad in (
        ("--errors-days", "5"),
        ("--slow-ms", "10"),
        ("--errors-days", "9", "--keep-rate", "2"),
    ):
        code, out, err = await run(*bad)
        assert code == 2 and out == "" and err.count("\n") == 1, (bad, err)
