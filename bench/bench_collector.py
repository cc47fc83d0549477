"""Collector throughput: `atrace serve` in its own process, loaded over loopback by concurrent
aiohttp clients posting native msgpack batches of 1000 records, then OTLP protobuf exports of
1000 spans; records/s stored and request latency, against raw asyncpg COPY of the same rows."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from _abuse import HEALTH_BATCH, report_abuse, report_healthz
from _common import postgres

from atrace._emit.ids import new_span_id, new_trace_id
from atrace._formats.otlp import traces_request
from atrace._formats.wire import encode_batch
from atrace._postgres.schema import ensure_schema
from atrace._records import COLUMNS
from atrace.collector._auth import create_key
from atrace.sinks import Batch
from atrace.sinks.postgres import connection_init

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "bench_collector"
RAW_SCHEMA = "bench_collector_raw"
PROJECT = "bench"
BATCH = 1000
CLIENTS = 4
DURATION = {"native": 20.0, "otlp": 10.0}
QUICK_DURATION = {"native": 6.0, "otlp": 4.0}
RAW_RECORDS = 300_000
QUICK_RAW_RECORDS = 60_000
TARGET_NATIVE = 150_000
TARGET_NATIVE_P99_MS = 50.0
TARGET_OTLP = 60_000


def make_rows(n: int) -> list[tuple[Any, ...]]:
    """Rows like a traced service's: complete spans (with a parent) and logs, small attrs."""
    now = time.time_ns() // 1000 * 1000
    trace = new_trace_id()
    root = new_span_id()
    rows = []
    for i in range(n):
        span = i % 2 == 0
        rows.append(
            (
                now + i * 1000, 3 if span else 0, 20, trace,
                new_span_id() if span else root, root if span else None,
                125_000 + i if span else None, 1 if span else 0,
                "checkout", "prod", "web-1", 4242,
                "GET /orders/{id}" if span else "app.orders",
                None if span else f"order {i} loaded",
                b'{"http.status_code": 200, "order_id": %d}' % i,
                None, None, None, "orders.py:42",
                # span_kind, trace_state, trace_flags, status_message (schema 5)
                *((2, None, 3, None) if span else (None, None, None, None)),
                # links, otlp (schema 6), resource_id (schema 7); cut to an older tree's width
                None, None, None,
            )[: len(COLUMNS)]
        )  # fmt: skip
    return rows


class Body:
    """One encoded request body, re-sent with a fresh id in place so each is stored anew."""

    def __init__(self, data: bytes, marker: bytes) -> None:
        self.data = data
        self.at = data.index(marker)

    def fresh(self) -> bytes:
        return self.data[: self.at] + uuid.uuid4().bytes + self.data[self.at + 16 :]


def native_body(rows: list[tuple[Any, ...]]) -> Body:
    batch = Batch(rows)
    # The batch id (16 raw bytes) is swapped per request: a new batch for the ledger.
    return Body(encode_batch(batch, "msgpack"), batch.id.bytes)


def otlp_body(rows: list[tuple[Any, ...]]) -> Body:
    spans = [r for r in rows if r[1] == 3]
    data = bytes(traces_request(spans).SerializeToString())
    # The collector names an OTLP batch by a hash of the body: a new trace id in place (same
    # length, so the protobuf stays valid) makes a new batch.
    return Body(data, bytes.fromhex(spans[0][3]))


