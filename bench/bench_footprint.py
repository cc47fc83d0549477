"""Bytes on disk per record: heap, TOAST and every index, divided by the records, for each of a
representative mix, each in a schema of its own:

- ``http_span``: an HTTP server span as atrace's emit API records it, with 10 attributes named
  by OpenTelemetry's semantic conventions;
- ``log``: a log with 3 attributes, emitted in a span;
- ``otlp_span``: a span as the OpenTelemetry SDK sends it over OTLP (its resource with the SDK's
  attributes, 6 span attributes), decoded by the collector's decoder.

Run it from the repository root (``python bench/bench_footprint.py``); ``PYTHONPATH`` picks the
tree measured, so that two trees compare in one run. Figures are after ``VACUUM ANALYZE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import time
from typing import Any

import asyncpg
from _common import postgres

import atrace
from atrace._formats import otlp
from atrace._postgres.schema import ensure_schema
from atrace._postgres.session import connection_init, copy_rows

RECORDS = 100_000
QUICK_RECORDS = 10_000


def _http_attrs(i: int, rng: random.Random) -> dict[str, Any]:
    route = rng.choice(["/orders/{id}", "/cart", "/checkout", "/users/{id}/profile"])
    return {
        "http.request.method": rng.choice(["GET", "GET", "GET", "POST"]),
        "http.route": route,
        "url.path": route.replace("{id}", str(rng.randrange(10**6))),
        "url.scheme": "https",
        "server.address": "shop.example.com",
        "server.port": 443,
        "client.address": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
        "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
        "http.response.status_code": rng.choice([200, 200, 200, 201, 404]),
        "network.protocol.version": "1.1",
    }


async def emit(dsn: str, schema: str, n: int, what: str) -> None:
    """``n`` records of ``what`` through atrace's own pipeline into ``schema``."""
    rng = random.Random(7)
    atrace.configure(
        service="shop", sink=dsn, schema=schema, batch_size=5_000, flush_interval=0.2,
        capacity=200_000,
    )  # fmt: skip
    for i in range(n):
        if what == "http_span":
            with atrace.span("GET /orders/{id}", kind="server", **_http_attrs(i, rng)):
                pass
        else:
            atrace.info("order loaded", order_id=i, items=rng.randrange(1, 9), currency="EUR")
        if i % 2_000 == 0:
            # Yield to the flusher, longer while the ring fills (no record may be dropped).
            pause = 0.01 if atrace.metrics().queue_size > 100_000 else 0
            await asyncio.sleep(pause)
    assert await atrace.aflush(timeout=120)
    await atrace.ashutdown()


def _sdk_request(n: int) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    rng = random.Random(11)
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    resource = {
        "service.name": "payments",
        "service.version": "2.4.1",
        "deployment.environment.name": "prod",
        "host.name": "web-3",
        "process.pid": 4242,
        "process.runtime.name": "cpython",
        "process.runtime.version": "3.11.7",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": "1.29.0",
        "service.instance.id": "8b6c1f8e-5f1e-4f5a-9a43-0d7b0f6a3b2c",
    }
    for key, value in resource.items():
        kv = rs.resource.attributes.add()
        kv.key = key
        if isinstance(value, int):
            kv.value.int_value = value
        else:
            kv.value.string_value = value
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "opentelemetry.instrumentation.asgi", "0.50b0"
    now = time.time_ns()
    trace = rng.randbytes(16)
    for i in range(n):
        if i % 8 == 0:
            trace = rng.randbytes(16)
        sp = ss.spans.add()
        sp.trace_id, sp.span_id = trace, rng.randbytes(8)
        sp.name, sp.kind = "POST /pay", 2
        sp.flags = 0x301
        sp.start_time_unix_nano = now - (n - i) * 1_000_003
        sp.end_time_unix_nano = sp.start_time_unix_nano + rng.randrange(10**6, 10**8)
        for key, value in (
            ("http.request.method", "POST"),
            ("http.route", "/pay"),
            ("url.scheme", "https"),
            ("server.port", 8000),
            ("http.response.status_code", 200),
            ("client.address", f"10.1.{rng.randrange(256)}.{rng.randrange(256)}"),
        ):
            kv = sp.attributes.add()
            kv.key = key
            if isinstance(value, int):
                kv.value.int_value = value
            else:
                kv.value.string_value = value
    return bytes(request.SerializeToString())


