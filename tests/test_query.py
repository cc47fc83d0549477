"""Reading records back against a real PostgreSQL: search, traces, stats, errors, plans, routes."""

# The fixture is imported from its helper module, so each test parameter redefines that name.
# ruff: noqa: F811

from __future__ import annotations

import datetime as dt
import os
import random
import time
import traceback
from typing import Any

import asyncpg
import orjson
import pytest

from _collector import (
    CollectorServer,
    collector_server,  # noqa: F401
)
from atrace._emit.ids import format_span_id, new_span_id, new_trace_id
from atrace._postgres.schema import ensure_partitions, ensure_text_index
from atrace._postgres.session import connection_init
from atrace._records import COLUMNS
from atrace.collector import _query as query
from atrace.collector._query import Filters, build_tree, parse_filters, parse_level, parse_time
from atrace.collector._query.fingerprint import fingerprint, normalize_message, top_frames
from atrace.errors import QueryError

A, B = "alpha", "beta"
S = 1_000_000_000
MS = 1_000_000
NOW = time.time_ns() // 1000 * 1000  # PostgreSQL keeps microseconds


def make_row(
    ts: int,
    *,
    kind: int = 0,
    level: int = 20,
    trace_id: str | None = None,
    span_id: int | None = None,
    parent_id: int | None = None,
    duration_ns: int | None = None,
    status: int = 0,
    service: str = "api",
    name: str | None = "handler",
    message: str | None = None,
    attrs: dict[str, Any] | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
    stack_trace: str | None = None,
    span_kind: int | None = None,
    trace_state: str | None = None,
    status_message: str | None = None,
    links: list[dict[str, Any]] | None = None,
    otlp: dict[str, Any] | None = None,
    resource_id: int | None = None,
) -> tuple[Any, ...]:
    """A row in COLUMNS order (a span's kind defaults to internal)."""
    return (
        ts,
        kind,
        level,
        trace_id,
        span_id,
        parent_id,
        duration_ns,
        status,
        service,
        "test",
        "host-1",
        4242,
        name,
        message,
        None if attrs is None else orjson.dumps(attrs),
        error_type,
        error_message,
        stack_trace,
        "app.py:1",
        span_kind if span_kind is not None or kind == 0 else 1,
        trace_state,
        None if kind == 0 else 1,
        status_message,
        None if links is None else orjson.dumps(links),
        None if otlp is None else orjson.dumps(otlp),
        resource_id,
    )


async def copy_rows(conn: Any, schema: str, project: str, rows: list[tuple[Any, ...]]) -> None:
    """COPY rows for ``project`` on a connection carrying atrace's codecs."""
    await conn.copy_records_to_table(
        "records",
        schema_name=schema,
        columns=(*COLUMNS, "project"),
        records=[(*r, project) for r in rows],
    )


@pytest.fixture
def db(pg_db: tuple[Any, str]) -> tuple[Any, str]:
    """A connection with atrace's codecs to a migrated schema (tests/_pg.py)."""
    return pg_db


def messages(page: dict[str, Any]) -> list[str]:
    return [r["message"] for r in page["records"]]


class TestParsing:
    def test_times(self) -> None:
        """ISO 8601 (with ns, Z, offsets, dates), relative ages, now and integer ns all parse."""
        now = 1_700_000_000 * S
        assert parse_time("2024-01-02T03:04:05.123456789Z", now=now) == (
            int(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc).timestamp()) * S
            + 123_456_789
        )
        assert parse_time("2024-01-02T05:04:05+02:00", now=now) == parse_time(
            "2024-01-02 03:04:05", now=now
        )
        assert parse_time("2024-01-02", now=now) == parse_time("2024-01-02T00:00:00Z", now=now)
        assert parse_time("15m", now=now) == now - 15 * 60 * S
        assert parse_time("2h", now=now) == now - 7200 * S
        assert parse_time("1d", now=now) == now - 86400 * S
        assert parse_time("now", now=now) == now
        assert parse_time(str(now - 5), now=now) == now - 5
        assert parse_time(dt.datetime(2024, 1, 2), now=now) == parse_time("2024-01-02", now=now)

    @pytest.mark.parametrize("bad", ["yesterday", "15x", "2024-13-01", "", "-5m"])
    def test_bad_times(self, bad: str) -> None:
        """A time that is not understood is refused, naming the field."""
        with pytest.raises(QueryError, match="since"):
            parse_time(bad, now=0, field="since")

    def test_levels(self) -> None:
        """Level names (with aliases) and numbers both work; anything else is refused."""
        assert parse_level("warn") == parse_level("WARNING") == 30
        assert parse_level("fatal") == 50
        assert parse_level("35") == 35
        with pytest.raises(QueryError):
            parse_level("loud")

    def test_filters(self) -> None:
        """attr.KEY values parse as JSON when they can, else stay strings; bad input is refused."""
        f = parse_filters(
            [("attr.user", "42"), ("attr.region", "eu"), ("attr.ok", "true"), ("kind", "span")],
            project=A,
            now=NOW,
        )
        assert dict(f.attrs) == {"user": 42, "region": "eu", "ok": True}
        assert f.kinds == (1, 2, 3)
        assert f.since == NOW - query.DEFAULT_RANGE_NS and f.limit == query.DEFAULT_LIMIT
        for params in (
            {"limit": "0"},
            {"limit": "1001"},
            {"kind": "metric"},
            {"trace_id": "xyz"},
            {"cursor": "garbage"},
            {"servce": "api"},
            {"attr.": "1"},
        ):
            with pytest.raises(QueryError):
                parse_filters(params, project=A, now=NOW)

    def test_in_memory_match(self) -> None:
        """Filters.matches: substring q ignoring case, attribute matching, level, kind."""
        row = make_row(NOW, level=40, message="Payment DECLINED", attrs={"user": 1, "ok": True})
        assert Filters(project=A, q="declined", min_level=40, kinds=(0,)).matches(row)
        assert Filters(project=A, attrs={"user": 1}).matches(row)
        assert not Filters(project=A, attrs={"ok": 1}).matches(row)  # true is not 1
        assert Filters(project=A, attrs={"user": "1"}).matches(row)  # a number's text
        assert Filters(project=A, attrs={"ok": "true"}).matches(row)
        assert not Filters(project=A, attrs={"user": "01"}).matches(row)
        assert not Filters(project=A, service="worker").matches(row)
        assert not Filters(project=A, min_level=50).matches(row)