async def load(
    url: str, key: str, body: Body, content_type: str, clients: int, duration: float
) -> dict[str, Any]:
    """``clients`` concurrent posters for ``duration`` seconds; latencies of the 200s."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        stop_at = t0 + duration

        async def client() -> None:
            while time.perf_counter() < stop_at:
                data = body.fresh()
                started = time.perf_counter()
                async with session.post(url, data=data, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                elif status == 503:
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return {"elapsed_s": elapsed, "latencies": latencies, "statuses": statuses}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def count(dsn: str, schema: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.records"))
    finally:
        await conn.close()


async def reset(dsn: str, *schemas: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def phase(
    dsn: str, url: str, key: str, body: Body, kind: str, content_type: str, args: Any
) -> dict[str, Any]:
    """One load phase; ``kind`` is ``native`` or ``otlp``."""
    before = await count(dsn, SCHEMA)
    duration = (QUICK_DURATION if args.quick else DURATION)[kind]
    path = "/v1/ingest" if kind == "native" else "/v1/traces"
    per = BATCH
    result = await load(url + path, key, body, content_type, args.clients, duration)
    stored = await count(dsn, SCHEMA) - before
    lat = result.pop("latencies")
    result.update(
        records=stored,
        rate=stored / result["elapsed_s"],
        requests_ok=len(lat),
        p50_ms=percentile(lat, 0.50) * 1000,
        p99_ms=percentile(lat, 0.99) * 1000,
        mean_ms=statistics.fmean(lat) * 1000 if lat else float("nan"),
        # Every 200 stored its records once (a duplicate would store nothing).
        complete=stored == len(lat) * per,
    )
    return result


async def raw_copy(
    dsn: str, rows: list[tuple[Any, ...]], total: int, clients: int
) -> dict[str, Any]:
    """The same rows by ``copy_records_to_table`` on ``clients`` connections, BATCH per COPY,
    each in its own transaction: the floor of what the collector adds to."""
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_schema(conn, RAW_SCHEMA)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=clients, max_size=clients, init=connection_init)
    records = [(*r, PROJECT) for r in rows]
    columns = (*COLUMNS, "project")
    batches = total // BATCH
    latencies: list[float] = []
    try:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(batches):
            queue.put_nowait(i)

        async def worker() -> None:
            async with pool.acquire() as c:
                while not queue.empty():
                    queue.get_nowait()
                    started = time.perf_counter()
                    async with c.transaction():
                        await c.copy_records_to_table(
                            "records", schema_name=RAW_SCHEMA, columns=columns, records=records
                        )
                    latencies.append(time.perf_counter() - started)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    finally:
        await pool.close()
    stored = await count(dsn, RAW_SCHEMA)
    return {
        "records": stored,
        "elapsed_s": elapsed,
        "rate": stored / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def start_server(
    dsn: str, clients: int, extra: list[str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "atrace.cli", "serve", "--dsn", dsn, "--schema", SCHEMA,
         "--port", "0", "--pool-size", str(clients + 2), *(extra or [])],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"atrace serve did not start: {line!r}")
    return proc, line.split()[4]


async def server_info(dsn: str) -> tuple[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        key = await create_key(conn, SCHEMA, PROJECT, "bench")
        return key, str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def scrape(url: str) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    wanted = ("atrace_collector_errors_total", "atrace_collector_batches_duplicate_total")
    return [line for line in text.splitlines() if line.startswith(wanted)]


def run(dsn: str, args: Any) -> dict[str, Any]:
    asyncio.run(reset(dsn, SCHEMA, RAW_SCHEMA))
    rows = make_rows(BATCH)
    proc, url = start_server(dsn, args.clients)
    try:
        key, version = asyncio.run(server_info(dsn))
        native = asyncio.run(
            phase(dsn, url, key, native_body(rows), "native", "application/msgpack", args)
        )
        spans_rows = make_rows(2 * BATCH)
        otlp = asyncio.run(
            phase(dsn, url, key, otlp_body(spans_rows), "otlp", "application/x-protobuf", args)
        )  # fmt: skip
        otlp_spans_per_request = sum(1 for r in spans_rows if r[1] == 3)
        otlp["complete"] = otlp["records"] == otlp["requests_ok"] * otlp_spans_per_request
        errors = asyncio.run(scrape(url))
    finally:
        proc.terminate()
        code = proc.wait(60)
    total = QUICK_RAW_RECORDS if args.quick else RAW_RECORDS
    raw = asyncio.run(raw_copy(dsn, rows, total, args.clients))
    return {
        "server_version": version,
        "clients": args.clients,
        "batch": BATCH,
        "native": native,
        "otlp": otlp,
        "raw": raw,
        "server_errors": errors,
        "server_exit": code,
    }


def run_abuse(dsn: str, args: Any) -> list[dict[str, Any]]:
    """``--abuse``: two projects on one collector; see bench/_abuse.py."""
    from _abuse import GOOD_BATCH, abuse

    asyncio.run(reset(dsn, SCHEMA))
    proc, url = start_server(dsn, args.clients, args.serve_args.split())
    try:

        async def keys() -> tuple[str, str]:
            conn = await asyncpg.connect(dsn)
            try:
                await ensure_schema(conn, SCHEMA)
                good = await create_key(conn, SCHEMA, "good", "bench")
                evil = await create_key(conn, SCHEMA, "evil", "bench")
                return good, evil
            finally:
                await conn.close()

        good, evil = asyncio.run(keys())
        body, evil_body = native_body(make_rows(GOOD_BATCH)), native_body(make_rows(BATCH))
        return asyncio.run(abuse(dsn, SCHEMA, url, good, evil, body, evil_body, args.seconds))
    finally:
        proc.terminate()
        proc.wait(60)


def run_healthz(dsn: str, args: Any) -> dict[str, Any]:
    """``--abuse``'s last part: `/healthz` with thousands of live tails (their own collector,
    with the tail and connection bounds raised to hold them)."""
    from _abuse import HEALTH_BATCH, TAIL_SERVE_ARGS, healthz_under_tails

    proc, url = start_server(dsn, args.clients, [*TAIL_SERVE_ARGS, *args.serve_args.split()])
    try:

        async def key() -> str:
            conn = await asyncpg.connect(dsn)
            try:
                return await create_key(conn, SCHEMA, "tails", "bench")
            finally:
                await conn.close()

        body = native_body(make_rows(HEALTH_BATCH))
        return asyncio.run(healthz_under_tails(url, asyncio.run(key()), body, args.seconds))
    finally:
        proc.terminate()
        proc.wait(60)


def report(results: dict[str, Any]) -> None:
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"PostgreSQL {results['server_version']} ({results['server']}); `atrace serve` in its own "
        f"process, {results['clients']} concurrent aiohttp clients on loopback, "
        f"{results['batch']} records per request\n"
    )
    head = f"{'case':<36}{'records/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}  target"
    print(head)
    print("-" * len(head))
    raw, native, otlp = results["raw"], results["native"], results["otlp"]
    print(
        f"{'raw asyncpg COPY (same rows)':<36}{raw['rate']:>11,.0f}{raw['p50_ms']:>9.1f}"
        f"{raw['p99_ms']:>9.1f}{raw['records'] // BATCH:>10}"
    )
    print(
        f"{'collector, native msgpack':<36}{native['rate']:>11,.0f}{native['p50_ms']:>9.1f}"
        f"{native['p99_ms']:>9.1f}{native['requests_ok']:>10}  >= {TARGET_NATIVE:,}/s, "
        f"p99 < {TARGET_NATIVE_P99_MS:.0f} ms"
    )
    print(
        f"{'collector, OTLP protobuf spans':<36}{otlp['rate']:>11,.0f}{otlp['p50_ms']:>9.1f}"
        f"{otlp['p99_ms']:>9.1f}{otlp['requests_ok']:>10}  >= {TARGET_OTLP:,}/s"
    )
    print()
    print(f"native vs raw COPY: {native['rate'] / raw['rate']:.0%}")
    for name, fig in (("native", native), ("otlp", otlp)):
        print(
            f"{name}: statuses {fig['statuses']}, every 200 stored once: {fig['complete']}, "
            f"{fig['records']:,} records in {fig['elapsed_s']:.1f} s"
        )
    print(f"server counters: {results['server_errors'] or 'no errors'}")
    print(f"`atrace serve` exit code after SIGTERM: {results['server_exit']}")
    print()
    print("targets:")
    for line in target_lines(results):
        print("  " + line)


def target_lines(results: dict[str, Any]) -> list[str]:
    native, otlp = results["native"], results["otlp"]
    ok = native["rate"] >= TARGET_NATIVE
    ok_p99 = native["p99_ms"] < TARGET_NATIVE_P99_MS
    ok_otlp = otlp["rate"] >= TARGET_OTLP
    return [
        f"native: {native['rate']:,.0f} rec/s {'met' if ok else 'missed'} (>= {TARGET_NATIVE:,}); "
        f"p99 {native['p99_ms']:.1f} ms {'met' if ok_p99 else 'missed'} "
        f"(< {TARGET_NATIVE_P99_MS:.0f} ms)",
        f"OTLP: {otlp['rate']:,.0f} spans/s {'met' if ok_otlp else 'missed'} (>= {TARGET_OTLP:,})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL to use (default: a throwaway local server)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent clients")
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    parser.add_argument(
        "--abuse",
        action="store_true",
        help="a well-behaved tenant's ingest alone, then beside each attack by another tenant",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per --abuse phase")
    parser.add_argument(
        "--serve-args", default="", help="extra `atrace serve` flags for --abuse (one string)"
    )
    args = parser.parse_args()
    if args.abuse:
        with postgres(args.dsn) as (dsn, label):
            print(f"PostgreSQL: {label}; {platform.python_implementation()} "
                  f"{platform.python_version()}, {os.cpu_count()} CPUs")  # fmt: skip
            rows = run_abuse(dsn, args)
            health = run_healthz(dsn, args)
        report_abuse(rows)
        report_healthz(health, HEALTH_BATCH)
        if args.json:
            figures = {"abuse": rows, "healthz": health}
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
        return
    with postgres(args.dsn) as (dsn, label):
        results = run(dsn, args)
        results["server"] = label
    report(results)
    if args.json:
        results["targets"] = target_lines(results)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
