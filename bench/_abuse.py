"""`bench_collector.py --abuse`: a well-behaved tenant's ingest, alone and beside each attack.

One `atrace serve` process and one PostgreSQL; two projects with a key each. The well-behaved
tenant posts native msgpack batches from two clients at a steady 10,000 records/s for a fixed
time and counts what was stored; the other tenant runs one attack at a time from the same
client process: heavy
searches, slow uploads, idle connections that never send headers, live-tail subscribers that
never read while it ingests, OTLP spans with huge and deeply nested attributes, and an ingest
flood. Each attack is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg

GOOD_CLIENTS = 2
GOOD_BATCH = 200
GOOD_RATE = 10_000  # records/s: the well-behaved tenant's steady load
# The other tenant connects from another loopback address, as another client machine would:
# per-address bounds apply to it, not to the well-behaved tenant.
EVIL_ADDRESS = ("127.0.0.2", 0)


def _evil_session(total: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=total),
        connector=aiohttp.TCPConnector(local_addr=EVIL_ADDRESS),
    )


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _count(dsn: str, schema: str, project: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                f"SELECT count(*) FROM {schema}.records WHERE project = $1", project
            )
        )
    finally:
        await conn.close()


async def _good(url: str, key: str, body: Any, seconds: float) -> dict[str, Any]:
    """The well-behaved tenant: GOOD_CLIENTS posters for ``seconds``, paced to GOOD_RATE
    records/s in all (a tenant well within the collector's capacity, as a fair share is)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        stop_at = time.perf_counter() + seconds

        interval = GOOD_CLIENTS * GOOD_BATCH / GOOD_RATE  # seconds between one client's posts

        async def client() -> None:
            next_at = time.perf_counter()
            while time.perf_counter() < stop_at:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
                started = time.perf_counter()
                try:
                    async with session.post(
                        url + "/v1/ingest", data=body.fresh(), headers=headers
                    ) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - started)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(GOOD_CLIENTS)))
        elapsed = time.perf_counter() - t0
    return {"elapsed": elapsed, "latencies": latencies, "statuses": statuses}


# ---- attacks: each runs until ``stop`` is set, then cleans up -------------------------------


async def _searches(url: str, key: str, stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    queries = ["/v1/search?limit=1000&q=paced", "/v1/errors?scan=100000", "/v1/spans"]
    async with _evil_session(60) as session:

        async def one(i: int) -> None:
            while not stop.is_set():
                try:
                    async with session.get(url + queries[i % 3], headers=headers) as resp:
                        await resp.read()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(one(i) for i in range(16)))


async def _raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port), local_addr=EVIL_ADDRESS)


async def _slow_uploads(url: str, key: str, stop: asyncio.Event) -> None:
    async def one() -> None:
        try:
            _, writer = await _raw(url)
        except OSError:
            return
        head = (
            "POST /v1/ingest HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/msgpack\r\n"
            "Content-Length: 100000\r\n\r\n"
        )
        try:
            writer.write(head.encode())
            while not stop.is_set():
                writer.write(b"\x00")
                await writer.drain()
                await asyncio.sleep(0.2)
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(64)))


async def _idle_connections(url: str, key: str, stop: asyncio.Event) -> None:
    writers = []
    for _ in range(500):
        try:
            _, writer = await _raw(url)
        except OSError:
            break
        writers.append(writer)
    await stop.wait()
    for writer in writers:
        writer.close()


async def _tail_then_ingest(url: str, key: str, stop: asyncio.Event, body: Any) -> None:
    writers = []
    for _ in range(200):
        try:
            _, writer = await _raw(url)
        except OSError:
            break
        writer.write(
            f"GET /v1/tail HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
        )
        writers.append(writer)  # never read: the server's queue for it fills
    async with _evil_session(30) as session:
        await _post_until(session, url, key, body, stop)
    for writer in writers:
        writer.close()


# kvlist levels of the deep attribute: four JSON levels each, so 240 stay under the 1,024
# levels a JSON parser takes (the body is decoded, and the value then cut at atrace's depth).
DEEP_LEVELS = 240


