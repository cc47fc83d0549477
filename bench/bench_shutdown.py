"""A short outage, then a normal exit: does the shutdown deliver what was spilled?

At about 10k logs/s: 1 s healthy, 3 s with the PostgreSQL connection cut (a TCP proxy in front of
a throwaway server), then the connection comes back and the program calls ``await
atrace.ashutdown(timeout=60)`` at once, with the breaker still open. Reports, per run: records
emitted, rows stored, what stayed spilled, the breaker state when the shutdown began, and how
long the shutdown took. Run from the repository root: ``python bench/bench_shutdown.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import asyncpg

import atrace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from _common import postgres  # noqa: E402

from _proxy import TCPProxy  # noqa: E402

RATE = 10_000  # records per second
BURST = 100  # records per pacing step


async def paced(seconds: float) -> int:
    """Emit about RATE records a second for ``seconds``; returns how many."""
    sent = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * RATE) + BURST
        while sent < due:
            atrace.info("paced", n=sent)
            sent += 1
        await asyncio.sleep(BURST / RATE)
    return sent


async def once(dsn: str, schema: str, spill: Path) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()
    parts = urllib.parse.urlsplit(dsn)
    proxy = TCPProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    try:
        atrace.reset()
        atrace.configure(service="bench", sink=proxy.url_for(dsn), schema=schema,
                         spill_dir=str(spill))  # fmt: skip
        emitted = await paced(1.0)
        proxy.cut()
        emitted += await paced(3.0)
        proxy.restore()
        before = atrace.metrics()
        t0 = time.perf_counter()
        ok = await atrace.ashutdown(timeout=60)
        took = time.perf_counter() - t0
        after = atrace.metrics()
    finally:
        await proxy.stop()
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetchval(f"SELECT count(*) FROM {schema}.records WHERE kind = 0")
    finally:
        await conn.close()
    return {
        "emitted": emitted,
        "rows": int(rows),
        "breaker_at_shutdown": before.breaker_state,
        "spilled_pending_at_shutdown": before.spilled_pending,
        "spilled_pending_after": after.spilled_pending,
        "dropped": after.dropped,
        "shutdown_returned": ok,
        "shutdown_s": took,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL to use (default: a throwaway local server)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
    results = []
    with postgres(args.dsn) as (dsn, label), tempfile.TemporaryDirectory() as tmp:
        print(f"PostgreSQL: {label}")
        for i in range(args.runs):
            r = asyncio.run(once(dsn, f"bench_shutdown_{i}", Path(tmp) / f"spill{i}"))
            results.append(r)
            print(
                f"run {i + 1}: emitted {r['emitted']:,}, stored {r['rows']:,}; at shutdown: "
                f"breaker {r['breaker_at_shutdown']}, {r['spilled_pending_at_shutdown']:,} "
                f"spilled; after: {r['spilled_pending_after']:,} spilled, {r['dropped']:,} "
                f"dropped; ashutdown() -> {r['shutdown_returned']} in {r['shutdown_s']:.2f} s"
            )
    every = all(r["rows"] == r["emitted"] for r in results)
    median = statistics.median(r["shutdown_s"] for r in results)
    print(f"every record stored exactly once in every run: {every}; median shutdown {median:.2f} s")


if __name__ == "__main__":
    main()
