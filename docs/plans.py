"""Regenerate the "## Plans" section of docs/queries.md: the read API's statements, EXPLAINed
over the realistic data of tests/test_query.py on a throwaway PostgreSQL.

    python docs/plans.py            # rewrites docs/queries.md in place
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import asyncpg  # noqa: E402

from _pg import PgServer  # noqa: E402
from atrace._postgres.schema import ensure_schema  # noqa: E402
from atrace._records import COLUMNS  # noqa: E402
from atrace.collector import _query as query  # noqa: E402
from atrace.collector._query import parse_filters  # noqa: E402
from atrace.collector._tail import TailHub  # noqa: E402
from atrace.sinks.postgres import connection_init, copy_rows  # noqa: E402
from test_query import NOW, A, S, _Recorder, seed_realistic  # noqa: E402

SCHEMA = "atrace"
DOC = ROOT / "docs" / "queries.md"


async def explain(conn: Any, sql: str, args: tuple[Any, ...]) -> str:
    rows = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {sql}", *args)
    return "\n".join(r[0] for r in rows)


async def section(conn: Any) -> str:
    await connection_init(conn)
    await ensure_schema(conn, SCHEMA)
    trace = await seed_realistic(conn, SCHEMA)

    def search(**params: str) -> Any:
        return lambda c: query.search(c, SCHEMA, parse_filters(params, project=A, now=NOW))

    first = await query.search(conn, SCHEMA, parse_filters({"limit": "50"}, project=A, now=NOW))
    cursor = first["next_cursor"]
    cases: list[tuple[str, Any]] = [
        ("GET /v1/traces/{id}", lambda c: query.trace(c, SCHEMA, A, trace)),
        ("GET /v1/search (no filter: last 24 h)", search()),
        ("GET /v1/search?service=svc3", search(service="svc3")),
        ("GET /v1/search?cursor=... (the next page)", search(limit="50", cursor=cursor)),
        ("GET /v1/search?q=quarantined", search(q="quarantined")),
        ("GET /v1/search?level=error", search(level="error")),
        ("GET /v1/search?trace_id=...", search(trace_id=trace)),
        ("GET /v1/search?attr.user=42&since=1h", search(**{"attr.user": "42", "since": "1h"})),
        ("GET /v1/errors", lambda c: query.errors(c, SCHEMA, A, now=NOW)),
        (
            "GET /v1/stats?since=1h (counts per bucket)",
            lambda c: query.stats(c, SCHEMA, A, since=NOW - 3600 * S, now=NOW),
        ),
        (
            "GET /v1/spans?since=1h (the span dashboard)",
            lambda c: query.spans(c, SCHEMA, A, since=NOW - 3600 * S, now=NOW),
        ),
    ]
    out = ["## Plans", ""]
    for title, call in cases:
        rec = _Recorder(conn)
        await call(rec)
        for sql, args in rec.statements[:1]:
            plan = await explain(conn, sql, args)
            out += [f"### {title}", "```sql", sql, "```", "```", plan, "```", ""]
    # The live tail fetches the rows of one announced statement: write one, then fetch it.
    hub = TailHub(SCHEMA)
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(ts=NOW, kind=0, level=20, status=0, service="svc0", message="announced")
    async with conn.transaction():
        await copy_rows(
            conn,
            SCHEMA,
            [tuple(row[c] for c in COLUMNS)],
            extra_columns=("project",),
            extra_values=(A,),
        )
        xid = await conn.fetchval("SELECT txid_current() % 4294967296")
    us = NOW // 1000
    args = (A, us - 1_000_000, us + 1_000_000, str(xid), 1000)
    plan = await explain(conn, hub._fetch_sql, args)
    out += ["### live tail: rows announced by a NOTIFY", "```sql", hub._fetch_sql, "```"]
    out += ["```", plan, "```", ""]
    return "\n".join(out)


async def main(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        text = await section(conn)
    finally:
        await conn.close()
    doc = DOC.read_text()
    head = doc[: doc.index("## Plans")]
    DOC.write_text(head + text.rstrip("\n") + "\n")


if __name__ == "__main__":
    server = PgServer()
    server.start()
    try:
        asyncio.run(main(server.dsn))
    finally:
        server.stop()