async def ingest_otlp(dsn: str, schema: str, n: int) -> None:
    """``n`` SDK-shaped spans decoded as the collector decodes them, stored as it stores them."""
    conn = await asyncpg.connect(dsn)
    try:
        await connection_init(conn)
        await ensure_schema(conn, schema)
        from atrace._postgres.schema import ensure_partitions

        await ensure_partitions(conn, schema)
        step = 10_000
        for start in range(0, n, step):
            body = _sdk_request(min(step, n - start))
            resources: dict[int, bytes] = {}
            try:
                rows = otlp.decode_traces(body, "application/x-protobuf", resources=resources)
            except TypeError:  # a tree from before resources were kept apart
                rows = otlp.decode_traces(body, "application/x-protobuf")
            if resources:
                from atrace._postgres.session import store_resources

                await store_resources(conn, schema, "default", resources)
            await copy_rows(conn, schema, rows)
    finally:
        await conn.close()


async def measure(dsn: str, schema: str) -> dict[str, Any]:
    """Heap, TOAST and index bytes of every table of ``schema``, and the records."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"VACUUM ANALYZE {schema}.records")
        rows = int(await conn.fetchval(f"SELECT count(*) FROM {schema}.records"))
        sizes = await conn.fetch(
            "SELECT c.relname, pg_relation_size(c.oid) AS heap, "
            "coalesce(pg_total_relation_size(c.reltoastrelid), 0) AS toast, "
            "pg_indexes_size(c.oid) AS indexes "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'r'",
            schema,
        )
        # Each partition's index by the parent index it is part of.
        indexes = await conn.fetch(
            "SELECT coalesce(parent.relname, i.relname) AS name, pg_relation_size(i.oid) AS bytes "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
            "LEFT JOIN pg_inherits h ON h.inhrelid = i.oid "
            "LEFT JOIN pg_class parent ON parent.oid = h.inhparent "
            "WHERE n.nspname = $1 AND t.relname LIKE 'records%' AND t.relkind = 'r'",
            schema,
        )
    finally:
        await conn.close()
    by_index: dict[str, int] = {}
    for r in indexes:
        by_index[r["name"]] = by_index.get(r["name"], 0) + int(r["bytes"])
    records = [s for s in sizes if s["relname"].startswith("records")]
    others = [s for s in sizes if not s["relname"].startswith("records")]
    heap = sum(int(s["heap"]) for s in records)
    toast = sum(int(s["toast"]) for s in records)
    index_bytes = sum(int(s["indexes"]) for s in records)
    side = sum(int(s["heap"]) + int(s["toast"]) + int(s["indexes"]) for s in others)
    return {
        "records": rows,
        "heap": heap / rows,
        "toast": toast / rows,
        "indexes": index_bytes / rows,
        "by_index": {k: v / rows for k, v in sorted(by_index.items())},
        "other_tables": side / rows,  # the ledger, keys, resources
        "total": (heap + toast + index_bytes + side) / rows,
    }


async def run(dsn: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for what in ("http_span", "log", "otlp_span"):
        schema = f"bench_fp_{what}"
        conn = await asyncpg.connect(dsn)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
        if what == "otlp_span":
            await ingest_otlp(dsn, schema, n)
        else:
            await emit(dsn, schema, n, what)
        out[what] = await measure(dsn, schema)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="PostgreSQL to use (default: a throwaway local server)")
    parser.add_argument("--records", type=int, default=None, help=f"per kind ({RECORDS:,})")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (small N)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    args = parser.parse_args()
    n = args.records or (QUICK_RECORDS if args.quick else RECORDS)
    with postgres(args.dsn) as (dsn, _):
        results = asyncio.run(run(dsn, n))
    print(f"atrace {atrace.__version__} ({atrace.__file__}); {platform.python_version()}")
    print(f"{'bytes per record':<18}{'heap':>8}{'toast':>8}{'indexes':>9}{'other':>8}{'total':>8}")
    for what, r in results.items():
        print(
            f"{what:<18}{r['heap']:>8.1f}{r['toast']:>8.1f}{r['indexes']:>9.1f}"
            f"{r['other_tables']:>8.1f}{r['total']:>8.1f}"
        )
        for name, size in r["by_index"].items():
            print(f"  {name:<34}{size:>8.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
