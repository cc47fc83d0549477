"""`atrace serve` run as a user runs it, attacked from outside: its bounds hold for the process.

Each test starts ``python -m atrace.cli serve`` on 127.0.0.1 (port 0) over a schema of its own,
with two projects: a victim's key (its client connects from 127.0.0.1) and an attacker's (from
127.0.0.2, as another machine would, so per-address bounds meet the attacker only). The attack
runs for a bounded count and time; what is asserted is what a user sees from outside: the
server's resident memory (``/proc/<pid>/status``), ``/healthz``, the victim's requests, the
statuses the attacker gets, the rows in PostgreSQL and ``/metrics``. At the end the server is
stopped with SIGTERM and must exit 0 with no traceback and no secret (an API key's secret, the
DSN's password) in what it printed.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import re
import signal
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgpack
import orjson
import pytest_asyncio

from _collector import child_env, make_rows, native_body, raw_request
from _helpers import wait_until
from atrace._emit.ids import new_span_id, new_trace_id
from atrace._postgres.session import connection_init
from atrace._records import ATTRS, COLUMNS, MESSAGE, NAME, Row
from atrace.collector._auth import create_key, parse_key

MiB = 1024 * 1024
VICTIM = "victim"
ATTACKER = "attacker"
# The attacker's client address: another loopback address, as another machine's would be.
ATTACKER_ADDRESS = ("127.0.0.2", 0)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# A generous liveness bound, never a latency target: an answer slower than this is a hang.
ALIVE = 5.0
# Resident memory the server may gain under an attack (before/after and peak): generous, since
# the allocator keeps what it once took, yet far below what an unbounded attack would take.
RSS_BOUND_MB = 250.0
INFLIGHT_BYTES_REFUSED = 'atrace_collector_refused_total{cause="max_inflight_bytes"}'


# ---- the server process ------------------------------------------------------------------------


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` now, in MB (``VmRSS``)."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_mb(pid: int) -> float:
    """The most resident memory process ``pid`` has had, in MB (``VmHWM``)."""
    return _status_kb(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> None:
    """Start ``VmHWM`` again from the current resident memory (Linux 4.0+), where allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass  # the peak then covers the server's start as well: a larger, still bounded figure


class Memory:
    """The server's resident memory around an attack: ``growth`` (now minus before) and
    ``peak_growth`` (the highest point meanwhile minus before), in MB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        reset_peak(pid)
        self.before = rss_mb(pid)

    @property
    def growth(self) -> float:
        return rss_mb(self.pid) - self.before

    @property
    def peak_growth(self) -> float:
        return peak_mb(self.pid) - self.before

    def check(self, bound: float = RSS_BOUND_MB) -> None:
        growth, peak = self.growth, self.peak_growth
        print(f"server RSS: {self.before:.1f} MB before, +{growth:.1f} MB after, +{peak:.1f} peak")
        assert peak < bound, f"the server's peak RSS grew by {peak:.1f} MB (bound {bound})"


def _with_password(dsn: str) -> tuple[str, str]:
    """``dsn`` with a password (the test server trusts local connections, so any one works)."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password:
        return dsn, parts.password
    password = "pw-" + uuid.uuid4().hex
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:{password}@{host}").geturl(), password


def _secret(key: str) -> str:
    """The secret part of an API key (it may itself hold ``_``)."""
    parsed = parse_key(key)
    assert parsed is not None, "not an API key"
    return parsed[1]


