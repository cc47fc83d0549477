"""Reliability under load: event-loop lag at 50k records/s, RSS through an outage, spill speed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

import atrace
import atrace._pipeline.ring
import atrace._pipeline.state
from atrace._delivery.spill import Spill
from atrace._records import Row

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from _common import DiscardSink, info_rows, postgres  # noqa: E402

from _proxy import TCPProxy  # noqa: E402

perf = time.perf_counter

# ---- 1. event-loop lag ------------------------------------------------------------------------
LAG_RATE = 50_000
LAG_BURST = 500  # one burst every 10 ms
LAG_SECONDS = 10.0
LAG_SECONDS_QUICK = 3.0
LAG_REPEATS = 3
PROBE_SLEEP = 0.001
LAG_SCHEMA = "bench_lag"
TARGET_LAG_P99_MS = 2.0
SPIKE_MS = 2.0

# ---- 2. RSS through an outage -----------------------------------------------------------------
OUTAGE_RATE = 10_000
OUTAGE_BURST = 100  # one burst every 10 ms
HEALTHY_SECONDS = 5.0
OUTAGE_SECONDS = 60.0
OUTAGE_SECONDS_QUICK = 20.0
OUTAGE_CAPACITY = 100_000
OUTAGE_SCHEMA = "bench_outage"
DRAIN_TIMEOUT = 600.0
TARGET_BYTES_PER_RECORD = 300

# ---- 3. spill throughput ----------------------------------------------------------------------
SPILL_BATCHES = 200
SPILL_ROWS = 1_000
SPILL_REPEATS = 3
TARGET_REPLAY_RATE = 100_000
E2E_RECORDS = 100_000
E2E_RECORDS_QUICK = 20_000
E2E_REPEATS = 3
E2E_SCHEMA = "bench_replay"
# While spilling through atrace, the emitter waits above this fill, so the ring never drops.
E2E_PACE_AT = 50_000


# ---- helpers ----------------------------------------------------------------------------------


def source_state() -> str:
    """The commit measured, and whether src/ differed from it (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    changed = [f for f in dirty if f.startswith("src/")]
    return head + (
        f" + uncommitted changes in {', '.join(changed)}" if changed else " (clean src/)"
    )


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (no psutil needed)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def rss() -> int:
    return proc_status()["VmRSS"]


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5), so the outage's true peak is read."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` from 0 to 1."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def mb(n: float) -> float:
    return n / 1e6


async def reset_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def table_counts(dsn: str, schema: str) -> dict[str, int]:
    """Rows in ``records``, and the ledger's batches and the records they claim."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = int(await conn.fetchval(f"SELECT count(*) FROM {schema}.records"))
        batches, claimed = await conn.fetchrow(
            f"SELECT count(*), coalesce(sum(records), 0) FROM {schema}.batches"
        )
        return {"rows": rows, "batches": int(batches), "ledger_records": int(claimed)}
    finally:
        await conn.close()


async def server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


class Watch:
    """Task errors nobody awaited and atrace's warnings, both kept for the report."""

    def __init__(self) -> None:
        self.loop_errors: list[str] = []
        self.warnings: list[str] = []

    def install(self) -> None:
        def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            self.loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")

        asyncio.get_running_loop().set_exception_handler(on_error)

    def handler(self) -> logging.Handler:
        watch = self

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                watch.warnings.append(record.getMessage())

        return Keep(logging.WARNING)


WATCH = Watch()


def noop(*args: Any, **kwargs: Any) -> None:
    return None


async def paced(
    emit: Callable[..., Any], rate: int, burst: int, seconds: float
) -> tuple[int, float]:
    """Call ``emit`` ``burst`` times per ``burst / rate`` seconds, sleeping out the remainder."""
    period = burst / rate
    t0 = perf()
    end = t0 + seconds
    due = t0
    n = 0
    sleep = asyncio.sleep
    while perf() < end:
        for _ in range(burst):
            emit("msg", a=1, b="x")
        n += burst
        due += period
        # Late bursts catch up on the schedule, so the rate holds; the loop still turns.
        await sleep(max(0.0, due - perf()))
    return n, perf() - t0


