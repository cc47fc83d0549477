"""The terminal views (`atrace traces|show|tail|errors`), run as installed commands against seeded
data in a real PostgreSQL, directly and through a running collector."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import atrace
from _collector import CollectorServer, collector_server  # noqa: F401
from atrace._emit.ids import new_span_id
from atrace._postgres.schema import ensure_schema
from atrace._postgres.session import connection_init, copy_rows
from atrace._records import COLUMNS
from test_error_groups import http_span

ATRACE = str(Path(sys.executable).with_name("atrace"))
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


async def run(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """The command as a subprocess, without blocking the test's loop (a collector may run on it)."""
    proc = await asyncio.create_subprocess_exec(
        ATRACE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


class Seeded:
    def __init__(self, dsn: str, schema: str, trace_id: str, inflight_trace: str) -> None:
        self.dsn, self.schema = dsn, schema
        self.trace_id, self.inflight_trace = trace_id, inflight_trace

    def db(self, *args: str) -> list[str]:
        return [*args, "--dsn", self.dsn, "--schema", self.schema]


async def seed(dsn: str, schema: str) -> Seeded:
    """A checkout trace (nested spans, logs, a failed payment with a traceback), a slow report,
    and a trace whose root span is still running (a start row with no end)."""
    atrace.configure(service="shop", sink=dsn, schema=schema, flush_interval=0.05)
    async with atrace.span("checkout", order=42) as root:
        trace_id = atrace.current_trace_id()
        atrace.info("cart loaded", items=3)
        async with atrace.span("reserve stock"):
            await asyncio.sleep(0.001)
        try:
            async with atrace.span("charge card", amount=19.5):
                raise ValueError("card 4242 declined")
        except ValueError:
            atrace.exception("payment failed")
        root.set(outcome="failed")
    for _ in range(3):
        async with atrace.span("report"):
            await asyncio.sleep(0.06)
    assert await atrace.aflush(timeout=30)
    await atrace.ashutdown()
    assert trace_id is not None
    inflight = "0" * 31 + "7"
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        ts=time.time_ns() - 2_000_000_000,
        kind=1,
        level=20,
        status=0,
        service="shop",
        trace_id=inflight,
        span_id=new_span_id(),
        name="nightly import",
    )
    conn = await asyncpg.connect(dsn)
    try:
        await connection_init(conn)
        await copy_rows(conn, schema, [tuple(row[c] for c in COLUMNS)])
    finally:
        await conn.close()
    return Seeded(dsn, schema, trace_id, inflight)