class Served:
    """One ``atrace serve`` subprocess: ``url``, ``pid``, the ``victim`` and ``attacker`` keys,
    its captured output, and the database helpers checks need."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Path, err: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.out = out
        self.err = err
        self.url = ""
        self.host = ""
        self.port = 0
        self.db_dsn = ""
        self.schema = ""
        self.victim = ""
        self.attacker = ""
        # Strings that must never appear in what the server prints.
        self.secrets: list[str] = []

    def output(self) -> str:
        """Everything the server printed so far, stdout then stderr."""
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def stderr_lines(self) -> list[str]:
        return self.err.read_text(errors="replace").splitlines()

    def assert_clean_output(self) -> None:
        text = self.output()
        assert "Traceback" not in text, text[-3000:]
        for secret in self.secrets:
            assert secret not in text, "a secret appears in the server's output"

    async def fetchval(self, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.db_dsn)
        try:
            await connection_init(conn)
            return await conn.fetchval(sql.replace("{schema}", self.schema), *args)
        finally:
            await conn.close()

    async def count(self, project: str) -> int:
        """Rows stored for ``project``."""
        return int(
            await self.fetchval("SELECT count(*) FROM {schema}.records WHERE project = $1", project)
        )

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{series: value}`` (``name{labels}`` exactly as rendered)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + "/metrics", timeout=aiohttp.ClientTimeout(total=ALIVE)) as r,
        ):
            assert r.status == 200
            text = await r.text()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                found[series] = float(value)
        return found

    async def metric(self, series: str) -> float:
        """One series of ``/metrics`` (0 when absent)."""
        return (await self.metrics()).get(series, 0.0)

    async def healthz(self, session: aiohttp.ClientSession) -> int:
        """``GET /healthz``'s status; an answer slower than ALIVE fails the test."""
        async with session.get(
            self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=ALIVE)
        ) as r:
            await r.read()
            return r.status

    async def stop(self) -> int:
        """SIGTERM, then the exit code (killed after STOP_TIMEOUT: a hang is a failure)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                raise AssertionError(f"atrace serve did not stop within {STOP_TIMEOUT} s") from None
        assert self.proc.returncode is not None
        return self.proc.returncode


Serve = Callable[..., Awaitable[Served]]


@pytest_asyncio.fixture
async def serve(pg_schema: tuple[str, str], tmp_path: Path) -> AsyncIterator[Serve]:
    """``await serve(*flags)``: ``atrace serve`` started with ``flags`` over this test's schema,
    once it listens, with a victim's and an attacker's key. At teardown: SIGTERM, exit code 0,
    and nothing printed holds a traceback, a key's secret or the DSN's password."""
    dsn, schema = pg_schema
    app_dsn, password = _with_password(dsn)
    started: list[Served] = []

    async def start(*flags: str) -> Served:
        n = len(started)
        out, err = tmp_path / f"serve-{n}.out", tmp_path / f"serve-{n}.err"
        with out.open("wb") as out_f, err.open("wb") as err_f:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "atrace.cli", "serve", "--dsn", app_dsn,
                "--schema", schema, "--port", "0", "--shutdown-timeout", "5", *flags,
                stdin=asyncio.subprocess.DEVNULL, stdout=out_f, stderr=err_f, env=child_env(),
            )  # fmt: skip
        served = Served(proc, out, err)
        served.secrets.append(password)
        started.append(served)

        def listening() -> bool:
            assert proc.returncode is None, f"atrace serve exited:\n{served.output()}"
            return "listening on" in out.read_text()

        await wait_until(listening, START_TIMEOUT, every=0.05)
        line = out.read_text().splitlines()[0]
        assert line.startswith("atrace collector listening on http://127.0.0.1:"), line
        served.url = line.split()[4]
        served.host, port = served.url.removeprefix("http://").split(":")
        served.port = int(port)
        served.db_dsn, served.schema = dsn, schema
        conn = await asyncpg.connect(dsn)
        try:
            served.victim = await create_key(conn, schema, VICTIM)
            served.attacker = await create_key(conn, schema, ATTACKER)
        finally:
            await conn.close()
        served.secrets += [_secret(served.victim), _secret(served.attacker)]
        return served

    try:
        yield start
    finally:
        for served in started:
            code = await served.stop()
            assert code == 0, served.output()[-3000:]
            served.assert_clean_output()


# ---- clients ------------------------------------------------------------------------------------


def victim_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))


def attacker_session(**kw: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30),
        connector=aiohttp.TCPConnector(local_addr=ATTACKER_ADDRESS, **kw),
    )


async def attacker_connection(
    served: Served,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(served.host, served.port, local_addr=ATTACKER_ADDRESS)


class Answer:
    """A response read whole: status, headers and body."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:300]!r}>"


async def post(
    session: aiohttp.ClientSession,
    served: Served,
    key: str,
    body: bytes,
    *,
    path: str = "/v1/ingest",
    content_type: str = "application/msgpack",
    headers: dict[str, str] | None = None,
) -> Answer:
    sent = {"Authorization": f"Bearer {key}", "Content-Type": content_type, **(headers or {})}
    # aiohttp warns of large bytes bodies (they are written in one go); a file object is not.
    data: Any = io.BytesIO(body) if len(body) > MiB else body
    async with session.post(served.url + path, data=data, headers=sent) as r:
        return Answer(r.status, r.headers, await r.read())


async def get(session: aiohttp.ClientSession, served: Served, key: str, path: str) -> Answer:
    async with session.get(served.url + path, headers={"Authorization": f"Bearer {key}"}) as r:
        return Answer(r.status, r.headers, await r.read())


async def post_until_stored(
    session: aiohttp.ClientSession, served: Served, key: str, body: bytes, attempts: int = 10
) -> list[int]:
    """POST one batch until it is stored: a 429 or 503 must carry ``Retry-After`` and is retried
    (the same batch id: stored once however often sent). The statuses seen, the last one 200."""
    seen: list[int] = []
    for _ in range(attempts):
        answer = await post(session, served, key, body)
        seen.append(answer.status)
        if answer.status == 200:
            return seen
        assert answer.status in (429, 503), answer
        wait = int(answer.headers["Retry-After"])
        assert 1 <= wait <= 60, answer.headers["Retry-After"]
        await asyncio.sleep(min(wait, 1))
    raise AssertionError(f"not stored after {attempts} attempts: {seen}")


def rows_named(
    n: int, prefix: str, *, message_bytes: int = 0, attrs: bytes | None = None
) -> list[Row]:
    """``n`` valid rows named ``{prefix}-{i}``, with a message of ``message_bytes`` if given."""
    out: list[Row] = []
    for i, row in enumerate(make_rows(n, service=prefix)):
        values = list(row)
        values[NAME] = f"{prefix}-{i}"
        if message_bytes:
            values[MESSAGE] = f"{prefix}-{i}:".ljust(message_bytes, "m")
        if attrs is not None:
            values[ATTRS] = attrs
        out.append(tuple(values))
    return out