async def warm_up() -> None:
    # One record first, so connecting and creating the schema stay outside what is measured.
    atrace.info("warm-up")
    if not await atrace.aflush(timeout=60):
        raise RuntimeError("atrace did not write the warm-up record within 60 s")


def short_metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "sinks"}


# ---- 1. event-loop lag while emitting 50k records/s -------------------------------------------


async def probe(lags: list[float], cpu: list[float], stop: list[bool]) -> None:
    # The thread's CPU time over the same sleep tells a loop held by code on it (CPU ~ wall)
    # from a process that was not running at all (another process had the core).
    sleep = asyncio.sleep
    cpu_time = time.thread_time
    while not stop[0]:
        t, c = perf(), cpu_time()
        await sleep(PROBE_SLEEP)
        lags.append(perf() - t - PROBE_SLEEP)
        cpu.append(cpu_time() - c)


async def lag_once(dsn: str, case: str, seconds: float) -> dict[str, Any]:
    """One run: ``baseline`` (a no-op emitter), ``emit`` (atrace.info into a ring that is not
    drained during the run: the emit cost alone) or ``atrace`` (emit and flush to PostgreSQL)."""
    WATCH.install()
    emit: Callable[..., Any] = noop
    use_atrace = case == "atrace"
    if case == "emit":
        n_max = int(LAG_RATE * seconds * 1.2) + LAG_BURST
        atrace.configure(
            service="bench",
            sink=DiscardSink(),
            capacity=n_max,
            batch_size=n_max,
            flush_interval=3600,
        )
        atrace.info("warm")
        emit = atrace.info
    if use_atrace:
        await reset_schema(dsn, LAG_SCHEMA)
        atrace.configure(service="bench", sink=dsn, schema=LAG_SCHEMA)
        await warm_up()
        emit = atrace.info
    lags: list[float] = []
    cpu: list[float] = []
    stop = [False]
    task = asyncio.create_task(probe(lags, cpu, stop))
    n, elapsed = await paced(emit, LAG_RATE, LAG_BURST, seconds)
    stop[0] = True
    await task
    ms = [x * 1e3 for x in lags]
    spikes = [
        (lag + PROBE_SLEEP, c) for lag, c in zip(lags, cpu, strict=True) if lag * 1e3 > SPIKE_MS
    ]
    out: dict[str, Any] = {
        "case": case,
        "emitted": n,
        "elapsed_s": elapsed,
        "rate": n / elapsed,
        "probes": len(ms),
        "p50_ms": pct(ms, 0.50),
        "p99_ms": pct(ms, 0.99),
        "max_ms": max(ms),
        # This thread's CPU time per probe: the part of the lag that was code holding the loop.
        "cpu_p99_ms": pct([c * 1e3 for c in cpu], 0.99),
        # Probes late by over SPIKE_MS, and how much of their wall time this thread was on CPU.
        "spikes": len(spikes),
        "spike_on_cpu": sum(c for _, c in spikes) / sum(w for w, _ in spikes) if spikes else 0.0,
    }
    if use_atrace:
        t = perf()
        out["flushed"] = await atrace.aflush(timeout=60)
        out["aflush_s"] = perf() - t
        out["metrics"] = short_metrics(atrace.metrics().as_dict())
        await atrace.ashutdown()
        counts = await table_counts(dsn, LAG_SCHEMA)
        out["rows"] = counts["rows"] - 1  # the warm-up record
    if case == "emit":
        atrace.reset()
    return out