def as_status_message(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """An HTTP-failed span row as the integrations write it since schema 5: "HTTP 502" as the
    status message, no error message, a server span."""
    values = dict(zip(COLUMNS, row, strict=True))
    values.update(status_message=values["error_message"], error_message=None, span_kind=2)
    return tuple(values[c] for c in COLUMNS)


@pytest.fixture
async def seeded(pg_schema: tuple[str, str]) -> Seeded:
    return await seed(*pg_schema)


class TestTraces:
    async def test_dashboard_by_span_name(self, seeded: Seeded) -> None:
        """One row per span name with its last status, count and failures."""
        code, out, err = await run(*seeded.db("traces"))
        assert code == 0, err
        rows = {}
        for line in out.splitlines():
            cells = line.split()
            if cells and cells[0] == "shop":
                # service, mark, name words…, count, errors, last seen (2), p50 (2), p95 (2)
                rows[" ".join(cells[2:-8])] = (cells[1], int(cells[-8]), int(cells[-7]))
        assert rows["charge card"] == ("✗", 1, 1)
        assert rows["report"] == ("✓", 3, 0)
        assert rows["checkout"] == ("✓", 1, 0)
        assert "reserve stock" in rows

    async def test_json_and_filters(self, seeded: Seeded) -> None:
        """--json for scripts; --errors keeps failed names, --slow MS only slow spans."""
        code, out, _ = await run(*seeded.db("traces", "--json"))
        assert code == 0
        by_name = {s["name"]: s for s in json.loads(out)["spans"]}
        assert by_name["report"]["count"] == 3 and by_name["report"]["p50_ns"] >= 60_000_000
        assert by_name["charge card"]["errors"] == 1
        _, out, _ = await run(*seeded.db("traces", "--json", "--errors"))
        assert {s["name"] for s in json.loads(out)["spans"]} == {"charge card"}
        _, out, _ = await run(*seeded.db("traces", "--json", "--slow", "50"))
        assert {s["name"] for s in json.loads(out)["spans"]} == {"report"}
        _, out, _ = await run(*seeded.db("traces", "--json", "--service", "nope"))
        assert json.loads(out)["spans"] == []


class TestShow:
    async def test_tree_with_logs_and_errors(self, seeded: Seeded) -> None:
        """Spans nest, logs sit under their span, the error shows its traceback."""
        code, out, err = await run(*seeded.db("show", seeded.trace_id))
        assert code == 0, err
        lines = out.splitlines()
        assert seeded.trace_id in lines[0] and "4 spans" not in lines[0]

        def at(text: str) -> int:
            return next(i for i, line in enumerate(lines) if text in line)

        def depth(i: int) -> int:
            return len(lines[i]) - len(lines[i].lstrip(" │├└─"))

        assert depth(at("checkout")) < depth(at("reserve stock"))
        assert depth(at("checkout")) < depth(at("cart loaded"))
        assert at("reserve stock") < at("charge card") < at("payment failed")
        assert "✗ error" in lines[at("charge card")]
        assert "ValueError: card 4242 declined" in out
        assert "Traceback (most recent call last)" in out
        assert 'outcome="failed"' in out

    async def test_in_flight_and_json(self, seeded: Seeded) -> None:
        """A span with a start and no end is marked in flight; --json gives the tree."""
        _, out, _ = await run(*seeded.db("show", seeded.inflight_trace))
        assert "nightly import" in out and "in flight" in out
        code, out, _ = await run(*seeded.db("show", seeded.trace_id, "--json"))
        tree = json.loads(out)
        assert code == 0 and tree["trace_id"] == seeded.trace_id
        assert [s["name"] for s in tree["spans"]] == ["checkout"]
        assert [c["name"] for c in tree["spans"][0]["children"]] == ["reserve stock", "charge card"]

    async def test_span_kind_and_status_message(self, pg_schema: tuple[str, str]) -> None:
        """A span's kind other than internal is shown beside it, and an error status set with a
        message shows that message (there is no exception to show)."""
        dsn, schema = pg_schema
        atrace.configure(service="shop", sink=dsn, schema=schema, flush_interval=0.05)
        async with atrace.span("GET /orders", kind="server"):
            trace_id = atrace.current_trace_id()
            async with atrace.span("quota check") as check:
                check.set_status("error", "quota exceeded")
        assert await atrace.aflush(timeout=30)
        await atrace.ashutdown()
        code, out, err = await run("show", trace_id or "", "--dsn", dsn, "--schema", schema)
        assert code == 0, err
        lines = out.splitlines()
        root = next(line for line in lines if "GET /orders" in line)
        check_line = next(line for line in lines if "quota check" in line)
        assert "server" in root and "internal" not in check_line
        assert "status: quota exceeded" in out
        assert "error: quota exceeded" not in out

    async def test_links_under_their_span(self, pg_schema: tuple[str, str]) -> None:
        """A span's links are listed under it: the trace and span each points at, whole (what
        `atrace show` takes), and the link's attributes."""
        dsn, schema = pg_schema
        atrace.configure(service="shop", sink=dsn, schema=schema, flush_interval=0.05)
        async with atrace.span("enqueue") as producer:
            pass
        async with atrace.span(
            "consume batch",
            kind="consumer",
            links=[(producer.trace_id, producer.span_id, {"n": 1})],
        ):
            trace_id = atrace.current_trace_id()
        assert await atrace.aflush(timeout=30)
        await atrace.ashutdown()
        code, out, err = await run("show", trace_id or "", "--dsn", dsn, "--schema", schema)
        assert code == 0, err
        lines = out.splitlines()
        at = next(i for i, line in enumerate(lines) if "consume batch" in line)
        link = lines[at + 1]
        assert "↪ link" in link and f"trace {producer.trace_id}" in link
        assert f"span {producer.span_id & (2**64 - 1):016x}" in link and "n=1" in link

    async def test_unknown_trace_and_bad_id(self, seeded: Seeded) -> None:
        """An unknown trace exits 1, a malformed id 2, each with one line on stderr."""
        code, out, err = await run(*seeded.db("show", "ab" * 16))
        assert (code, out) == (1, "") and err == f"atrace: no trace {'ab' * 16}\n"
        code, _, err = await run(*seeded.db("show", "xyz"))
        assert code == 2 and err.count("\n") == 1 and "trace_id" in err


class TestTail:
    async def test_recent_records_with_filters(self, seeded: Seeded) -> None:
        """Without -f: the newest records, oldest first; --level and -q narrow them."""
        code, out, err = await run(*seeded.db("tail", "-n", "100"))
        assert code == 0, err
        assert out.index("cart loaded") < out.index("payment failed")
        _, out, _ = await run(*seeded.db("tail", "--level", "error", "--json"))
        recs = [json.loads(line) for line in out.splitlines()]
        assert recs and all(r["level"] >= 40 for r in recs)
        assert "payment failed" in {r["message"] for r in recs}
        _, out, _ = await run(*seeded.db("tail", "-q", "cart", "--json"))
        assert [json.loads(line)["message"] for line in out.splitlines()] == ["cart loaded"]

    async def test_follow_prints_new_records(self, seeded: Seeded) -> None:
        """-f keeps printing what is committed after it started."""
        proc = await asyncio.create_subprocess_exec(
            ATRACE,
            *seeded.db("tail", "-f", "--json", "-q", "arrived"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=ENV,
        )
        try:
            assert proc.stdout is not None
            got: dict[str, Any] = {}
            for attempt in range(60):
                atrace.configure(service="late", sink=seeded.dsn, schema=seeded.schema)
                atrace.info("record arrived", n=attempt)
                await atrace.ashutdown()
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 1.0)
                except asyncio.TimeoutError:
                    continue
                got = json.loads(line)
                break
            assert got["message"] == "record arrived" and got["service"] == "late"
        finally:
            proc.terminate()
            await proc.wait()


class TestErrors:
    async def test_groups(self, seeded: Seeded) -> None:
        """Error groups with counts and a sample trace, as a table and as JSON; the failed span
        and the log of its exception are one occurrence."""
        code, out, err = await run(*seeded.db("errors"))
        assert code == 0, err
        assert "ValueError: card 4242 declined" in out and seeded.trace_id in out
        _, out, _ = await run(*seeded.db("errors", "--json"))
        groups = json.loads(out)["groups"]
        assert [(g["error_type"], g["count"], g["linked"]) for g in groups] == [
            ("ValueError", 1, 1)
        ]

    @pytest.mark.parametrize("stored_as", ["status_message", "error_message"])
    async def test_http_labels(self, pg_schema: tuple[str, str], stored_as: str) -> None:
        """HTTP-status failures show as "HTTP 502 GET /route", one row per status and route:
        as the integrations store them now ("HTTP 502" the status message, no error), and as
        rows stored before schema 5 have them (the error message)."""
        dsn, schema = pg_schema
        now = time.time_ns()
        rows = [
            http_span(now - i * 1_000_000_000, 502, "GET", "/order/{order_id}") for i in range(3)
        ]
        rows += [http_span(now - 5_000_000_000, 500, "GET", "/order/{order_id}")]
        rows += [http_span(now - 6_000_000_000, 502, "POST", "/pay")]
        if stored_as == "status_message":
            rows = [as_status_message(r) for r in rows]
        conn = await asyncpg.connect(dsn)
        try:
            await connection_init(conn)
            await ensure_schema(conn, schema)
            await copy_rows(conn, schema, rows)
        finally:
            await conn.close()
        code, out, err = await run("errors", "--dsn", dsn, "--schema", schema)
        assert code == 0, err
        counts = {}
        for line in out.splitlines():
            cells = line.replace("│", " ").split()
            if "HTTP" in cells:
                at = cells.index("HTTP")
                counts[" ".join(cells[at : at + 4])] = int(cells[1])
        assert counts == {
            "HTTP 502 GET /order/{order_id}": 3,
            "HTTP 500 GET /order/{order_id}": 1,
            "HTTP 502 POST /pay": 1,
        }
        assert ": HTTP" not in out


class TestSources:
    async def test_unreachable_database(self) -> None:
        """No server at the DSN: exit 3 and one line naming where, never a traceback."""
        code, out, err = await run("traces", "--dsn", "postgresql://u:secret@127.0.0.1:9/x")
        assert code == 3 and out == ""
        assert err.startswith("atrace: cannot reach the database (127.0.0.1:9/x)")
        assert err.count("\n") == 1 and "secret" not in err

    async def test_missing_schema(self, pg_server: Any) -> None:
        """A database without atrace's tables says so and how to fix it."""
        code, _, err = await run("traces", "--dsn", pg_server.dsn, "--schema", "absent_schema")
        assert code == 3 and "atrace db init" in err

    async def test_through_a_collector(
        self,
        collector_server: CollectorServer,  # noqa: F811
    ) -> None:
        """--url reads a collector's query API with the project's key; a bad key exits 3."""
        server = collector_server
        key = await server.create_key("default")
        seeded = await seed(server.db_dsn, server.schema)
        via = ["--url", server.url, "--api-key", key]
        code, out, err = await run("traces", "--json", *via)
        assert code == 0, err
        assert {"checkout", "report"} <= {s["name"] for s in json.loads(out)["spans"]}
        code, out, err = await run("show", seeded.trace_id, *via)
        assert code == 0 and "charge card" in out, err
        code, out, _ = await run("errors", "--json", *via)
        assert json.loads(out)["groups"]
        code, out, _ = await run("tail", "--json", "-q", "cart", *via)
        assert [json.loads(line)["message"] for line in out.splitlines()] == ["cart loaded"]
        code, _, err = await run("traces", "--url", server.url, "--api-key", "atk_0_bad")
        assert code == 3 and err.startswith("atrace: the collector") and err.count("\n") == 1
        code, _, err = await run("traces", "--url", "http://127.0.0.1:9", "--api-key", key)
        assert code == 3 and "cannot reach the collector" in err