def batch(rows: list[Row]) -> bytes:
    return native_body(rows)[1]


class Tail:
    """A live tail read with aiohttp (a well-behaved reader)."""

    def __init__(self, session: aiohttp.ClientSession, resp: aiohttp.ClientResponse) -> None:
        self.session = session
        self.resp = resp

    @classmethod
    async def open(cls, served: Served, key: str) -> Tail:
        session = aiohttp.ClientSession()
        try:
            resp = await session.get(
                f"{served.url}/v1/tail", headers={"Authorization": f"Bearer {key}"}
            )
            assert resp.status == 200, await resp.text()
            assert await resp.content.readline() == b": tail started\n"
            assert await resp.content.readline() == b"\n"
        except BaseException:
            await session.close()
            raise
        return cls(session, resp)

    async def names(self, n: int, timeout: float = 20.0) -> list[str]:
        """The ``name`` of the next ``n`` records streamed."""

        async def read() -> list[str]:
            out: list[str] = []
            while len(out) < n:
                line = await self.resp.content.readline()
                assert line, f"the stream ended after {len(out)} of {n} records"
                if line.startswith(b"data: "):
                    out.append(orjson.loads(line[6:])["name"])
            return out

        return await asyncio.wait_for(read(), timeout)

    async def close(self) -> None:
        self.resp.close()
        await self.session.close()