def lag_bench(dsn: str, seconds: float, repeats: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "emit": [], "atrace": []}
    # Interleaved, so load from elsewhere on the machine hits every case alike.
    for _ in range(repeats):
        for case in ("baseline", "emit", "atrace"):
            run = asyncio.run(lag_once(dsn, case, seconds))
            runs[case].append(run)
    med = {
        case: {
            k: statistics.median(r[k] for r in rs)
            for k in ("p50_ms", "p99_ms", "max_ms", "rate", "cpu_p99_ms")
        }
        for case, rs in runs.items()
    }
    diffs = [
        a["p99_ms"] - b["p99_ms"] for a, b in zip(runs["atrace"], runs["baseline"], strict=True)
    ]
    flush_diffs = [
        a["p99_ms"] - b["p99_ms"] for a, b in zip(runs["atrace"], runs["emit"], strict=True)
    ]
    return {
        "p99_flush_added_ms": med["atrace"]["p99_ms"] - med["emit"]["p99_ms"],
        "p99_flush_added_per_pair_ms": flush_diffs,
        "seconds": seconds,
        "repeats": repeats,
        "runs": runs,
        "median": med,
        "p99_added_ms": med["atrace"]["p99_ms"] - med["baseline"]["p99_ms"],
        "p99_added_per_pair_ms": diffs,
    }


def report_lag(res: dict[str, Any]) -> list[str]:
    print(
        f"1. Event-loop lag: probe sleeps {PROBE_SLEEP * 1e3:.0f} ms in a loop while an emitter "
        f"sends {LAG_RATE:,} records/s ({LAG_BURST} every {LAG_BURST / LAG_RATE * 1e3:.0f} ms) "
        f"for {res['seconds']:.0f} s; {res['repeats']} runs per case, interleaved"
    )
    print(
        f"  (>2ms: probes late by over {SPIKE_MS:g} ms; on CPU: share of those probes' wall time "
        "this thread ran, the rest it waited for a core; CPU p99: p99 of this thread's CPU time "
        "per probe in ms, i.e. how long code held the loop)"
    )
    head = (
        f"{'case':<22}{'run':>4}{'emits/s':>10}{'probes':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'>2ms':>6}{'on CPU':>8}{'CPU p99':>9}"
    )
    print(head)
    print("-" * len(head))
    labels = (
        ("baseline", "no-op emitter"),
        ("emit", "atrace.info, no flush"),
        ("atrace", "atrace.info → PG"),
    )
    for case, label in labels:
        for i, r in enumerate(res["runs"][case], 1):
            print(
                f"{label:<22}{i:>4}{r['rate']:>10,.0f}{r['probes']:>8}"
                f"{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['max_ms']:>9.2f}"
                f"{r['spikes']:>6}{r['spike_on_cpu']:>8.0%}{r['cpu_p99_ms']:>9.3f}"
            )
    for case, label in (
        ("baseline", "no-op, median"),
        ("emit", "no flush, median"),
        ("atrace", "atrace, median"),
    ):
        m = res["median"][case]
        print(
            f"{label:<22}{'':>4}{m['rate']:>10,.0f}{'':>8}"
            f"{m['p50_ms']:>9.3f}{m['p99_ms']:>9.3f}{m['max_ms']:>9.2f}"
            f"{'':>14}{m['cpu_p99_ms']:>9.3f}"
        )
    print()
    for i, r in enumerate(res["runs"]["atrace"], 1):
        m = r["metrics"]
        print(
            f"  atrace run {i}: written {m['written']:,} (rows in db {r['rows']:,} of "
            f"{r['emitted']:,} emitted), dropped {m['dropped']}, sink errors {m['sink_errors']}, "
            f"batches {m['batches']}, flush latency mean {m['flush_latency_mean_ms']:.1f} ms "
            f"p99 {m['flush_latency_p99_ms']:.1f} ms, final aflush {r['aflush_s'] * 1e3:.0f} ms"
        )
    added = res["p99_added_ms"]
    print(
        f"  emit and flush together add {added:.3f} ms at p99 over the no-op emitter (medians; "
        "per pair " + ", ".join(f"{d:.3f}" for d in res["p99_added_per_pair_ms"]) + ")"
    )
    flush = res["p99_flush_added_ms"]
    ok = flush <= TARGET_LAG_P99_MS
    line = (
        f"lag: flushing adds {flush:.3f} ms at p99 over emitting alone (medians; per pair "
        + ", ".join(f"{d:.3f}" for d in res["p99_flush_added_per_pair_ms"])
        + f") — target <= {TARGET_LAG_P99_MS} ms {'met' if ok else 'missed'}"
    )
    print("  " + line + "\n")
    return [line]