def dataset(rng: random.Random, n: int = 300) -> list[tuple[Any, ...]]:
    """Varied rows within the last hour: services, levels, kinds, words, attrs, traces."""
    traces = [new_trace_id() for _ in range(8)]
    words = ["payment", "refund", "login", "timeout", "cache"]
    rows = []
    for i in range(n):
        kind = rng.choice([0, 0, 0, 1, 2, 3])
        rows.append(
            make_row(
                NOW - rng.randrange(0, 3600) * S - i * 1000,
                kind=kind,
                level=rng.choice([10, 20, 30, 40, 50]),
                trace_id=rng.choice(traces),
                span_id=new_span_id(),
                service=rng.choice(["api", "worker", "billing"]),
                message=f"{rng.choice(words)} {rng.choice(words)} m{i}",
                attrs={
                    "user": rng.randrange(1, 5),
                    "region": rng.choice(["eu", "us"]),
                    "flag": rng.random() < 0.5,
                },
            )
        )
    return rows


class TestSearch:
    async def test_each_filter_and_combinations(self, db: tuple[Any, str]) -> None:
        """Every filter alone and combined returns exactly the rows a plain predicate picks."""
        conn, schema = db
        seed = int(os.environ.get("ATRACE_TEST_SEED", time.time_ns() % 1_000_000))
        print(f"seed={seed}")
        rng = random.Random(seed)
        rows = dataset(rng)
        await copy_rows(conn, schema, A, rows)
        trace = rows[0][3]

        def attrs(r: tuple[Any, ...]) -> Any:
            return orjson.loads(r[14])

        cases: list[tuple[dict[str, str], Any]] = [
            ({}, lambda r: True),
            ({"service": "worker"}, lambda r: r[8] == "worker"),
            ({"level": "error"}, lambda r: r[2] >= 40),
            ({"level": "30"}, lambda r: r[2] >= 30),
            ({"kind": "log"}, lambda r: r[1] == 0),
            ({"kind": "span"}, lambda r: r[1] != 0),
            ({"q": "refund"}, lambda r: "refund" in r[13].split()),
            ({"q": "Payment timeout"}, lambda r: {"payment", "timeout"} <= set(r[13].split())),
            ({"attr.user": "3"}, lambda r: attrs(r)["user"] == 3),
            ({"attr.region": "eu"}, lambda r: attrs(r)["region"] == "eu"),
            ({"attr.flag": "true"}, lambda r: attrs(r)["flag"] is True),
            ({"trace_id": trace}, lambda r: r[3] == trace),
            ({"since": "30m"}, lambda r: r[0] >= NOW - 1800 * S),
            (
                {"since": "40m", "until": "20m"},
                lambda r: NOW - 2400 * S <= r[0] < NOW - 1200 * S,
            ),
            (
                {"service": "api", "level": "warning", "kind": "log", "attr.region": "us"},
                lambda r: r[8] == "api" and r[2] >= 30 and r[1] == 0 and attrs(r)["region"] == "us",
            ),
            (
                {"q": "cache", "attr.flag": "false", "since": "45m"},
                lambda r: (
                    "cache" in r[13].split()
                    and attrs(r)["flag"] is False
                    and r[0] >= NOW - 2700 * S
                ),
            ),
        ]
        for params, keep in cases:
            f = parse_filters({**params, "limit": "1000"}, project=A, now=NOW)
            page = await query.search(conn, schema, f)
            want = sorted((r for r in rows if keep(r)), key=lambda r: -r[0])
            assert messages(page) == [r[13] for r in want], params
            assert page["next_cursor"] is None

    async def test_projects_never_mix(self, db: tuple[Any, str]) -> None:
        """Rows of project B never appear in anything asked for project A."""
        conn, schema = db
        rng = random.Random(7)
        rows_a, rows_b = dataset(rng, 60), dataset(rng, 60)
        rows_b = [(*r[:13], "B " + r[13], *r[14:]) for r in rows_b]
        b_trace = rows_b[0][3]
        errors_b = [
            make_row(NOW - S, level=40, error_type="OnlyInB", message="b failed", trace_id=b_trace)
        ]
        await copy_rows(conn, schema, A, rows_a)
        await copy_rows(conn, schema, B, rows_b + errors_b)
        f = parse_filters({"limit": "1000"}, project=A, now=NOW)
        page = await query.search(conn, schema, f)
        assert len(page["records"]) == len(rows_a)
        assert not any(m.startswith("B ") for m in messages(page))
        f = parse_filters({"trace_id": b_trace}, project=A, now=NOW)
        assert (await query.search(conn, schema, f))["records"] == []
        assert await query.trace(conn, schema, A, b_trace) is None
        assert await query.trace(conn, schema, B, b_trace) is not None
        stats = await query.stats(conn, schema, A, interval="1h", now=NOW + S)
        assert sum(b["count"] for b in stats["buckets"]) == len(rows_a)
        errs = await query.errors(conn, schema, A, now=NOW + S)
        assert "OnlyInB" not in {g["error_type"] for g in errs["groups"]}
        assert sum(g["count"] for g in errs["groups"]) == sum(1 for r in rows_a if r[2] >= 40)

    async def test_pagination_with_equal_timestamps(self, db: tuple[Any, str]) -> None:
        """Keyset pages over rows sharing timestamps: every row once, no gap, newest first."""
        conn, schema = db
        rows = [make_row(NOW - (i // 10) * MS, message=f"r{i}") for i in range(97)]
        await copy_rows(conn, schema, A, rows)
        seen: list[dict[str, Any]] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
            page = await query.search(conn, schema, parse_filters(params, project=A, now=NOW))
            seen += page["records"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 14
        assert sorted(r["message"] for r in seen) == sorted(f"r{i}" for i in range(97))
        assert [r["ts"] for r in seen] == sorted((r["ts"] for r in seen), reverse=True)

    async def test_default_range_is_the_last_day(self, db: tuple[Any, str]) -> None:
        """Without since, a search looks back 24 h; since reaches older rows."""
        conn, schema = db
        old = NOW - 2 * 86400 * S
        await copy_rows(
            conn, schema, A, [make_row(old, message="old"), make_row(NOW, message="new")]
        )
        f = parse_filters({}, project=A, now=NOW + S)
        assert messages(await query.search(conn, schema, f)) == ["new"]
        f = parse_filters({"since": "3d"}, project=A, now=NOW + S)
        assert messages(await query.search(conn, schema, f)) == ["new", "old"]
        f = parse_filters({"until": "36h"}, project=A, now=NOW + S)  # 60 h to 36 h ago
        assert messages(await query.search(conn, schema, f)) == ["old"]
        errors = await query.errors(conn, schema, A, until=NOW - 86400 * S, now=NOW)
        assert errors["since"] == NOW - 2 * 86400 * S

    async def test_record_shape(self, db: tuple[Any, str], pg_schema: tuple[str, str]) -> None:
        """Ids as hex, ts as int ns, attrs as an object, kind by name; same without codecs."""
        conn, schema = db
        trace, span, parent = new_trace_id(), new_span_id(), -5
        await copy_rows(
            conn,
            schema,
            A,
            [
                make_row(
                    NOW,
                    kind=3,
                    trace_id=trace,
                    span_id=span,
                    parent_id=parent,
                    duration_ns=5 * MS,
                    status=1,
                    attrs={"a": [1, {"b": None}]},
                    message="shape",
                )
            ],
        )
        f = parse_filters({}, project=A, now=NOW + S)
        (rec,) = (await query.search(conn, schema, f))["records"]
        assert rec["ts"] == NOW and rec["kind"] == "span" and rec["duration_ns"] == 5 * MS
        assert rec["trace_id"] == trace and len(rec["trace_id"]) == 32
        assert rec["span_id"] == format_span_id(span) and len(rec["span_id"]) == 16
        assert rec["parent_id"] == "fffffffffffffffb"
        assert rec["attrs"] == {"a": [1, {"b": None}]}
        plain = await asyncpg.connect(pg_schema[0])  # asyncpg's own codecs: datetime, str
        try:
            assert (await query.search(plain, schema, f))["records"] == [rec]
        finally:
            await plain.close()


def trace_rows(trace: str, t0: int) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    """A trace with nesting, a start/end pair, a span in flight, logs and orphans."""
    ids = {k: new_span_id() for k in ("R", "C1", "C2", "G", "F", "O", "missing")}
    span = {"trace_id": trace}
    rows = [
        make_row(t0, kind=3, span_id=ids["R"], duration_ns=100 * MS, status=1, name="R", **span),
        make_row(t0 + 1 * MS, message="root log", **span),
        make_row(t0 + 10 * MS, kind=1, span_id=ids["C1"], parent_id=ids["R"], name="C1", **span),
        make_row(
            t0 + 10 * MS,
            kind=2,
            level=40,
            span_id=ids["C1"],
            parent_id=ids["R"],
            duration_ns=30 * MS,
            status=2,
            name="C1",
            error_type="ValueError",
            attrs={"final": True},
            **span,
        ),
        make_row(t0 + 12 * MS, span_id=ids["C1"], message="inside C1", **span),
        make_row(t0 + 5 * MS, kind=3, span_id=ids["C2"], parent_id=ids["R"], name="C2", **span),
        make_row(t0 + 15 * MS, kind=3, span_id=ids["G"], parent_id=ids["C1"], name="G", **span),
        make_row(t0 + 50 * MS, kind=1, span_id=ids["F"], parent_id=ids["R"], name="F", **span),
        make_row(
            t0 + 70 * MS, kind=3, span_id=ids["O"], parent_id=ids["missing"], name="O", **span
        ),
        make_row(t0 + 80 * MS, span_id=ids["missing"], message="lost log", **span),
    ]
    return rows, ids


def names(nodes: list[dict[str, Any]]) -> list[str]:
    return [n["name"] if n["type"] == "span" else n["message"] for n in nodes]


class TestTrace:
    async def test_tree(self, db: tuple[Any, str]) -> None:
        """Nesting, start+end merged, in-flight, logs under spans, orphans at the root."""
        conn, schema = db
        trace = new_trace_id()
        t0 = NOW - 10 * S
        rows, _ = trace_rows(trace, t0)
        await copy_rows(conn, schema, A, rows)
        tree = await query.trace(conn, schema, A, trace.upper(), now=NOW)
        assert tree is not None
        assert tree["trace_id"] == trace and tree["span_count"] == 6 and tree["log_count"] == 3
        assert tree["in_flight"] is True and tree["truncated"] is False
        assert names(tree["spans"]) == ["R", "O"]
        r, o = tree["spans"]
        assert not r["orphan"] and o["orphan"]
        assert names(r["children"]) == ["C2", "C1", "F"]
        _, c1, f = r["children"]
        assert c1["duration_ns"] == 30 * MS and c1["status"] == 2 and not c1["in_flight"]
        assert c1["error_type"] == "ValueError" and c1["attrs"] == {"final": True}
        assert c1["end"] == t0 + 40 * MS and c1["elapsed_ns"] is None
        assert names(c1["logs"]) == ["inside C1"] and names(c1["children"]) == ["G"]
        assert f["in_flight"] and f["duration_ns"] is None
        assert f["elapsed_ns"] == NOW - (t0 + 50 * MS)
        assert names(tree["logs"]) == ["root log", "lost log"]
        assert [log["orphan"] for log in tree["logs"]] == [False, True]
        assert tree["error_count"] == 1
        assert orjson.loads(orjson.dumps(tree)) == tree

    async def test_unknown_and_malformed(self, db: tuple[Any, str]) -> None:
        """An unknown trace is None; a malformed id is refused."""
        conn, schema = db
        assert await query.trace(conn, schema, A, new_trace_id()) is None
        with pytest.raises(QueryError):
            await query.trace(conn, schema, A, "not-a-trace")

    def test_parent_cycle_is_cut(self) -> None:
        """Spans naming each other as parents still appear, once each, with one at the root."""
        a, b = "00000000000000aa", "00000000000000bb"
        recs = [
            query.record_json(make_row(NOW, kind=3, span_id=0xAA, parent_id=0xBB, name="a")),
            query.record_json(make_row(NOW + 1, kind=3, span_id=0xBB, parent_id=0xAA, name="b")),
        ]
        assert recs[0]["span_id"] == a and recs[1]["span_id"] == b
        tree = build_tree(recs, now=NOW)
        assert len(tree["spans"]) == 1 and tree["spans"][0]["orphan"]
        (root,) = tree["spans"]
        assert len(root["children"]) == 1 and root["children"][0]["children"] == []

    def test_deep_chain_is_flattened(self) -> None:
        """A chain deeper than MAX_DEPTH hangs its deep part from the root and still encodes."""
        recs = [
            query.record_json(make_row(NOW + i, kind=3, span_id=i + 1, parent_id=i or None))
            for i in range(250)
        ]
        tree = build_tree(recs, now=NOW)
        assert len(tree["spans"]) == 3
        assert [n.get("too_deep", False) for n in tree["spans"]] == [False, True, True]
        orjson.dumps(tree)  # orjson refuses nesting past 254 levels


class TestStats:
    async def test_buckets_and_durations(self, db: tuple[Any, str]) -> None:
        """Counts per minute by service and level; p50/p95 of span durations per name."""
        conn, schema = db
        base = (NOW - 1800 * S) // (60 * S) * (60 * S)
        rows = [make_row(base + i * S) for i in range(3)]
        rows += [make_row(base + 10 * S, level=40), make_row(base + 59 * S, service="worker")]
        rows += [make_row(base + 59 * S, service="worker")]
        rows += [make_row(base + 61 * S)]
        rows += [
            make_row(base + 200 * S, kind=3, name="GET /x", duration_ns=(i + 1) * 10 * MS)
            for i in range(10)
        ]
        await copy_rows(conn, schema, A, rows)
        out = await query.stats(conn, schema, A, interval="1m", since=base, until=base + 120 * S)
        assert out["buckets"] == [
            {"ts": base, "service": "api", "level": 20, "count": 3},
            {"ts": base, "service": "api", "level": 40, "count": 1},
            {"ts": base, "service": "worker", "level": 20, "count": 2},
            {"ts": base + 60 * S, "service": "api", "level": 20, "count": 1},
        ]
        out = await query.stats(
            conn, schema, A, interval="1h", service="api", durations=True, now=NOW
        )
        assert sum(b["count"] for b in out["buckets"]) == 15
        assert out["durations"] == [
            {"service": "api", "name": "GET /x", "count": 10, "p50_ns": 55 * MS, "p95_ns": 95500000}
        ]

    async def test_bad_ranges(self, db: tuple[Any, str]) -> None:
        """Unknown intervals, empty ranges and too many buckets are refused."""
        conn, schema = db
        with pytest.raises(QueryError):
            await query.stats(conn, schema, A, interval="7m")
        with pytest.raises(QueryError):
            await query.stats(conn, schema, A, since=NOW, until=NOW - S)
        with pytest.raises(QueryError):
            await query.stats(conn, schema, A, interval="1m", since=NOW - 30 * 86400 * S)


def stack(*frames: tuple[str, int, str], error: str = "ValueError: x") -> str:
    lines = ["Traceback (most recent call last):"]
    for file, line, func in frames:
        lines += [f'  File "{file}", line {line}, in {func}', "    code()"]
    return "\n".join([*lines, error]) + "\n"


class TestSpans:
    async def test_counts_and_errors_only(self, db: tuple[Any, str]) -> None:
        """Ended spans count by name with their failures; errors_only keeps names that failed."""
        conn, schema = db
        rows = [
            make_row(NOW - 4 * S, kind=3, status=1, name="fine", duration_ns=MS, span_id=1),
            make_row(NOW - 3 * S, kind=3, status=2, level=40, name="flaky", duration_ns=MS),
            make_row(NOW - 2 * S, kind=2, status=1, name="flaky", duration_ns=MS, span_id=3),
            make_row(NOW - 2 * S, kind=1, name="running", span_id=4),
            make_row(NOW - 1 * S, kind=0, level=40, name="a log"),
        ]
        await copy_rows(conn, schema, A, rows)
        got = await query.spans(conn, schema, A, since=NOW - 60 * S, now=NOW)
        by_name = {s["name"]: (s["count"], s["errors"], s["last_status"]) for s in got["spans"]}
        assert by_name == {"fine": (1, 0, 1), "flaky": (2, 1, 1)}
        failed = await query.spans(conn, schema, A, since=NOW - 60 * S, now=NOW, errors_only=True)
        assert [s["name"] for s in failed["spans"]] == ["flaky"]


class TestFingerprint:
    def test_variable_parts_are_masked(self) -> None:
        """Messages differing only in ids, numbers, UUIDs, hex, times or quoted values match."""
        pairs = [
            ("order 42 failed", "order 9001 failed"),
            ("user_1234 not found", "user_77 not found"),
            (
                "job 550e8400-e29b-41d4-a716-446655440000 stuck",
                "job 123e4567-e89b-12d3-a456-426614174000 stuck",
            ),
            ("at 2024-01-02T03:04:05.123Z", "at 2025-11-30 23:59:59+01:00"),
            ("object at 0x7f3a2b1c", "object at 0xdeadbeef"),
            ("span 00f067aa0ba902b7 lost", "span 4bf92f3577b34da6 lost"),
            ("KeyError: 'alice'", "KeyError: 'bob'"),
            ('no such key "k1"', 'no such key "other"'),
            ("took 1500ms", "took 20ms"),
        ]
        for one, two in pairs:
            assert normalize_message(one) == normalize_message(two), (one, two)
            assert fingerprint("E", one, None) == fingerprint("E", two, None)
        assert fingerprint("E", "order failed", None) != fingerprint("E", "order paid", None)
        assert fingerprint("E", "x", None) != fingerprint("F", "x", None)

    def test_frames(self) -> None:
        """Top frames count (file and function, not line numbers); frames below the top 5 do not."""
        top = [("/app/shop/pay.py", 10, "charge"), ("/app/shop/api.py", 20, "handle")]
        deep = [(f"/app/lib/m{i}.py", i, f"f{i}") for i in range(6)]
        one = stack(*deep, *top)
        moved = stack(*deep, ("/app/shop/pay.py", 99, "charge"), ("/app/shop/api.py", 3, "handle"))
        other = stack(*deep, ("/app/shop/refund.py", 10, "charge"), top[1])
        below = stack(("/app/other.py", 1, "z"), *deep[1:], *top)
        assert top_frames(one)[:2] == ["shop/api.py:handle", "shop/pay.py:charge"]
        assert fingerprint("E", "m", one) == fingerprint("E", "m", moved)
        assert fingerprint("E", "m", one) != fingerprint("E", "m", other)
        assert fingerprint("E", "m", one) == fingerprint("E", "m", below)
        venv = stack(("/srv/a/venv/lib/python3.11/site-packages/httpx/_client.py", 5, "send"))
        other_venv = stack(("/opt/b/lib/python3.12/site-packages/httpx/_client.py", 8, "send"))
        assert fingerprint("E", "m", venv) == fingerprint("E", "m", other_venv)

    def test_real_and_foreign_traces(self) -> None:
        """Chained Python tracebacks use the raised one; Java and JS frames are read top first."""

        def inner() -> None:
            raise KeyError("k")

        def outer() -> None:
            try:
                inner()
            except KeyError as exc:
                raise RuntimeError("wrapped") from exc

        try:
            outer()
        except RuntimeError as exc:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        frames = top_frames(text)
        assert frames[0].endswith(":outer") and not any(f.endswith(":inner") for f in frames)
        java = "E: x\n\tat com.shop.Pay.charge(Pay.java:42)\n\tat com.shop.Api.run(Api.java:7)\n"
        assert top_frames(java) == ["Pay.java:com.shop.Pay.charge", "Api.java:com.shop.Api.run"]
        js = "Error: x\n    at charge (/app/src/pay.js:42:7)\n    at /app/src/main.js:3:1\n"
        assert top_frames(js) == ["src/pay.js:charge", "src/main.js:"]


class TestErrors:
    async def test_groups(self, db: tuple[Any, str]) -> None:
        """Errors group by fingerprint with counts, first/last seen, services, a sample trace."""
        conn, schema = db
        st = stack(("/app/pay.py", 1, "charge"))
        st2 = stack(("/app/pay.py", 77, "charge"))
        other = stack(("/app/refund.py", 1, "refund"))
        trace = new_trace_id()
        rows = [
            make_row(NOW - 50 * S, level=40, message="order 1 failed", stack_trace=st),
            make_row(
                NOW - 40 * S,
                level=40,
                service="worker",
                message="order 22 failed",
                stack_trace=st2,
                trace_id=trace,
            ),
            make_row(NOW - 30 * S, level=50, message="order 333 failed", stack_trace=st),
            make_row(NOW - 20 * S, level=40, message="order 4 failed", stack_trace=other),
            make_row(
                NOW - 10 * S,
                kind=3,
                status=2,
                error_type="TimeoutError",
                error_message="upstream took 5000 ms",
            ),
            make_row(NOW - 5 * S, level=30, message="order 5 failed", stack_trace=st),
            make_row(NOW - 2 * 86400 * S, level=40, message="order 6 failed", stack_trace=st),
        ]
        await copy_rows(conn, schema, A, rows)
        out = await query.errors(conn, schema, A, now=NOW)
        assert out["scanned"] == 5 and not out["truncated"] and out["group_count"] == 3
        top = out["groups"][0]
        assert top["count"] == 3 and top["message"] == "order 333 failed"
        assert top["first_seen"] == NOW - 50 * S and top["last_seen"] == NOW - 30 * S
        assert top["services"] == ["api", "worker"] and top["trace_id"] == trace
        assert top["fingerprint"] == fingerprint(None, "order 1 failed", st)
        assert {g["error_type"] for g in out["groups"][1:]} == {None, "TimeoutError"}
        capped = await query.errors(conn, schema, A, now=NOW, scan=2)
        assert capped["scanned"] == 2 and capped["truncated"]
        assert sum(g["count"] for g in capped["groups"]) == 2


class _Recorder:
    """A connection that remembers the statements run through it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.conn.fetch(sql, *args)


def index_names(plan: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(plan, dict):
        if plan.get("Node Type") in ("Index Scan", "Index Only Scan", "Bitmap Index Scan"):
            out.add(plan["Index Name"])
        for value in plan.values():
            out |= index_names(value)
    elif isinstance(plan, list):
        for value in plan:
            out |= index_names(value)
    return out


async def seed_realistic(conn: Any, schema: str, per_project: int = 20_000) -> str:
    """Three days of rows for two projects, a few percent errors, then ANALYZE; a trace id."""
    today = dt.datetime.now(dt.timezone.utc).date()
    await ensure_partitions(conn, schema, today=today - dt.timedelta(days=1))
    rng = random.Random(11)
    services = [f"svc{i}" for i in range(10)]
    words = ["payment", "refund", "login", "cache", "queue", "render", "sync", "export"]
    sample = ""
    for project in (A, B):
        rows = []
        trace = new_trace_id()
        for i in range(per_project):
            if i % 5 == 0:
                trace = new_trace_id()
            failed = rng.random() < 0.03
            rows.append(
                make_row(
                    NOW - rng.randrange(0, 3 * 86400) * S - rng.randrange(0, S),
                    kind=rng.choice([0, 0, 3]),
                    level=40 if failed else rng.choice([10, 20, 20, 30]),
                    status=2 if failed and rng.random() < 0.5 else 0,
                    trace_id=trace,
                    span_id=new_span_id(),
                    service=rng.choice(services),
                    duration_ns=rng.randrange(1, 500) * MS,
                    message=f"{rng.choice(words)} {rng.choice(words)} item {i}"
                    + (" quarantined" if i % 2000 == 0 else ""),
                    attrs={"user": rng.randrange(1000)},
                    error_type="ValueError" if failed else None,
                )
            )
        await copy_rows(conn, schema, project, rows)
        sample = trace
    await conn.execute(f"ANALYZE {schema}.records")
    return sample


class TestPlans:
    async def test_queries_use_their_indexes(self, db: tuple[Any, str]) -> None:
        """EXPLAIN of each query over realistic data shows the index meant for it."""
        conn, schema = db
        trace = await seed_realistic(conn, schema)
        parents: dict[str, str] = {}

        async def learn_parents() -> None:
            parents.update(
                (r["part"], r["parent"])
                for r in await conn.fetch(
                    "SELECT c.relname AS part, p.relname AS parent FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = $1 AND c.relkind = 'i'",
                    schema,
                )
            )

        await learn_parents()

        async def used(call: Any) -> set[str]:
            rec = _Recorder(conn)
            await call(rec)
            found: set[str] = set()
            for sql, args in rec.statements:
                plan = orjson.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
                found |= {parents.get(name, name) for name in index_names(plan)}
            return found

        def search(**params: str) -> Any:
            return lambda c: query.search(c, schema, parse_filters(params, project=A, now=NOW))

        expectations = [
            (lambda c: query.trace(c, schema, A, trace), "records_trace_idx"),
            (search(), "records_ts_idx"),
            (search(service="svc3"), "records_service_ts_idx"),
            # Without the opt-in full-text index, q filters the time range's index scan.
            (search(q="quarantined"), "records_ts_idx"),
            (search(level="error"), "records_errors_idx"),
            (search(trace_id=trace), "records_trace_idx"),
            (lambda c: query.errors(c, schema, A, now=NOW), "records_errors_idx"),
            # An hour twelve hours back: a twelfth of its day's partition or less, whatever
            # the time of day (the last hour can be all of today's partition just after
            # midnight UTC, where a sequential scan is the right plan).
            (
                lambda c: query.stats(
                    c,
                    schema,
                    A,
                    since=NOW - 13 * 3600 * S,
                    until=NOW - 12 * 3600 * S,
                    durations=True,
                    now=NOW,
                ),
                "records_ts_idx",
            ),
            (
                lambda c: query.spans(
                    c, schema, A, since=NOW - 13 * 3600 * S, until=NOW - 12 * 3600 * S, now=NOW
                ),
                "records_ts_idx",
            ),
        ]
        for call, index in expectations:
            assert index in await used(call), index
        # With it (atrace db init --text-index), the same q search uses it, and finds the same.
        before = await search(q="quarantined")(conn)
        await ensure_text_index(conn, schema)
        await conn.execute(f"ANALYZE {schema}.records")
        await learn_parents()
        assert "records_text_idx" in await used(search(q="quarantined"))
        assert await search(q="quarantined")(conn) == before
        assert before["records"] and all("quarantined" in r["message"] for r in before["records"])


class TestRoutes:
    async def test_endpoints(self, collector_server: CollectorServer) -> None:
        """Each route answers JSON for the key's project; 404, 400 and 401 as documented."""
        server = collector_server
        key_a, key_b = await server.create_key(A), await server.create_key(B)
        trace = new_trace_id()
        rows, _ = trace_rows(trace, NOW - 5 * S)
        conn = await asyncpg.connect(server.db_dsn)
        try:
            await connection_init(conn)
            await copy_rows(conn, server.schema, A, rows)
        finally:
            await conn.close()
        got = await server.request("GET", f"/v1/traces/{trace}", key=key_a)
        assert got.status == 200 and got.json()["span_count"] == 6
        got = await server.request("GET", f"/v1/traces/{trace}", key=key_b)
        assert got.status == 404 and got.json() == {"error": "no such trace"}
        got = await server.request("GET", "/v1/traces/zzz", key=key_a)
        assert got.status == 400 and got.json()["field"] == "trace_id"
        got = await server.request("GET", "/v1/search?kind=log&limit=2", key=key_a)
        body = got.json()
        assert got.status == 200 and body["next_cursor"]
        assert [r["message"] for r in body["records"]] == ["lost log", "inside C1"]
        got = await server.request(
            "GET", f"/v1/search?kind=log&limit=2&cursor={body['next_cursor']}", key=key_a
        )
        assert [r["message"] for r in got.json()["records"]] == ["root log"]
        got = await server.request("GET", "/v1/search", key=key_b)
        assert got.json() == {"records": [], "next_cursor": None, "resources": {}}
        got = await server.request("GET", "/v1/search?level=loud", key=key_a)
        assert got.status == 400 and got.json()["field"] == "level"
        got = await server.request("GET", "/v1/stats?interval=1m&since=1h", key=key_a)
        assert sum(b["count"] for b in got.json()["buckets"]) == len(rows)
        got = await server.request("GET", "/v1/errors", key=key_a)
        assert [g["error_type"] for g in got.json()["groups"]] == ["ValueError"]
        got = await server.request("GET", "/v1/errors?scan=0", key=key_a)
        assert got.status == 400
        for path in ("/v1/search", f"/v1/traces/{trace}", "/v1/stats", "/v1/errors", "/v1/tail"):
            assert (await server.request("GET", path)).status == 401
            assert (await server.request("GET", path, key="atk_nope")).status == 401


class TestResponseBytes:
    async def test_a_search_page_ends_early_and_the_cursor_gives_the_rest(
        self, db: tuple[Any, str]
    ) -> None:
        conn, schema = db
        trace = new_trace_id()
        big = {"blob": "x" * 10_000}
        rows = [make_row(NOW - i * S, trace_id=trace, message=f"m{i}", attrs=big) for i in range(7)]
        await copy_rows(conn, schema, A, rows)
        filters = parse_filters({"limit": "100"}, project=A, now=NOW)
        seen: list[str] = []
        pages = 0
        while True:
            page = await query.search(conn, schema, filters, max_bytes=25_000)
            pages += 1
            assert 1 <= len(page["records"]) <= 3  # ~10.4 kB each: two fit, a third passes it
            seen += messages(page)
            if page["next_cursor"] is None:
                break
            filters = parse_filters(
                {"limit": "100", "cursor": page["next_cursor"]}, project=A, now=NOW
            )
        assert seen == [f"m{i}" for i in range(7)] and pages >= 3
        whole = await query.search(conn, schema, parse_filters({}, project=A, now=NOW))
        assert len(whole["records"]) == 7 and whole["next_cursor"] is None

    async def test_a_trace_past_the_bound_is_cut_and_says_so(self, db: tuple[Any, str]) -> None:
        conn, schema = db
        trace = new_trace_id()
        big = {"blob": "y" * 10_000}
        rows = [make_row(NOW - i * S, trace_id=trace, message=f"t{i}", attrs=big) for i in range(5)]
        await copy_rows(conn, schema, A, rows)
        cut = await query.trace(conn, schema, A, trace, max_bytes=25_000)
        full = await query.trace(conn, schema, A, trace)
        assert cut is not None and full is not None
        assert cut["truncated"] and not full["truncated"]
        assert len(cut["logs"]) < len(full["logs"]) == 5

    async def test_stats_buckets_past_the_bound_are_cut_and_say_so(
        self, db: tuple[Any, str]
    ) -> None:
        conn, schema = db
        # 40 services in one minute: 40 buckets of ~64 + 30 bytes each.
        rows = [make_row(NOW - S, service=f"service-{i:02d}-" + "s" * 20) for i in range(40)]
        await copy_rows(conn, schema, A, rows)
        since, until = NOW - 60 * S, NOW + S
        cut = await query.stats(conn, schema, A, since=since, until=until, max_bytes=1000)
        full = await query.stats(conn, schema, A, since=since, until=until)
        assert not full["truncated"] and len(full["buckets"]) == 40
        assert cut["truncated"] and 1 <= len(cut["buckets"]) < 40
        assert cut["buckets"] == full["buckets"][: len(cut["buckets"])]

    async def test_an_error_scan_holds_rows_up_to_the_byte_bound(self, db: tuple[Any, str]) -> None:
        conn, schema = db
        stack = "Traceback (most recent call last):\n" + "  frame\n" * 1000
        rows = [
            make_row(
                NOW - i * S,
                level=40,
                trace_id=new_trace_id(),
                error_type="ValueError",
                error_message=f"order {i} failed",
                stack_trace=stack,
            )
            for i in range(30)
        ]
        await copy_rows(conn, schema, A, rows)
        since = NOW - 60 * S
        cut = await query.errors(conn, schema, A, since=since, max_bytes=40_000)
        full = await query.errors(conn, schema, A, since=since, max_bytes=10_000_000)
        assert full["scanned"] == 30 and not full["truncated"]
        assert cut["truncated"] and 1 <= cut["scanned"] <= 6  # ~8 kB of stack a row
        assert cut["groups"][0]["error_type"] == "ValueError"