def _otlp_huge() -> bytes:
    # Written as text: json.dumps itself would recurse past Python's limit on such a value.
    deep = '{"kvlistValue":{"values":[{"key":"k","value":' * DEEP_LEVELS
    deep += '{"stringValue":"leaf"}' + "}]}}" * DEEP_LEVELS
    span = (
        f'{{"traceId":"{uuid.uuid4().hex}","spanId":"{uuid.uuid4().hex[:16]}","name":"huge",'
        f'"startTimeUnixNano":"{time.time_ns()}","endTimeUnixNano":"{time.time_ns() + 1000}",'
        f'"attributes":[{{"key":"big","value":{{"stringValue":"{"x" * 2_000_000}"}}}},'
        f'{{"key":"deep","value":{deep}}}]}}'
    )
    body = f'{{"resourceSpans":[{{"resource":{{}},"scopeSpans":[{{"spans":[{span}]}}]}}]}}'
    json.loads(body)  # well-formed, whatever the collector makes of it
    return body.encode()


async def _huge_otlp(url: str, key: str, stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    data = _otlp_huge()
    async with _evil_session(30) as session:

        async def one() -> None:
            while not stop.is_set():
                try:
                    async with session.post(url + "/v1/traces", data=data, headers=headers) as r:
                        await r.read()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(one() for _ in range(2)))


async def _flood(url: str, key: str, stop: asyncio.Event, body: Any) -> None:
    async with _evil_session(30) as session:
        await asyncio.gather(*(_post_until(session, url, key, body, stop) for _ in range(8)))


async def _post_until(
    session: aiohttp.ClientSession, url: str, key: str, body: Any, stop: asyncio.Event
) -> None:
    """Post native batches as fast as they are answered until ``stop``."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
    while not stop.is_set():
        try:
            async with session.post(url + "/v1/ingest", data=body.fresh(), headers=headers) as r:
                await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)


Attack = Callable[[str, str, asyncio.Event], Awaitable[None]]


def attacks(evil_body: Any) -> list[tuple[str, Attack]]:
    """The attacks, by name, each a coroutine function of (url, key, stop)."""
    return [
        ("16 heavy searches", _searches),
        ("64 slow uploads", _slow_uploads),
        ("500 idle connections", _idle_connections),
        ("200 tails never read + ingest", lambda u, k, s: _tail_then_ingest(u, k, s, evil_body)),
        (f"OTLP 2 MB / {DEEP_LEVELS}-deep attrs", _huge_otlp),
        ("ingest flood, 8 clients", lambda u, k, s: _flood(u, k, s, evil_body)),
    ]


async def _beside(
    dsn: str, schema: str, url: str, good_key: str, evil_key: str, body: Any,
    attack: Attack | None, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    before = await _count(dsn, schema, "good")
    stop = asyncio.Event()
    task = asyncio.ensure_future(attack(url, evil_key, stop)) if attack else None
    try:
        if task is not None:
            await asyncio.sleep(1.0)  # let the attack take hold first
        result = await _good(url, good_key, body, seconds)
    finally:
        stop.set()
        if task is not None:
            try:
                await asyncio.wait_for(task, 30)
            except (asyncio.TimeoutError, Exception):
                task.cancel()
    stored = await _count(dsn, schema, "good") - before
    lat = result["latencies"]
    return {
        "rate": stored / result["elapsed"],
        "p99_ms": _percentile(lat, 0.99) * 1000,
        "statuses": result["statuses"],
    }


async def abuse(
    dsn: str, schema: str, url: str, good_key: str, evil_key: str, body: Any, evil_body: Any,
    seconds: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """The good tenant alone, then beside each attack; one row each."""
    rows = []
    alone = await _beside(dsn, schema, url, good_key, evil_key, body, None, seconds)
    rows.append({"attack": "(alone)", **alone, "share": 1.0})
    for name, attack in attacks(evil_body):
        r = await _beside(dsn, schema, url, good_key, evil_key, body, attack, seconds)
        rows.append({"attack": name, **r, "share": r["rate"] / alone["rate"]})
    return rows


# ---- /healthz while a crowd of live-tail subscribers is fed -----------------------------------

TAILS = 5000
TAIL_SERVE_ARGS = [
    "--max-tail-subscribers", str(TAILS), "--max-tail-per-key", str(TAILS),
    "--max-connections", str(TAILS + 1000), "--max-connections-per-address", str(TAILS + 100),
    "--query-rate", "100000", "--query-burst", "100000",
]  # fmt: skip
HEALTH_TARGET_MS = 100.0
HEALTH_BATCH = 2000  # rows per batch fed to every tail
FEED_EVERY = 2.0


# The prober runs in a process of its own: the thousands of tails read in this one must not
# delay its requests (what is measured is the collector's answer, not this process's loop).
_PROBE = """
import http.client, json, sys, time
host, port = sys.argv[1].removeprefix("http://").split(":")
conn = http.client.HTTPConnection(host, int(port), timeout=30)
out = []
for line in sys.stdin:  # one line per probe; EOF ends
    started = time.perf_counter()
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        resp.read()
        out.append(time.perf_counter() - started if resp.status == 200 else 30.0)
    except OSError:
        out.append(30.0)
        conn.close()