# ---- 2. RSS during an outage at 10k records/s -------------------------------------------------


def _proxy_for(dsn: str) -> TCPProxy:
    parts = urllib.parse.urlsplit(dsn)
    return TCPProxy(parts.hostname or "127.0.0.1", parts.port or 5432)


async def outage_once(dsn: str, healthy_s: float, outage_s: float, base: Path) -> dict[str, Any]:
    WATCH.install()
    await reset_schema(dsn, OUTAGE_SCHEMA)
    proxy = _proxy_for(dsn)
    await proxy.start()
    try:
        atrace.configure(
            service="bench",
            sink=proxy.url_for(dsn),
            schema=OUTAGE_SCHEMA,
            capacity=OUTAGE_CAPACITY,
            spill_dir=str(base / "spill"),
        )
        await warm_up()
        gc.collect()
        rss_start = rss()
        phase = ["healthy"]
        t0 = perf()
        samples: list[dict[str, Any]] = []
        stop = [False]

        async def sampler() -> None:
            while not stop[0]:
                m = atrace.metrics()
                samples.append(
                    {
                        "t": round(perf() - t0, 2),
                        "phase": phase[0],
                        "rss": rss(),
                        "queue": m.queue_size,
                        "high_water": m.high_water,
                        "in_flight": m.in_flight,
                        "spilled": m.spilled,
                        "spilled_pending": m.spilled_pending,
                        "written": m.written,
                        "dropped": m.dropped,
                        "breaker": m.breaker_state,
                    }
                )
                await asyncio.sleep(1.0)

        sampling = asyncio.create_task(sampler())
        n1, _ = await paced(atrace.info, OUTAGE_RATE, OUTAGE_BURST, healthy_s)
        rss_before = rss()
        healthy_rss = [s["rss"] for s in samples]
        hwm_reset = reset_peak_rss()
        phase[0] = "outage"
        proxy.cut()
        t_cut = perf()
        n2, outage_elapsed = await paced(atrace.info, OUTAGE_RATE, OUTAGE_BURST, outage_s)
        status = proc_status()
        at_cut_end = atrace.metrics()
        phase[0] = "replay"
        proxy.restore()
        t_restore = perf()
        emitted = n1 + n2
        # The emitter stops at the restore: what follows is the backlog being written.
        drained_at = None
        first_replay = None
        while perf() - t_restore < DRAIN_TIMEOUT:
            m = atrace.metrics()
            if first_replay is None and m.replayed > 0:
                first_replay = perf() - t_restore
            if m.spilled_pending == 0 and m.queue_size == 0 and m.in_flight == 0:
                drained_at = perf() - t_restore
                break
            await asyncio.sleep(0.01)
        flushed = await atrace.aflush(timeout=60)
        stop[0] = True
        await sampling
        metrics = atrace.metrics().as_dict()
        await atrace.ashutdown()
        counts = await table_counts(dsn, OUTAGE_SCHEMA)
    finally:
        await proxy.stop()
    outage_rss = [s["rss"] for s in samples if s["phase"] == "outage"]
    peak_sampled = max([*outage_rss, status["VmRSS"]])
    peak_hwm = status["VmHWM"] if hwm_reset else None
    peak = max(peak_sampled, peak_hwm or 0)
    rows = counts["rows"] - 1  # the warm-up record
    return {
        "healthy_s": healthy_s,
        "outage_s": outage_s,
        "outage_elapsed_s": outage_elapsed,
        "emitted": emitted,
        "emitted_in_outage": n2,
        "rss_start": rss_start,
        "rss_healthy_median": statistics.median(healthy_rss) if healthy_rss else rss_before,
        "rss_before_cut": rss_before,
        "rss_peak_sampled": peak_sampled,
        "rss_peak_hwm": peak_hwm,
        "rss_peak": peak,
        "rss_added": peak - rss_before,
        "bytes_per_buffered_record": (peak - rss_before) / OUTAGE_CAPACITY,
        "at_end_of_outage": short_metrics(at_cut_end.as_dict()),
        "first_replay_s": first_replay,
        "drain_s": drained_at,
        "cut_to_restore_s": t_restore - t_cut,
        "flushed": flushed,
        "metrics": short_metrics(metrics),
        "rows": rows,
        "ledger": counts,
        "exactly_once": rows == emitted and counts["ledger_records"] == counts["rows"],
        "proxy_refused": proxy.refused,
        "samples": samples,
    }