async def idle_tail(served: Served, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A live tail from the attacker's address, subscribed, then never read again."""
    reader, writer = await attacker_connection(served)
    head = f"GET /v1/tail HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
    writer.write(head.encode())
    answer = await asyncio.wait_for(reader.readuntil(b": tail started\n\n"), ALIVE * 2)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return reader, writer


def abort_all(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        writer.transport.abort()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    try:
        return await reader.read(65536) == b""
    except ConnectionError:
        return True


async def pump(writer: asyncio.StreamWriter, chunks: AsyncIterator[bytes]) -> None:
    """Send ``chunks`` as the socket takes them."""
    async for chunk in chunks:
        writer.write(chunk)
        await writer.drain()


def ingest_head(key: str, length: int, *, gzipped: bool = False) -> bytes:
    encoding = "Content-Encoding: gzip\r\n" if gzipped else ""
    return (
        "POST /v1/ingest HTTP/1.1\r\nHost: collector\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/msgpack\r\n{encoding}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def warm_up(served: Served) -> None:
    """One ingest, search and tail of each key: what any request imports and allocates is
    resident before memory is measured."""
    async with victim_session() as session:
        for key, prefix in ((served.victim, "warm-v"), (served.attacker, "warm-a")):
            tail = await Tail.open(served, key)
            try:
                body = batch(rows_named(20, prefix))
                assert (await post(session, served, key, body)).status == 200
                gz = batch(rows_named(20, prefix + "-gz"))
                answer = await post(
                    session, served, key, gzip.compress(gz), headers={"Content-Encoding": "gzip"}
                )
                assert answer.status == 200, answer
                assert len(await tail.names(40)) == 40
                assert (await get(session, served, key, "/v1/search?limit=10")).status == 200
            finally:
                await tail.close()


# ---- attacks ------------------------------------------------------------------------------------


class TestLiveTail:
    async def test_tails_never_read_leave_memory_and_other_tails_alone(self, serve: Serve) -> None:
        """Ten attacker tails that never read, fed ~170 KiB uploads, keep no victim row from the
        victim's tail, and once past their queue bound are dropped with a last error event,
        while the server's memory stays bounded."""
        queue_bytes = 256 * 1024
        served = await serve("--tail-queue-bytes", str(queue_bytes))
        await warm_up(served)
        memory = Memory(served.pid)
        stalled = [await idle_tail(served, served.attacker) for _ in range(10)]
        mine = await Tail.open(served, served.victim)
        uploads = 0
        try:
            async with victim_session() as victim, attacker_session() as attacker:

                async def round_() -> None:
                    nonlocal uploads
                    big = batch(rows_named(20, f"big{uploads}", message_bytes=8500))
                    assert 160 * 1024 < len(big) < 200 * 1024
                    assert (await post(attacker, served, served.attacker, big)).status == 200
                    rows = rows_named(50, f"v{uploads}")
                    assert (await post(victim, served, served.victim, batch(rows))).status == 200
                    assert await mine.names(50) == [f"v{uploads}-{i}" for i in range(50)]
                    uploads += 1

                for _ in range(3):
                    await round_()
                assert await served.healthz(victim) == 200
                # Kernel buffers hold three uploads; what follows reaches the queue bound. Up
                # to 60 uploads (10 MB per tail): far past every buffer on the way.
                while await served.metric('atrace_collector_tail_ended_total{cause="slow"}') < 10:
                    assert uploads < 60, "the tails that never read were never dropped"
                    await round_()
                    metrics = await served.metrics()
                    subscribers = metrics["atrace_collector_tail_subscribers"]
                    queued = metrics["atrace_collector_tail_queued_bytes"]
                    assert queued <= subscribers * queue_bytes

                async def only_mine() -> bool:
                    return await served.metric("atrace_collector_tail_subscribers") == 1

                await wait_until(only_mine, every=0.1)
                await round_()  # the victim's tail goes on
                assert await served.healthz(victim) == 200
            memory.check(bound=100.0)
            # Each stalled stream, read at last, ends with the event saying why.
            for reader, _ in stalled:
                rest = await asyncio.wait_for(reader.read(), 20)
                at = rest.rfind(b"event: error\ndata: ")
                assert at >= 0 and b"data: {" not in rest[at + 19 :], rest[-300:]
                line = rest[at + 19 :].split(b"\n", 1)[0]
                assert "too slow" in orjson.loads(line)["error"], line
            assert await served.count(ATTACKER) == 40 + uploads * 20
            assert await served.count(VICTIM) == 40 + uploads * 50
        finally:
            abort_all(stalled)
            await mine.close()

    async def test_healthz_answers_while_300_idle_tails_are_fanned_out_to(
        self, serve: Serve
    ) -> None:
        """With 300 attacker tails that never read, a 2,000-row batch for all of them leaves
        /healthz answering 200 throughout, and the server's memory bounded by the bytes it may
        hold for all tails."""
        total = 64 * MiB
        served = await serve(
            "--max-tail-per-key", "400", "--max-connections-per-address", "1000",
            "--query-burst", "1000", "--tail-total-bytes", str(total),
        )  # fmt: skip
        await warm_up(served)
        memory = Memory(served.pid)
        tails: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(6):
                tails += await asyncio.gather(
                    *(idle_tail(served, served.attacker) for _ in range(50))
                )

            async def subscribed() -> bool:
                # The warm-up's tails are let go once the collector sees their readers gone.
                return await served.metric("atrace_collector_tail_subscribers") == 300

            await wait_until(subscribed, every=0.1)
            statuses: list[int] = []
            stop = asyncio.Event()
            async with victim_session() as victim:

                async def probe() -> None:
                    while not stop.is_set():
                        statuses.append(await served.healthz(victim))
                        await asyncio.sleep(0.05)

                prober = asyncio.ensure_future(probe())
                try:
                    async with attacker_session() as attacker:
                        body = batch(rows_named(2000, "fan"))
                        answer = await post(attacker, served, served.attacker, body)
                    assert answer.status == 200, answer

                    async def fanned_out() -> bool:
                        metrics = await served.metrics()
                        return metrics["atrace_collector_tail_backlog_rows"] == 0

                    await wait_until(fanned_out, every=0.2)
                    await asyncio.sleep(1.0)  # keep probing while the writes drain
                finally:
                    stop.set()
                    await prober
            assert len(statuses) >= 5 and set(statuses) == {200}, statuses
            # Each tail is handed ~0.8 MB of events: 240 MB for all, were it not for the bound
            # on what is held for all tails, past which the readers over their share are let go.
            assert await served.metric('atrace_collector_tail_ended_total{cause="slow"}') >= 1
            memory.check(bound=total / MiB + 120)
        finally:
            abort_all(tails)


def otlp_span_json(trace_id: str, depth: int, big: int = 2_000_000) -> bytes:
    """An OTLP/JSON export of one span with a ``big``-character attribute and a kvlist nested
    ``depth`` levels (four JSON levels each); written out by hand, since no JSON encoder nests
    that deep."""
    nested = '{"stringValue":"leaf"}'
    for _ in range(depth):
        nested = '{"kvlistValue":{"values":[{"key":"k","value":' + nested + "}]}}"
    now = time.time_ns()
    span = (
        f'{{"traceId":"{trace_id}","spanId":"{new_span_id() & (2**63 - 1):016x}",'
        f'"name":"huge","startTimeUnixNano":"{now}","endTimeUnixNano":"{now + 1000}",'
        f'"attributes":[{{"key":"big","value":{{"stringValue":"{"x" * big}"}}}},'
        f'{{"key":"deep","value":{nested}}}]}}'
    )
    return f'{{"resourceSpans":[{{"resource":{{}},"scopeSpans":[{{"spans":[{span}]}}]}}]}}'.encode()


class TestHostileBodies:
    async def test_huge_and_deep_otlp_attributes_are_cut_and_answers_stay_bounded(
        self, serve: Serve
    ) -> None:
        """OTLP/JSON spans with a 2 MB attribute and a deep kvlist are stored sanitised, or
        refused with a 4xx when nested past what the parser takes; a search of the project then
        answers within max_response_bytes, and the server's memory stays bounded."""
        most = MiB
        served = await serve("--max-response-bytes", str(most))
        await warm_up(served)
        memory = Memory(served.pid)
        parsed_id, refused_id = new_trace_id(), new_trace_id()
        # 60 kvlist levels parse (240 JSON levels) and are cut at the collector's depth;
        # 300 levels (1,200 JSON levels) are past the JSON parser's own bound.
        parsed, refused = otlp_span_json(parsed_id, 60), otlp_span_json(refused_id, 300)
        assert len(parsed) > 2_000_000 and len(refused) > 2_000_000
        async with attacker_session() as attacker:
            answers = []
            for body in (parsed, refused, parsed, refused):
                answers.append(
                    await post(
                        attacker, served, served.attacker, body,
                        path="/v1/traces", content_type="application/json",
                    )
                )  # fmt: skip
            assert [a.status for a in answers] == [200, 400, 200, 400], answers
            assert "cut" in answers[0].json()["partialSuccess"]["errorMessage"]
            stored = await served.fetchval(
                "SELECT attrs FROM {schema}.records WHERE project = $1 AND trace_id = $2",
                ATTACKER,
                parsed_id,
            )
            attrs = orjson.loads(stored)
            # The OTLP decoders cut a string value to their limit (4,096 characters), marked.
            cut = re.fullmatch(r"(x+)\u2026\[truncated (\d+) chars\]", attrs["big"])
            assert cut is not None, attrs["big"][-100:]
            assert len(cut[1]) <= 4096 and len(cut[1]) + int(cut[2]) == 2_000_000
            assert "<too deep>" in json.dumps(attrs["deep"])
            assert len(stored) < 8192
            # Far more than one answer may carry: 300 records of ~10 KB.
            for i in range(3):
                rows = rows_named(100, f"wide{i}", message_bytes=10_000)
                assert (await post(attacker, served, served.attacker, batch(rows))).status == 200
            page = await get(attacker, served, served.attacker, "/v1/search?limit=1000")
        assert page.status == 200, page
        assert len(page.body) <= most + 64 * 1024, len(page.body)
        found = page.json()
        assert found["next_cursor"] is not None
        assert 50 < len(found["records"]) < 300
        memory.check()
        async with victim_session() as victim:
            assert await served.healthz(victim) == 200
        # Warm-up rows, the one span stored (its retry a duplicate) and the wide rows.
        assert await served.count(ATTACKER) == 40 + 1 + 300

    async def test_deeply_nested_msgpack_is_refused_or_cut_and_the_tail_goes_on(
        self, serve: Serve
    ) -> None:
        """Records nested 300 levels (in attrs, in a msgpack value) or 100,000 levels (the
        whole document) are cut or refused with a 400, never a 5xx; both projects' tails go
        on."""
        served = await serve()
        theirs = await Tail.open(served, served.attacker)
        mine = await Tail.open(served, served.victim)
        try:
            deep = b'{"deep":' + b'{"k":' * 300 + b'"leaf"' + b"}" * 300 + b"}"
            deep_attrs = rows_named(1, "deep-attrs", attrs=deep)
            values = list(rows_named(1, "deep-message")[0])
            nested: Any = "leaf"
            for _ in range(300):
                nested = [nested]
            values[MESSAGE] = nested
            deep_value = msgpack.packb(
                {"v": 1, "batch": uuid.uuid4().bytes, "columns": list(COLUMNS),
                 "rows": [values]},
                use_bin_type=True,
            )  # fmt: skip
            bodies = [
                ("application/msgpack", batch(deep_attrs)),
                ("application/msgpack", deep_value),
                ("application/msgpack", b"\x91" * 100_000 + b"\xc0"),
                ("application/json", b"[" * 100_000 + b"]" * 100_000),
            ]
            answers = []
            async with attacker_session() as attacker:
                for content_type, body in bodies:
                    answers.append(
                        await post(
                            attacker, served, served.attacker, body, content_type=content_type
                        )
                    )
            assert [a.status for a in answers] == [200, 400, 400, 400], answers
            assert answers[0].json()["truncated"] == {"attrs": 1}
            for answer in answers[1:]:
                assert "error" in answer.json()
            stored = await served.fetchval(
                "SELECT attrs FROM {schema}.records WHERE project = $1 AND name = $2",
                ATTACKER,
                "deep-attrs-0",
            )
            assert "<too deep>" in stored.decode()
            assert await theirs.names(1) == ["deep-attrs-0"]
            async with victim_session() as victim:
                rows = rows_named(3, "after")
                assert (await post(victim, served, served.victim, batch(rows))).status == 200
                assert await served.healthz(victim) == 200
            assert await mine.names(3) == ["after-0", "after-1", "after-2"]
            assert await served.count(ATTACKER) == 1
            metrics = await served.metrics()
            assert metrics['atrace_collector_tail_skipped_rows_total{cause="unserialisable"}'] == 0
            assert metrics["atrace_collector_tail_healthy"] == 1
        finally:
            await theirs.close()
            await mine.close()


class TestSlowClients:
    async def test_slow_uploads_are_cut_and_leave_ingest_to_the_victim(self, serve: Serve) -> None:
        """64 attacker uploads sent a byte at a time end with 408 at the body time-out (or 429
        past the key's share of ingest slots), while every victim batch is stored."""
        served = await serve("--body-timeout", "2")

        async def dribble() -> AsyncIterator[bytes]:
            for _ in range(200):
                yield b"\x00"
                await asyncio.sleep(0.1)

        async def slow_upload() -> tuple[int, bytes]:
            reader, writer = await attacker_connection(served)
            try:
                writer.write(ingest_head(served.attacker, 1000))
                await writer.drain()
                sender = asyncio.ensure_future(pump(writer, dribble()))
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return 0, b""  # closed without an answer
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                return int(head.split(b" ", 2)[1]), head
            finally:
                writer.transport.abort()

        slow = [asyncio.ensure_future(slow_upload()) for _ in range(64)]
        try:

            async def holding() -> bool:
                return await served.metric("atrace_collector_inflight_requests") >= 16

            await wait_until(holding, every=0.05)
            statuses = []
            async with victim_session() as victim:
                for i in range(5):
                    body = batch(rows_named(10, f"victim{i}"))
                    statuses.append((await post(victim, served, served.victim, body)).status)
                    await asyncio.sleep(0.2)
                assert await served.healthz(victim) == 200
            assert statuses == [200] * 5
            results = await asyncio.wait_for(asyncio.gather(*slow), 30)
        finally:
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
        codes = [status for status, _ in results]
        assert set(codes) <= {0, 408, 429}, codes
        # The key never holds more ingest slots than its bound (16): the rest are refused.
        assert 1 <= codes.count(408) <= 16, codes
        assert all(b"Retry-After: 1" in head for status, head in results if status == 429)
        assert await served.count(VICTIM) == 50
        assert await served.count(ATTACKER) == 0
        metrics = await served.metrics()
        assert metrics['atrace_collector_refused_total{cause="body_timeout"}'] == codes.count(408)
        assert metrics['atrace_collector_refused_total{cause="max_ingest_per_key"}'] == codes.count(
            429
        )
        assert metrics["atrace_collector_inflight_requests"] == 0

    async def test_held_gzip_bodies_are_bounded_by_the_inflight_bytes(self, serve: Serve) -> None:
        """16 attacker gzip bodies held open (Content-Length longer than sent) are counted
        inflated: past max_inflight_bytes they are refused 503 with Retry-After, the server's
        memory stays near that bound, and the victim's batches are stored."""
        inflated = 15 * MiB
        bound = 32 * MiB
        served = await serve(
            "--max-body", str(MiB), "--max-inflated", str(16 * MiB),
            "--max-inflight-bytes", str(bound),
        )  # fmt: skip
        await warm_up(served)
        memory = Memory(served.pid)
        bomb = gzip.compress(b"\x00" * inflated)
        assert len(bomb) < 64 * 1024
        # A second gzip member, declared but held back: the body stays open, its inflated
        # bytes held, until it is sent.
        rest = gzip.compress(b"\x00")
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(16):
                reader, writer = await attacker_connection(served)
                head = ingest_head(served.attacker, len(bomb) + len(rest), gzipped=True)
                writer.write(head + bomb)
                conns.append((reader, writer))

            async def refused() -> bool:
                return await served.metric(INFLIGHT_BYTES_REFUSED) == 14

            await wait_until(refused, every=0.05)
            held = await served.metric("atrace_collector_inflight_bytes")
            assert 2 * inflated <= held <= bound
            async with victim_session() as victim:
                for i in range(5):
                    body = batch(rows_named(10, f"victim{i}"))
                    answer = await post(victim, served, served.victim, body)
                    assert answer.status == 200, answer
                assert await served.healthz(victim) == 200
            answers = []
            for reader, _ in conns:
                try:
                    answers.append(await asyncio.wait_for(reader.read(65536), 0.5))
                except asyncio.TimeoutError:
                    answers.append(b"")  # still held
            refusals = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
            assert len(refusals) == 14
            assert all(b"Retry-After: 1" in a for a in refusals)
            assert answers.count(b"") == 2
            memory.check(bound=2 * bound / MiB + 32)
            # The two held bodies end: zeros are no batch, refused 400 with nothing written.
            for (reader, writer), got in zip(conns, answers, strict=True):
                if not got:
                    writer.write(rest)
                    ended = await asyncio.wait_for(reader.read(65536), ALIVE)
                    assert ended.startswith(b"HTTP/1.1 400"), ended[:300]
                    assert b"not valid msgpack" in ended
        finally:
            abort_all(conns)

        async def released() -> bool:
            return await served.metric("atrace_collector_inflight_bytes") == 0

        await wait_until(released, every=0.05)
        assert await served.count(ATTACKER) == 40
        assert await served.count(VICTIM) == 40 + 50

    async def test_connections_that_send_no_head_are_closed_at_the_header_timeout(
        self, serve: Serve
    ) -> None:
        """300 attacker connections that send nothing are closed by the server (past the
        per-address cap at once, the rest at the header time-out), while the victim is served;
        the server logs each cause once, not once per connection."""
        served = await serve("--header-timeout", "2")
        conns = []
        try:
            for _ in range(300):
                conns.append(await attacker_connection(served))
            async with victim_session() as victim:
                statuses = []
                for i in range(5):
                    body = batch(rows_named(10, f"victim{i}"))
                    statuses.append((await post(victim, served, served.victim, body)).status)
                    statuses.append(await served.healthz(victim))
                assert statuses == [200] * 10
                closed = await asyncio.wait_for(
                    asyncio.gather(*(closed_by_server(reader) for reader, _ in conns)), 10
                )
                assert all(closed)
                assert await served.healthz(victim) == 200
        finally:
            abort_all(conns)
        metrics = await served.metrics()
        timed_out = metrics['atrace_collector_connections_closed_total{cause="header_timeout"}']
        at_accept = metrics['atrace_collector_connections_closed_total{cause="per_address"}']
        # The first 256 (the per-address cap) are admitted and time out; of the others, those
        # arriving while 256 are open are closed at once.
        assert timed_out + at_accept == 300 and timed_out >= 256 and at_accept >= 1
        lines = served.stderr_lines()
        assert len(lines) <= 4, lines
        assert sum("request head" in line for line in lines) == 1, lines
        assert sum("from one address" in line for line in lines) == 1, lines
        assert await served.count(VICTIM) == 50


class TestSecrets:
    async def test_malformed_header_carrying_a_key_is_400_without_the_key(
        self, serve: Serve
    ) -> None:
        """A request whose head has a broken line after (or in) the Authorization header is 400
        with a JSON error that quotes no part of the key; nothing is written or printed."""
        served = await serve()
        key = served.attacker
        broken = [
            f"Authorization: Bearer {key}\r\nX-Header-Without-A-Colon",
            f"Authorization : Bearer {key}",
            f"Authorization: Bearer {key}\x01",
            f"X-API-Key\x7f: {key}",
            f"Content-Length: x{key}",
        ]
        for line in broken:
            head = f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode("latin-1")
            status, raw, _ = await raw_request(served.host, served.port, head)
            assert status == 400, raw
            assert _secret(key).encode() not in raw and b"atk_" not in raw, raw
            assert b'{"error": "malformed ' in raw, raw
        async with victim_session() as victim:
            assert await served.healthz(victim) == 200
        assert _secret(key) not in served.output()
        assert await served.count(ATTACKER) == 0


class TestFlood:
    async def test_flood_of_one_key_leaves_every_victim_batch_stored_once(
        self, serve: Serve
    ) -> None:
        """Eight attacker clients posting as fast as they are answered for 3 s: every victim
        batch is stored (after Retry-After when refused) exactly once, the attacker is refused
        at its rate, and every refusal is counted in /metrics by its bound."""
        served = await serve("--ingest-rate", "100", "--ingest-burst", "100")
        stop = asyncio.Event()
        attacker_statuses: list[int] = []

        async def flood(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                body = batch(rows_named(20, "flood"))
                answer = await post(session, served, served.attacker, body)
                attacker_statuses.append(answer.status)
                if answer.status in (429, 503):
                    assert "Retry-After" in answer.headers, answer

        victim_statuses: list[list[int]] = []
        async with attacker_session(limit=8) as attacker, victim_session() as victim:
            started = time.monotonic()
            flooders = [asyncio.ensure_future(flood(attacker)) for _ in range(8)]
            try:
                for i in range(20):
                    body = batch(rows_named(50, f"victim{i}"))
                    victim_statuses.append(
                        await post_until_stored(victim, served, served.victim, body)
                    )
                    await asyncio.sleep(max(0.0, (i + 1) * 0.15 - (time.monotonic() - started)))
                await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
                assert await served.healthz(victim) == 200
            finally:
                stop.set()
                await asyncio.gather(*flooders)
                elapsed = time.monotonic() - started
        assert all(seen[-1] == 200 for seen in victim_statuses)
        assert set(attacker_statuses) <= {200, 429, 503}, set(attacker_statuses)
        assert attacker_statuses.count(429) >= 1
        # The key's bucket: its burst, then its rate (a second's slack for the last requests).
        assert attacker_statuses.count(200) <= 100 + 100 * (elapsed + 1)
        assert await served.count(VICTIM) == 20 * 50
        distinct = await served.fetchval(
            "SELECT count(DISTINCT (name, span_id)) FROM {schema}.records WHERE project = $1",
            VICTIM,
        )
        assert distinct == 20 * 50
        assert await served.count(ATTACKER) == 20 * attacker_statuses.count(200)
        metrics = await served.metrics()
        refused = sum(
            v for k, v in metrics.items() if k.startswith("atrace_collector_refused_total")
        )
        seen = attacker_statuses + [s for statuses in victim_statuses for s in statuses]
        assert refused == seen.count(429) + seen.count(503)
        assert metrics['atrace_collector_refused_total{cause="ingest_rate"}'] >= 1
        print(
            f"attacker: {len(attacker_statuses)} requests, "
            f"{attacker_statuses.count(200)} stored, {attacker_statuses.count(429)} 429, "
            f"{attacker_statuses.count(503)} 503; victim: {victim_statuses}"
        )


class TestAccounting:
    async def test_each_bound_that_struck_is_counted_and_logged_once(self, serve: Serve) -> None:
        """After slow uploads, held gzip bodies, an oversized body, a burst past the key's rate
        and idle connections, /metrics counts each refusal by the bound that made it, exactly
        as often as the clients were refused; each cause is logged once, and no request
        failed inside the collector."""
        served = await serve(
            "--body-timeout", "2", "--header-timeout", "2", "--max-body", str(MiB),
            "--max-inflated", str(4 * MiB), "--max-inflight-bytes", str(8 * MiB),
            "--ingest-rate", "2", "--ingest-burst", "12",
        )  # fmt: skip
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            # Idle connections: closed at the header time-out.
            idle = [await attacker_connection(served) for _ in range(3)]
            conns += idle
            # Slow uploads: 408 at the body time-out.
            slow = []
            for _ in range(2):
                reader, writer = await attacker_connection(served)
                writer.write(ingest_head(served.attacker, 1000) + b"\x00")
                slow.append((reader, writer))
            conns += slow
            # Held gzip bodies: two fit in the in-flight bytes, the others are refused 503.
            bomb, rest = gzip.compress(b"\x00" * (3 * MiB)), gzip.compress(b"\x00")
            held = []
            for n in range(1, 5):
                reader, writer = await attacker_connection(served)
                head = ingest_head(served.attacker, len(bomb) + len(rest), gzipped=True)
                writer.write(head + bomb)
                held.append((reader, writer))

                async def settled(n: int = n) -> bool:
                    # One at a time: which bodies are held must not depend on timing.
                    m = await served.metrics()
                    kept = m["atrace_collector_inflight_bytes"] // (3 * MiB)
                    return kept + m.get(INFLIGHT_BYTES_REFUSED, 0) >= n

                await wait_until(settled, every=0.02)
            conns += held
            # An oversized body: 413 before it is read.
            status, oversized, _ = await raw_request(
                served.host, served.port, ingest_head(served.attacker, 2 * MiB)
            )
            assert status == 413, oversized
            # A burst past the key's rate: 429 with Retry-After.
            burst: list[Answer] = []
            async with attacker_session() as attacker:
                for i in range(20):
                    body = batch(rows_named(5, f"burst{i}"))
                    burst.append(await post(attacker, served, served.attacker, body))
            # The held bodies end (zeros are no batch: 400), the slow ones time out (408).
            answers: list[bytes] = []
            for reader, writer in held:
                try:
                    answers.append(await asyncio.wait_for(reader.read(65536), 0.5))
                except asyncio.TimeoutError:
                    writer.write(rest)
                    answers.append(await asyncio.wait_for(reader.read(65536), ALIVE))
            slow_answers = [
                await asyncio.wait_for(reader.read(65536), ALIVE * 2) for reader, _ in slow
            ]
            closed = await asyncio.wait_for(
                asyncio.gather(*(closed_by_server(reader) for reader, _ in idle)), 10
            )
        finally:
            abort_all(conns)
        assert all(closed)
        assert [a[:12] for a in slow_answers] == [b"HTTP/1.1 408"] * 2, slow_answers
        statuses = sorted(int(a.split(b" ", 2)[1]) for a in answers)
        assert statuses == [400, 400, 503, 503], answers
        assert all(b"Retry-After: 1" in a for a in answers if a.startswith(b"HTTP/1.1 503"))
        by_rate = [a for a in burst if a.status == 429]
        assert by_rate and all(a.headers["Retry-After"] for a in by_rate)
        assert all("rate" in a.json()["error"] for a in by_rate)
        assert {a.status for a in burst} == {200, 429}
        metrics = await served.metrics()
        refused = {
            k.partition('cause="')[2].rstrip('"}'): v
            for k, v in metrics.items()
            if k.startswith("atrace_collector_refused_total{")
        }
        assert refused == {
            "body_timeout": 2,
            "max_inflight_bytes": 2,
            "max_body": 1,
            "ingest_rate": len(by_rate),
        }, refused
        assert metrics['atrace_collector_connections_closed_total{cause="header_timeout"}'] == 3
        assert metrics.get('atrace_collector_errors_total{reason="internal"}', 0) == 0
        lines = served.stderr_lines()
        for cause in ("(body_timeout)", "(max_inflight_bytes)", "(max_body)", "(ingest_rate)"):
            assert sum(cause in line for line in lines) == 1, (cause, lines)
        assert sum("request head" in line for line in lines) == 1, lines
        assert len(lines) == 5, lines
        assert await served.count(ATTACKER) == 5 * (len(burst) - len(by_rate))


class TestDisconnects:
    async def test_a_client_gone_mid_body_is_neither_a_traceback_nor_an_internal_error(
        self, serve: Serve
    ) -> None:
        """Uploads the client abandons halfway (reset or half-closed) are not failures of the
        collector: no 500, no traceback in its output, however many there are."""
        served = await serve()
        for abandon in ("reset", "half-close") * 5:
            reader, writer = await attacker_connection(served)
            writer.write(ingest_head(served.attacker, 10_000) + b"\x00" * 100)
            await writer.drain()

            async def reading() -> bool:
                return await served.metric("atrace_collector_inflight_requests") == 1

            await wait_until(reading, every=0.02)
            if abandon == "reset":
                writer.transport.abort()
            else:
                writer.write_eof()
                await closed_by_server(reader)
                writer.transport.abort()

            async def ended() -> bool:
                return await served.metric("atrace_collector_inflight_requests") == 0

            await wait_until(ended, every=0.02)
        async with victim_session() as victim:
            assert await served.healthz(victim) == 200
        metrics = await served.metrics()
        assert await served.count(ATTACKER) == 0
        assert "Traceback" not in served.output(), served.output()[-2000:]
        assert metrics.get('atrace_collector_errors_total{reason="internal"}', 0) == 0
        assert (
            metrics.get(
                'atrace_collector_requests_total{route="/v1/ingest",method="POST",status="500"}', 0
            )
            == 0
        )
        assert metrics['atrace_collector_errors_total{reason="client_gone"}'] == 10
        gone = [line for line in served.stderr_lines() if "went away" in line]
        assert len(gone) == 1, served.stderr_lines()  # once a minute, not once a request