print(json.dumps(out))
"""


async def _probe(url: str, stop: asyncio.Event) -> list[float]:
    """``GET /healthz`` every 20 ms until ``stop``, from a process of its own; the latencies in
    seconds (30 s for a failure)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PROBE, url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    while not stop.is_set():
        proc.stdin.write(b"\n")
        await proc.stdin.drain()
        await asyncio.sleep(0.02)
    out, _ = await proc.communicate(b"")
    return [float(x) for x in json.loads(out)]


async def _drain(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(1 << 20):
            pass


async def _tails(
    url: str, key: str, n: int, readers: list[asyncio.Task[None]]
) -> list[asyncio.StreamWriter]:
    """``n`` live tails opened raw, each read (and its events thrown away) by a task."""
    writers: list[asyncio.StreamWriter] = []
    host, port = url.removeprefix("http://").split(":")
    request = f"GET /v1/tail HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            raise RuntimeError(f"tail refused: {head.splitlines()[0]!r}")
        writers.append(writer)
        readers.append(asyncio.ensure_future(_drain(reader)))

    for start in range(0, n, 250):
        await asyncio.gather(*(one() for _ in range(start, min(n, start + 250))))
    return writers


async def healthz_under_tails(url: str, key: str, body: Any, seconds: float) -> dict[str, Any]:
    """``/healthz`` latency with no tail, then with TAILS tails open and idle, then while
    one batch matching every tail is ingested (each row goes to every subscriber, which reads
    it), and again while such batches come every ``FEED_EVERY`` seconds."""
    phases: dict[str, list[float]] = {}

    async def measure(name: str, during: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        stop = asyncio.Event()
        probe = asyncio.ensure_future(_probe(url, stop))
        try:
            await during(stop)
        finally:
            stop.set()
            phases[name] = await probe

    async def idle(stop: asyncio.Event) -> None:
        await asyncio.sleep(seconds)

    async def post(session: aiohttp.ClientSession) -> None:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
        async with session.post(url + "/v1/ingest", data=body.fresh(), headers=headers) as resp:
            await resp.read()

    async def once(stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            await post(session)
        await asyncio.sleep(seconds)

    async def ingest(stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            until = time.perf_counter() + seconds
            while time.perf_counter() < until:
                await post(session)
                await asyncio.sleep(FEED_EVERY)

    await measure("no tail", idle)
    readers: list[asyncio.Task[None]] = []
    writers = await _tails(url, key, TAILS, readers)
    try:
        await measure(f"{TAILS} tails, idle", idle)
        await measure(f"{TAILS} tails, one batch", once)
        await measure(f"{TAILS} tails, fed", ingest)
    finally:
        for writer in writers:
            writer.transport.abort()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return {
        name: {
            "p50_ms": _percentile(lat, 0.5) * 1000,
            "p99_ms": _percentile(lat, 0.99) * 1000,
            "max_ms": max(lat) * 1000,
            "probes": len(lat),
        }
        for name, lat in phases.items()
    }


def report_healthz(result: dict[str, Any], rows_per_batch: int) -> None:
    print(
        f"\n/healthz, probed every 20 ms from another process; one batch = {rows_per_batch} rows"
        f" read by every tail; fed = such a batch every {FEED_EVERY:g} s"
    )
    print(f"{'phase':<24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'probes':>7}")
    for name, r in result.items():
        print(
            f"{name:<24} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} "
            f"{r['probes']:>7}"
        )
    worst = max(r["max_ms"] for r in result.values())
    met = worst < HEALTH_TARGET_MS
    print(f"/healthz under {HEALTH_TARGET_MS:.0f} ms throughout: {met} (worst {worst:.1f} ms)")


def report_abuse(rows: list[dict[str, Any]]) -> None:
    print(f"{'attack by the other tenant':<32} {'rec/s':>9} {'share':>6} {'p99 ms':>8}  statuses")
    for r in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        print(
            f"{r['attack']:<32} {r['rate']:>9,.0f} {r['share']:>6.0%} {r['p99_ms']:>8.1f}  "
            f"{statuses}"
        )
    kept = all(r["share"] >= 0.8 for r in rows)
    print(f"\nthe well-behaved tenant keeps >= 80% of its rate beside every attack: {kept}")