def full_ring_child() -> None:
    """In a fresh process: RSS of a ring filled to capacity, then pushed past it (drop_oldest)."""

    async def fill() -> dict[str, Any]:
        # No await until the end: the flusher, a task on this loop, never gets to drain.
        atrace.configure(service="bench", sink=DiscardSink(), capacity=OUTAGE_CAPACITY)
        info = atrace.info
        info("warm-up")
        atrace._pipeline.state.get_pipeline().ring.drain(10)
        gc.collect()
        before = rss()
        for _ in range(OUTAGE_CAPACITY):
            info("msg", a=1, b="x")
        full = rss()
        for _ in range(OUTAGE_CAPACITY):
            info("msg", a=1, b="x")
        twice = rss()
        m = atrace.metrics()
        return {
            "before": before,
            "full": full,
            "after_twice_capacity": twice,
            "queue_size": m.queue_size,
            "dropped_ring": m.dropped_ring,
            "bytes_per_record": (full - before) / OUTAGE_CAPACITY,
        }

    print(json.dumps(asyncio.run(fill())))
    os._exit(0)  # the records are discarded, not written at exit


def full_ring() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--full-ring-child"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def report_outage(r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    e = r["at_end_of_outage"]
    print(
        f"2. RSS through an outage: {OUTAGE_RATE:,} records/s, {r['healthy_s']:.0f} s healthy, "
        f"then the proxy cut for {r['outage_s']:.0f} s; capacity {OUTAGE_CAPACITY:,}, other "
        f"settings default; RSS (VmRSS) sampled every second, VmHWM reset at the cut"
    )
    added = r["rss_added"]
    per = r["bytes_per_buffered_record"]
    limit = TARGET_BYTES_PER_RECORD * OUTAGE_CAPACITY
    hwm = r["rss_peak_hwm"]
    rows = [
        ("RSS after warm-up, before emitting", f"{mb(r['rss_start']):.1f} MB", ""),
        ("RSS just before the cut (baseline)", f"{mb(r['rss_before_cut']):.1f} MB", ""),
        ("RSS peak during the outage, 1 s samples", f"{mb(r['rss_peak_sampled']):.1f} MB", ""),
        ("RSS peak during the outage, VmHWM", "n/a" if hwm is None else f"{mb(hwm):.1f} MB", ""),
        ("peak - baseline", f"{mb(added):.1f} MB", f"<= {mb(limit):.0f} MB"),
        (
            f"per buffered record (÷ capacity {OUTAGE_CAPACITY:,})",
            f"{per:.0f} B",
            f"<= {TARGET_BYTES_PER_RECORD} B",
        ),
        ("ring high water", f"{m['high_water']:,}", ""),
        ("records emitted (healthy + outage)", f"{r['emitted']:,}", ""),
        ("spilled by the end of the outage", f"{e['spilled']:,}", ""),
        ("breaker at the outage's end", f"{e['breaker_state']}, {e['breaker_trips']} trips", ""),
        ("spilled, total", f"{m['spilled']:,}", ""),
        ("replayed", f"{m['replayed']:,}", ""),
        ("dropped (ring / spill / permanent)", f"{m['dropped']} ({m['dropped_ring']} / "
         f"{m['dropped_spill']} / {m['dropped_permanent']})", "0"),
        ("written (metrics)", f"{m['written']:,}", ""),
        ("rows in the database", f"{r['rows']:,}", f"= {r['emitted']:,}"),
        ("ledger: batches / records claimed", f"{r['ledger']['batches']:,} / "
         f"{r['ledger']['ledger_records']:,}", ""),
        ("restore → first replayed batch", _secs(r["first_replay_s"]), ""),
        ("restore → spill drained (spilled_pending 0)", _secs(r["drain_s"]), ""),
    ]  # fmt: skip
    if r["drain_s"]:
        rows.append(
            ("replay rate, from the restore", f"{m['spilled'] / r['drain_s']:,.0f} rec/s", "")
        )
        if r["first_replay_s"] is not None and r["drain_s"] > r["first_replay_s"]:
            rate = m["spilled"] / (r["drain_s"] - r["first_replay_s"])
            rows.append(("replay rate, from the first replayed batch", f"{rate:,.0f} rec/s", ""))
    fr = r.get("full_ring")
    if fr:
        rows += [
            (
                f"for comparison, a full ring: {OUTAGE_CAPACITY:,} records",
                f"+{mb(fr['full'] - fr['before']):.1f} MB",
                f"{fr['bytes_per_record']:.0f} B/record",
            ),
            (
                "  then as many again (drop_oldest)",
                f"+{mb(fr['after_twice_capacity'] - fr['full']):.1f} MB",
                f"dropped {fr['dropped_ring']:,}",
            ),
        ]
    for label, value, target in rows:
        print(f"  {label:<46}{value:>22}  {target}")
    ok_rss = added <= limit
    ok_drop = m["dropped"] == 0
    lines = [
        f"outage RSS: peak - baseline {mb(added):.1f} MB = {per:.0f} B per buffered record "
        f"(÷ capacity) — target <= {TARGET_BYTES_PER_RECORD} B {'met' if ok_rss else 'missed'}",
        f"outage: dropped {m['dropped']} — target 0 {'met' if ok_drop else 'missed'}; rows "
        f"{r['rows']:,} of {r['emitted']:,} emitted — exactly once "
        f"{'met' if r['exactly_once'] else 'missed'}",
    ]
    for line in lines:
        print("  " + line)
    print()
    return lines


