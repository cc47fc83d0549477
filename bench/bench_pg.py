"""Sustained records/s from atrace.info to committed PostgreSQL rows, against raw asyncpg COPY."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg
from _common import info_rows, postgres

import atrace
import atrace._pipeline.ring
import atrace._pipeline.state
from atrace._postgres.schema import ensure_schema
from atrace._records import COLUMNS
from atrace.sinks.postgres import connection_init

RECORDS = 500_000
QUICK_RECORDS = 50_000
REPEATS = 3
BATCH_SIZES = (5_000, 10_000)
CAPACITY = 200_000
FLUSH_INTERVAL = 0.2
# Emits between two yields to the loop, so the flusher runs on it as in a real service.
BURST = 1_000
# Above this fill the emitter waits for the flusher instead of letting the ring drop records.
PACE_AT = CAPACITY * 3 // 4
COPY_CHUNK = 10_000
ATRACE_SCHEMA = "bench_atrace"
RAW_SCHEMA = "bench_raw"
TARGET_RATE = 250_000
TARGET_SHARE = 0.80


async def reset_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def count_rows(dsn: str, schema: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.records"))
    finally:
        await conn.close()


# ---- atrace, emit to committed rows -----------------------------------------------------------


async def atrace_once(dsn: str, n: int, batch_size: int, pace: bool = True) -> dict[str, Any]:
    """Emit ``n`` logs and wait for them to be written; the rate counts from first emit to flush.

    With ``pace``, the emitter waits while the ring is over PACE_AT records, so the rate measured
    is the one the flusher sustains without dropping; without it, records past capacity drop.
    """
    await reset_schema(dsn, ATRACE_SCHEMA)
    atrace.configure(
        service="bench",
        sink=dsn,
        schema=ATRACE_SCHEMA,
        batch_size=batch_size,
        capacity=CAPACITY,
        flush_interval=FLUSH_INTERVAL,
    )
    # One record first, so connecting and creating the schema stay outside the timed part.
    atrace.info("warm-up")
    if not await atrace.aflush(timeout=60):
        raise RuntimeError("atrace did not write the warm-up record within 60 s")
    ring = atrace._pipeline.state.get_pipeline().ring
    info = atrace.info
    sleep = asyncio.sleep
    paced = 0
    t0 = time.perf_counter()
    for _ in range(n // BURST):
        for _ in range(BURST):
            info("msg", a=1, b="x")
        await sleep(0)
        while pace and len(ring) > PACE_AT:
            paced += 1
            await sleep(0.001)
    for _ in range(n % BURST):
        info("msg", a=1, b="x")
    flushed = await atrace.aflush(timeout=300)
    elapsed = time.perf_counter() - t0
    metrics = atrace.metrics()
    await atrace.ashutdown()
    rows = await count_rows(dsn, ATRACE_SCHEMA) - 1
    return {
        "records": n,
        "batch_size": batch_size,
        "elapsed_s": elapsed,
        # Rows committed, not calls made: a dropped record does not count.
        "rate": rows / elapsed,
        "flushed": flushed,
        "rows": rows,
        "paced": pace,
        "paced_waits": paced,
        "metrics": metrics.as_dict(),
    }


# ---- raw asyncpg COPY of the same rows --------------------------------------------------------


async def raw_once(dsn: str, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """``copy_records_to_table`` in chunks on one connection into a fresh, identical table."""
    await reset_schema(dsn, RAW_SCHEMA)
    conn = await asyncpg.connect(dsn)
    try:
        await connection_init(conn)
        await ensure_schema(conn, RAW_SCHEMA)
        chunks = [rows[i : i + COPY_CHUNK] for i in range(0, len(rows), COPY_CHUNK)]
        t0 = time.perf_counter()
        for chunk in chunks:
            await conn.copy_records_to_table(
                "records", schema_name=RAW_SCHEMA, columns=COLUMNS, records=chunk
            )
        elapsed = time.perf_counter() - t0
        rows_in = int(await conn.fetchval(f"SELECT count(*) FROM {RAW_SCHEMA}.records"))
    finally:
        await conn.close()
    return {
        "records": len(rows),
        "elapsed_s": elapsed,
        "rate": len(rows) / elapsed,
        "rows": rows_in,
    }


# ---- report -----------------------------------------------------------------------------------


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["rate"] for r in runs]
    return {"median": statistics.median(rates), "best": max(rates), "runs": runs}


def report(results: dict[str, Any]) -> None:
    raw = results["raw"]
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"ring={results['ring_implementation']}; {results['records']:,} records per run "
        f"(atrace.info with 2 attrs), {results['repeats']} runs each; PostgreSQL "
        f"{results['server_version']} ({results['server']}); emitter "
        + (f"waits while the ring holds over {PACE_AT:,}" if results["paced"] else "unpaced")
        + "\n"
    )
    head = f"{'case':<40}{'median rec/s':>14}{'best rec/s':>13}{'vs raw':>9}  target"
    print(head)
    print("-" * len(head))
    print(f"{'raw asyncpg COPY, 10k-row chunks':<40}{raw['median']:>14,.0f}{raw['best']:>13,.0f}")
    for bs, fig in results["atrace"].items():
        share = fig["median"] / raw["median"]
        print(
            f"{'atrace end to end, batch_size=' + bs:<40}{fig['median']:>14,.0f}"
            f"{fig['best']:>13,.0f}{share:>8.0%}  >= {TARGET_RATE:,}/s, >= {TARGET_SHARE:.0%}"
        )
    print()
    print("atrace runs (each: rows found, dropped, emitter waits for room, flush latency):")
    for bs, fig in results["atrace"].items():
        for run in fig["runs"]:
            m = run["metrics"]
            print(
                f"  batch_size={bs}: {run['rate']:>9,.0f} rec/s in {run['elapsed_s']:.2f} s; "
                f"rows {run['rows']:,}/{run['records']:,}, dropped {m['dropped']}, "
                f"high water {m['high_water']:,}, paced {run['paced_waits']}, "
                f"batches {m['batches']}, flush latency mean {m['flush_latency_mean_ms']:.1f} ms "
                f"p99 {m['flush_latency_p99_ms']:.1f} ms, sink errors {m['sink_errors']}"
            )
    print()
    print("targets (medians):")
    for line in target_lines(results):
        print("  " + line)


def target_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    raw = results["raw"]["median"]
    for bs, fig in results["atrace"].items():
        rate, share = fig["median"], fig["median"] / raw
        complete = all(
            r["rows"] == r["records"] and r["metrics"]["dropped"] == 0 for r in fig["runs"]
        )
        lines.append(
            f"batch_size={bs}: {rate:,.0f} rec/s "
            f"{'met' if rate >= TARGET_RATE else 'missed'} (>= {TARGET_RATE:,}); "
            f"{share:.0%} of raw COPY {'met' if share >= TARGET_SHARE else 'missed'} "
            f"(>= {TARGET_SHARE:.0%}); every row written, none dropped: {complete}"
        )
    return lines


async def server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def run(dsn: str, n: int, repeats: int, batch_sizes: list[int], pace: bool) -> dict[str, Any]:
    rows = info_rows(n)
    raw_runs: list[dict[str, Any]] = []
    atrace_runs: dict[int, list[dict[str, Any]]] = {bs: [] for bs in batch_sizes}
    # Interleaved, so load from elsewhere on the machine hits every case alike.
    for _ in range(repeats):
        raw_runs.append(asyncio.run(raw_once(dsn, rows)))
        for bs in batch_sizes:
            atrace_runs[bs].append(asyncio.run(atrace_once(dsn, n, bs, pace)))
    return {
        "records": n,
        "repeats": repeats,
        "paced": pace,
        "ring_implementation": atrace._pipeline.ring.IMPLEMENTATION,
        "server_version": asyncio.run(server_version(dsn)),
        "raw": summary(raw_runs),
        "atrace": {str(bs): summary(runs) for bs, runs in atrace_runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL to use (default: a throwaway local server)")
    parser.add_argument("--records", type=int, default=None, help=f"per run ({RECORDS:,})")
    parser.add_argument("--repeats", type=int, default=None, help=f"runs per case ({REPEATS})")
    parser.add_argument(
        "--batch-sizes",
        default=",".join(map(str, BATCH_SIZES)),
        help="atrace batch_size values, comma-separated",
    )
    parser.add_argument(
        "--no-pace",
        action="store_true",
        help="emit without waiting for room (records past the ring's capacity are dropped)",
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (small N)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    args = parser.parse_args()
    n = args.records or (QUICK_RECORDS if args.quick else RECORDS)
    repeats = args.repeats or (1 if args.quick else REPEATS)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]

    with postgres(args.dsn) as (dsn, label):
        results = run(dsn, n, repeats, batch_sizes, not args.no_pace)
        results["server"] = label
    report(results)
    if args.json:
        results["targets"] = target_lines(results)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