def _secs(value: float | None) -> str:
    return "did not happen" if value is None else f"{value:.2f} s"


# ---- 3. spill throughput ----------------------------------------------------------------------


def spill_once(batches: list[list[Row]], directory: Path) -> dict[str, Any]:
    spill = Spill(directory)
    records = sum(map(len, batches))
    ids = [uuid.uuid4() for _ in batches]
    t = perf()
    for bid, rows in zip(ids, batches, strict=True):
        if not spill.append(bid, rows, reason="bench"):
            raise RuntimeError("the spill refused a batch")
    append_s = perf() - t
    stats = spill.stats()
    t = perf()
    replayed = 0
    for batch in spill.replay():
        spill.ack(batch)
        replayed += batch.records
    replay_s = perf() - t
    after = spill.stats()
    spill.close()
    return {
        "records": records,
        "append_s": append_s,
        "append_rate": records / append_s,
        "replay_s": replay_s,
        "replay_rate": replayed / replay_s,
        "replayed": replayed,
        "bytes": stats.pending_bytes,
        "segments": stats.segments,
        "pending_after": after.pending_records,
        "files_left": sorted(str(p.relative_to(directory)) for p in directory.rglob("*.seg*")),
    }


async def e2e_once(dsn: str, n: int, base: Path) -> dict[str, Any]:
    """Spill ``n`` records through atrace with the proxy cut, restore, time the replay to PG."""
    WATCH.install()
    await reset_schema(dsn, E2E_SCHEMA)
    proxy = _proxy_for(dsn)
    await proxy.start()
    try:
        atrace.configure(
            service="bench", sink=proxy.url_for(dsn), schema=E2E_SCHEMA, spill_dir=str(base)
        )
        await warm_up()
        ring = atrace._pipeline.state.get_pipeline().ring
        proxy.cut()
        info = atrace.info
        paced_waits = 0
        for i in range(n):
            info("msg", a=1, b="x")
            if i % 1_000 == 999:
                await asyncio.sleep(0)
                while len(ring) > E2E_PACE_AT:
                    paced_waits += 1
                    await asyncio.sleep(0.001)
        t = perf()
        while True:
            m = atrace.metrics()
            if m.spilled + m.dropped >= n and m.queue_size == 0 and m.in_flight == 0:
                break
            if perf() - t > 120:
                raise RuntimeError(f"records not spilled within 120 s: {m!r}")
            await asyncio.sleep(0.01)
        spilled = m.spilled
        breaker = m.breaker_state
        proxy.restore()
        t_restore = perf()
        first = None
        first_count = 0
        done = None
        while perf() - t_restore < DRAIN_TIMEOUT:
            m = atrace.metrics()
            if first is None and m.replayed > 0:
                first, first_count = perf() - t_restore, m.replayed
            if m.spilled_pending == 0:
                done = perf() - t_restore
                break
            await asyncio.sleep(0.005)
        await atrace.aflush(timeout=60)
        metrics = atrace.metrics().as_dict()
        await atrace.ashutdown()
        counts = await table_counts(dsn, E2E_SCHEMA)
    finally:
        await proxy.stop()
    rows = counts["rows"] - 1
    out: dict[str, Any] = {
        "records": n,
        "spilled": spilled,
        "paced_waits": paced_waits,
        "breaker_at_restore": breaker,
        "first_replay_s": first,
        "drain_s": done,
        "rate_from_restore": spilled / done if done else None,
        # From the first replayed batch on: the wait for the breaker and the tick left out.
        "rate_replaying": (spilled - first_count) / (done - first)
        if done and first is not None and done > first
        else None,
        "metrics": short_metrics(metrics),
        "rows": rows,
        "exactly_once": rows == n and counts["ledger_records"] == counts["rows"],
    }
    return out


def spill_bench(
    dsn: str, e2e_records: int, repeats: int, e2e_repeats: int, base: Path
) -> dict[str, Any]:
    rows = info_rows(SPILL_BATCHES * SPILL_ROWS)
    batches = [rows[i : i + SPILL_ROWS] for i in range(0, len(rows), SPILL_ROWS)]
    runs = [spill_once(batches, base / f"spill-{i}") for i in range(repeats)]
    e2e = [asyncio.run(e2e_once(dsn, e2e_records, base / f"e2e-{i}")) for i in range(e2e_repeats)]
    return {
        "spill_runs": runs,
        "append_median": statistics.median(r["append_rate"] for r in runs),
        "replay_median": statistics.median(r["replay_rate"] for r in runs),
        "e2e_runs": e2e,
        "e2e_from_restore_median": _median_or_none(r["rate_from_restore"] for r in e2e),
        "e2e_replaying_median": _median_or_none(r["rate_replaying"] for r in e2e),
    }


def _median_or_none(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def report_spill(res: dict[str, Any]) -> list[str]:
    print(
        f"3. Spill throughput: Spill(tmpdir), {SPILL_BATCHES} batches of {SPILL_ROWS:,} encoded "
        f"rows, append all, then replay + ack all; {len(res['spill_runs'])} runs"
    )
    head = f"{'run':>4}{'append rec/s':>15}{'replay+ack rec/s':>19}{'on disk':>11}{'segments':>10}"
    print(head)
    print("-" * len(head))
    for i, r in enumerate(res["spill_runs"], 1):
        print(
            f"{i:>4}{r['append_rate']:>15,.0f}{r['replay_rate']:>19,.0f}"
            f"{mb(r['bytes']):>8.1f} MB{r['segments']:>10}"
        )
    print(f"{'med':>4}{res['append_median']:>15,.0f}{res['replay_median']:>19,.0f}")
    left = [r["files_left"] for r in res["spill_runs"] if r["files_left"] or r["pending_after"]]
    if left:
        print(f"  left behind after acking everything: {left}")
    print()
    print("   end to end: records spilled through atrace with the proxy cut, then restored")
    head = (
        f"{'run':>4}{'spilled':>9}{'breaker':>10}{'→1st batch':>12}{'→drained':>10}"
        f"{'rec/s from restore':>20}{'rec/s replaying':>17}{'rows':>9}{'dropped':>9}"
    )
    print(head)
    print("-" * len(head))
    for i, r in enumerate(res["e2e_runs"], 1):
        fr = "-" if r["rate_from_restore"] is None else f"{r['rate_from_restore']:,.0f}"
        rp = "-" if r["rate_replaying"] is None else f"{r['rate_replaying']:,.0f}"
        print(
            f"{i:>4}{r['spilled']:>9,}{r['breaker_at_restore']:>10}{_secs(r['first_replay_s']):>12}{_secs(r['drain_s']):>10}"
            f"{fr:>20}{rp:>17}{r['rows']:>9,}{r['metrics']['dropped']:>9}"
        )
    replay = res["replay_median"]
    lines = [
        f"spill replay + ack {replay:,.0f} records/s (median) — target >= "
        f"{TARGET_REPLAY_RATE:,} {'met' if replay >= TARGET_REPLAY_RATE else 'missed'}"
    ]
    e2e_r, e2e_f = res["e2e_replaying_median"], res["e2e_from_restore_median"]
    if e2e_r is not None and e2e_f is not None:
        lines.append(
            f"end-to-end replay into PostgreSQL {e2e_r:,.0f} records/s once replaying "
            f"({e2e_f:,.0f} counted from the restore) — informational"
        )
    once = all(r["exactly_once"] for r in res["e2e_runs"])
    lines.append(f"end to end: every spilled record in the database exactly once: {once}")
    for line in lines:
        print("  " + line)
    print()
    return lines


# ---- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL to use (default: a throwaway local server)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    parser.add_argument(
        "--only", choices=("lag", "outage", "spill"), help="run one measurement only"
    )
    parser.add_argument("--full-ring-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.full_ring_child:
        full_ring_child()
    quick = args.quick

    log = logging.getLogger("atrace")
    log.addHandler(WATCH.handler())
    log.propagate = False

    stack = contextlib.ExitStack()
    dsn, label = stack.enter_context(postgres(args.dsn))
    results: dict[str, Any] = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "ring_implementation": atrace._pipeline.ring.IMPLEMENTATION,
        "quick": quick,
        "source": source_state(),
        "server": label,
    }
    targets: list[str] = []
    with stack:
        results["server_version"] = asyncio.run(server_version(dsn))
        print(
            f"{results['python']}, ring={results['ring_implementation']}; PostgreSQL "
            f"{results['server_version']} ({results['server']}); source {results['source']}\n"
        )
        with tempfile.TemporaryDirectory(prefix="atrace-bench-rel-") as tmp:
            base = Path(tmp)
            if args.only in (None, "lag"):
                seconds = LAG_SECONDS_QUICK if quick else LAG_SECONDS
                results["lag"] = lag_bench(dsn, seconds, 1 if quick else LAG_REPEATS)
                targets += report_lag(results["lag"])
            if args.only in (None, "outage"):
                outage_s = OUTAGE_SECONDS_QUICK if quick else OUTAGE_SECONDS
                results["outage"] = asyncio.run(
                    outage_once(dsn, HEALTHY_SECONDS, outage_s, base / "outage")
                )
                results["outage"]["full_ring"] = full_ring()
                targets += report_outage(results["outage"])
            if args.only in (None, "spill"):
                results["spill"] = spill_bench(
                    dsn,
                    E2E_RECORDS_QUICK if quick else E2E_RECORDS,
                    1 if quick else SPILL_REPEATS,
                    1 if quick else E2E_REPEATS,
                    base / "spill",
                )
                targets += report_spill(results["spill"])
    results["targets"] = targets
    results["loop_errors"] = WATCH.loop_errors
    results["atrace_warnings"] = WATCH.warnings
    print("targets:")
    for line in targets:
        print("  " + line)
    print(
        f"unobserved task errors: {len(WATCH.loop_errors)}; atrace warnings logged: "
        f"{len(WATCH.warnings)}" + (f" (first: {WATCH.warnings[0]})" if WATCH.warnings else "")
    )
    for err in WATCH.loop_errors[:5]:
        print(f"  {err}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
