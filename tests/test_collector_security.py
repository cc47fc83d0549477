"""The collector against hostile or broken clients: keys, projects, limits, bad bodies, outages."""

# The fixture is imported from its helper module, so each test parameter redefines that name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import signal
import urllib.parse
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import msgpack
import orjson
import pytest

from _collector import (
    CollectorServer,
    atrace_command,
    child_env,
    collector_server,  # noqa: F401
    make_rows,
    native_body,
    raw_request,
    wait_until,
)
from _pg import PgServer
from _proxy import TCPProxy
from atrace._emit.ids import new_trace_id
from atrace._records import COLUMNS
from atrace.collector._auth import KeyStore, parse_key, revoke_key
from atrace.collector._limits import Limits
from atrace.errors import AuthError

MiB = 1024 * 1024


async def _nothing_written(server: CollectorServer) -> None:
    assert await server.count() == 0
    assert await server.fetch("SELECT * FROM {schema}.batches") == []


def _host_port(server: CollectorServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


# ---- keys ---------------------------------------------------------------------------------------


class TestKeys:
    @pytest.mark.parametrize("path", ["/v1/ingest", "/v1/traces", "/v1/logs"])
    async def test_missing_key(self, collector_server: CollectorServer, path: str) -> None:
        """A write without a key is 401 with a JSON error and a Bearer challenge; nothing stored."""
        _, body = native_body(make_rows(3))
        resp = await collector_server.post(path, body, None)
        assert resp.status == 401
        assert "missing API key" in resp.json()["error"]
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        await _nothing_written(collector_server)

    @pytest.mark.parametrize("path", ["/v1/search", "/v1/stats", "/v1/errors", "/v1/tail"])
    async def test_missing_key_on_reads(self, collector_server: CollectorServer, path: str) -> None:
        """Every query endpoint needs a key too."""
        resp = await collector_server.request("GET", path)
        assert resp.status == 401
        assert "error" in resp.json()

    async def test_wrong_keys(self, collector_server: CollectorServer) -> None:
        """Malformed keys, a wrong secret for a real key id, an unknown id, and a non-Bearer
        scheme are all 401; nothing is stored."""
        key = await collector_server.create_key("alpha")
        parsed = parse_key(key)
        assert parsed is not None
        key_id, secret = parsed
        wrong_secret = f"atk_{key_id}_{'A' * len(secret)}"
        unknown_id = f"atk_{'0' * 16}_{secret}"
        _, body = native_body(make_rows(3))
        for headers in (
            {"Authorization": "Bearer nonsense"},
            {"Authorization": f"Bearer {wrong_secret}"},
            {"Authorization": f"Bearer {unknown_id}"},
            {"Authorization": f"Basic {key}"},
            {"Authorization": f"Bearer {key}x"},
            {"X-API-Key": key[:-1]},
            {"X-API-Key": "' OR 1=1 --"},
        ):
            resp = await collector_server.post("/v1/ingest", body, None, headers=headers)
            assert resp.status == 401, (headers, resp)
            assert "error" in resp.json()
        await _nothing_written(collector_server)
        assert (await collector_server.post("/v1/ingest", body, key)).status == 200

    async def test_only_a_hash_is_stored(self, collector_server: CollectorServer) -> None:
        """The key table holds the SHA-256 of the secret, never the secret itself."""
        key = await collector_server.create_key("alpha", "ci")
        parsed = parse_key(key)
        assert parsed is not None
        key_id, secret = parsed
        (row,) = await collector_server.fetch("SELECT * FROM {schema}.api_keys")
        assert row["key_id"] == key_id and row["project"] == "alpha" and row["name"] == "ci"
        assert bytes(row["secret_sha"]) == hashlib.sha256(secret.encode()).digest()
        assert all(secret not in str(value) for value in row.values())

    async def test_revoked_in_process_stops_at_once(
        self, collector_server: CollectorServer
    ) -> None:
        """A key revoked through the app's key store stops working on the next request, even
        though it was cached."""
        key = await collector_server.create_key("alpha")
        _, body = native_body(make_rows(2))
        assert (await collector_server.post("/v1/ingest", body, key)).status == 200
        assert collector_server.app is not None
        from atrace.collector._app import KEYS

        conn = await asyncpg.connect(collector_server.db_dsn)
        try:
            assert await collector_server.app[KEYS].revoke(conn, key) is True
        finally:
            await conn.close()
        _, other = native_body(make_rows(2))
        resp = await collector_server.post("/v1/ingest", other, key)
        assert resp.status == 401
        assert "revoked" in resp.json()["error"]
        assert await collector_server.count() == 2

    async def test_revoked_elsewhere_without_cache(self, pg_schema: tuple[str, str]) -> None:
        """With key caching off, a key revoked by another process is refused on the next
        request."""
        dsn, schema = pg_schema
        async with CollectorServer(dsn, schema, limits=Limits(key_cache_ttl=0)) as server:
            key = await server.create_key("alpha")
            _, body = native_body(make_rows(2))
            assert (await server.post("/v1/ingest", body, key)).status == 200
            conn = await asyncpg.connect(dsn)
            try:
                assert await revoke_key(conn, schema, key.split("_")[1]) is True
            finally:
                await conn.close()
            assert (await server.post("/v1/ingest", body, key)).status == 401

    async def test_cache_bound(self, collector_server: CollectorServer) -> None:
        """A cached key revoked elsewhere is trusted at most ``ttl`` seconds more (fake clock)."""
        key = await collector_server.create_key("alpha")
        now = [1000.0]
        store = KeyStore(collector_server.schema, ttl=5.0, clock=lambda: now[0])
        pool = await asyncpg.create_pool(collector_server.db_dsn, min_size=0, max_size=1)
        try:
            assert await store.check(pool, key) == "alpha"
            async with pool.acquire() as conn:
                assert await revoke_key(conn, collector_server.schema, key) is True
            now[0] += 4.9
            assert await store.check(pool, key) == "alpha"  # still within the bound
            now[0] += 0.2
            with pytest.raises(AuthError):
                await store.check(pool, key)
        finally:
            await pool.close()

    async def test_concurrent_checks_of_one_key_share_one_lookup(
        self, collector_server: CollectorServer
    ) -> None:
        """Many requests (or open live tails) checking one key when its cached answer expires
        ask PostgreSQL once, through one connection."""
        key = await collector_server.create_key("alpha")
        store = KeyStore(collector_server.schema, ttl=5.0)
        pool = await asyncpg.create_pool(collector_server.db_dsn, min_size=0, max_size=4)
        acquired = 0

        class Counting:  # the real pool, its connections counted as they are taken
            def acquire(self, *args: Any, **kwargs: Any) -> Any:
                nonlocal acquired
                acquired += 1
                return pool.acquire(*args, **kwargs)

        try:
            found = await asyncio.gather(*(store.check(Counting(), key) for _ in range(200)))
            assert found == ["alpha"] * 200
            assert acquired == 1
            wrong = key[:-2] + ("zz" if not key.endswith("zz") else "yy")
            with pytest.raises(AuthError):
                await asyncio.gather(*(store.check(Counting(), wrong) for _ in range(50)))
            assert acquired == 1  # a wrong secret: the same id's answer, from the cache
        finally:
            await pool.close()


# ---- projects -----------------------------------------------------------------------------------


class TestProjectIsolation:
    async def test_writes_carry_the_keys_project(self, collector_server: CollectorServer) -> None:
        """Two projects' keys write rows tagged with their own project; the same batch id under
        two projects is two batches, and each still deduplicates its own."""
        alpha = await collector_server.create_key("alpha")
        beta = await collector_server.create_key("beta")
        batch_id = uuid.uuid4()
        _, body_a = native_body(make_rows(4, service="a-svc"), batch_id=batch_id)
        _, body_b = native_body(make_rows(6, service="b-svc"), batch_id=batch_id)
        assert (await collector_server.post("/v1/ingest", body_a, alpha)).status == 200
        assert (await collector_server.post("/v1/ingest", body_b, beta)).status == 200
        replay = await collector_server.post("/v1/ingest", body_b, alpha)
        assert replay.json()["duplicate"] is True  # alpha already has this batch id
        assert {r["service"] for r in await collector_server.records("alpha")} == {"a-svc"}
        assert {r["service"] for r in await collector_server.records("beta")} == {"b-svc"}
        assert await collector_server.count() == 10

    async def test_body_cannot_choose_a_project(self, collector_server: CollectorServer) -> None:
        """A body naming a ``project`` (as a column or a field) is refused; nothing written."""
        key = await collector_server.create_key("alpha")
        rows = make_rows(2)
        doc = {
            "v": 1,
            "batch": uuid.uuid4().bytes,
            "columns": [*COLUMNS, "project"],
            "rows": [[*r, "beta"] for r in rows],
        }
        resp = await collector_server.post("/v1/ingest", msgpack.packb(doc), key)
        assert resp.status == 400
        assert "project" in resp.json()["error"]
        doc = {"v": 1, "batch": uuid.uuid4().bytes, "columns": COLUMNS, "rows": rows}
        resp = await collector_server.post(
            "/v1/ingest", msgpack.packb({**doc, "project": "beta"}), key
        )
        assert resp.status == 400
        await _nothing_written(collector_server)

    async def test_queries_never_cross_projects(self, collector_server: CollectorServer) -> None:
        """A key of project A sees none of B's rows through any query endpoint."""
        alpha = await collector_server.create_key("alpha")
        beta = await collector_server.create_key("beta")
        trace_a, trace_b = new_trace_id(), new_trace_id()
        rows_a = _marked_rows(trace_a, "alphasvc", "alphaword")
        rows_b = _marked_rows(trace_b, "betasvc", "betaword")
        _, body_a = native_body(rows_a)
        _, body_b = native_body(rows_b)
        assert (await collector_server.post("/v1/ingest", body_a, alpha)).status == 200
        assert (await collector_server.post("/v1/ingest", body_b, beta)).status == 200

        own = await collector_server.request("GET", f"/v1/traces/{trace_a}", key=alpha)
        assert own.status == 200 and b"alphaword" in own.body
        other = await collector_server.request("GET", f"/v1/traces/{trace_b}", key=alpha)
        assert other.status == 404
        assert b"betaword" not in other.body
        for path in (
            "/v1/search",
            "/v1/search?q=betaword",
            f"/v1/search?trace_id={trace_b}",
            "/v1/search?service=betasvc",
            "/v1/stats",
            "/v1/stats?service=betasvc",
            "/v1/errors",
        ):
            resp = await collector_server.request("GET", path, key=alpha)
            assert resp.status == 200, (path, resp)
            for marker in (b"betaword", b"betasvc", trace_b.encode()):
                assert marker not in resp.body, (path, marker)
        # The positive control: the same endpoints do show A's own rows.
        mine = await collector_server.request("GET", "/v1/search?q=alphaword", key=alpha)
        assert b"alphaword" in mine.body
        errors = await collector_server.request("GET", "/v1/errors", key=alpha)
        assert b"alphaword" in errors.body
        theirs = await collector_server.request("GET", "/v1/search?q=betaword", key=beta)
        assert b"betaword" in theirs.body

    async def test_tail_never_crosses_projects(self, collector_server: CollectorServer) -> None:
        """A live tail with A's key receives A's new rows and never B's."""
        alpha = await collector_server.create_key("alpha")
        beta = await collector_server.create_key("beta")
        assert collector_server.session is not None
        async with collector_server.session.get(
            f"{collector_server.url}/v1/tail", headers={"X-API-Key": alpha}
        ) as stream:
            assert stream.status == 200
            assert (await stream.content.readline()).startswith(b": tail started")
            _, body_b = native_body(_marked_rows(new_trace_id(), "betasvc", "betaword"))
            _, body_a = native_body(_marked_rows(new_trace_id(), "alphasvc", "alphaword"))
            assert (await collector_server.post("/v1/ingest", body_b, beta)).status == 200
            assert (await collector_server.post("/v1/ingest", body_a, alpha)).status == 200
            seen = b""
            while b"alphaword" not in seen:
                seen += await asyncio.wait_for(stream.content.readline(), 10)
            assert b"betaword" not in seen and b"betasvc" not in seen


def _marked_rows(trace_id: str, service: str, word: str) -> list[Any]:
    rows = make_rows(8, service=service, trace_id=trace_id)
    # Each row says its word; the failed ones (level 40) make an error group.
    return [
        (*r[:13], f"{word} {i}", *r[14:16], f"{word} failed", *r[17:]) for i, r in enumerate(rows)
    ]


# ---- size limits --------------------------------------------------------------------------------

_SMALL = Limits(max_body=1 * MiB, max_inflated=4 * MiB, max_records=100)


async def _endless(chunk: bytes, total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield chunk
        sent += len(chunk)


class TestSizeLimits:
    async def test_declared_length_refused_before_reading(self, pg_schema: tuple[str, str]) -> None:
        """A Content-Length over max_body is answered 413 before the body is read."""
        dsn, schema = pg_schema
        async with CollectorServer(dsn, schema, limits=_SMALL) as server:
            key = await server.create_key("alpha")
            head = (
                f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Length: {8 << 30}\r\n\r\n"
            ).encode()
            gigabytes = _endless(b"\0" * 65536, 8 << 30)
            status, raw, sent = await raw_request(*_host_port(server), head, gigabytes)
            assert status == 413, raw
            assert b"exceeds" in raw
            assert sent < 64 * MiB  # answered long before the 8 GiB were sent
            await _nothing_written(server)

    async def test_chunked_body_cut_off(self, pg_schema: tuple[str, str]) -> None:
        """A chunked body (no length) is refused with 413 as soon as it passes max_body."""
        dsn, schema = pg_schema
        async with CollectorServer(dsn, schema, limits=_SMALL) as server:
            key = await server.create_key("alpha")
            head = (
                f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
            piece = b"\0" * 65536
            framed = b"%x\r\n" % len(piece) + piece + b"\r\n"
            status, raw, sent = await raw_request(
                *_host_port(server), head, _endless(framed, 8 << 30)
            )
            assert status == 413, raw
            assert sent < 64 * MiB
            await _nothing_written(server)

    async def test_too_many_records(self, pg_schema: tuple[str, str]) -> None:
        """More records in one request than max_records is 413; nothing written."""
        dsn, schema = pg_schema
        async with CollectorServer(dsn, schema, limits=_SMALL) as server:
            key = await server.create_key("alpha")
            _, body = native_body(make_rows(101))
            resp = await server.post("/v1/ingest", body, key)
            assert resp.status == 413
            assert "100" in resp.json()["error"]
            await _nothing_written(server)
            _, body = native_body(make_rows(100))
            assert (await server.post("/v1/ingest", body, key)).status == 200

    async def test_gzip_bomb_in_process(self, pg_schema: tuple[str, str]) -> None:
        """A body inflating past max_inflated is refused with 413 and nothing written."""
        dsn, schema = pg_schema
        async with CollectorServer(dsn, schema, limits=_SMALL) as server:
            key = await server.create_key("alpha")
            bomb = gzip.compress(bytes(64 * MiB), 6)
            assert len(bomb) < _SMALL.max_body
            resp = await server.post("/v1/ingest", bomb, key, headers={"Content-Encoding": "gzip"})
            assert resp.status == 413
            assert "inflates" in resp.json()["error"]
            await _nothing_written(server)
            assert server.metrics.value("errors", reason="too_large") == 1

    async def test_gzip_bomb_memory(self, pg_schema: tuple[str, str]) -> None:
        """1 GiB of zeros gzipped to ~1 MB is refused by `atrace serve` with 413, and the
        server's peak RSS grows by a small fraction of that gigabyte."""
        dsn, schema = pg_schema
        bomb = await asyncio.to_thread(_gzip_zeros, 1 << 30)
        assert len(bomb) < 2 * MiB
        proc = await asyncio.create_subprocess_exec(
            *atrace_command(), "serve", "--dsn", dsn, "--schema", schema, "--port", "0",
            "--max-body", str(4 * MiB), "--max-inflated", str(16 * MiB),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(),
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert "listening on" in line, line + (await proc.stderr.read()).decode()
            url = line.split()[4]
            key = await CollectorServer(dsn, schema).create_key("alpha")
            headers = {"Authorization": f"Bearer {key}", "Content-Encoding": "gzip"}
            async with aiohttp.ClientSession() as session:
                # Warm up: the first request imports and allocates what any request needs.
                _, body = native_body(make_rows(10))
                async with session.post(
                    f"{url}/v1/ingest", data=gzip.compress(body), headers=headers
                ) as r:
                    assert r.status == 200
                before = _peak_rss(proc.pid)
                async with session.post(f"{url}/v1/ingest", data=bomb, headers=headers) as r:
                    assert r.status == 413
                    assert "inflates" in (await r.json())["error"]
                after = _peak_rss(proc.pid)
            # The inflated gigabyte never existed: the peak grew by well under a tenth of it.
            assert after - before < 100 * MiB, (before, after)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def test_gzip_bomb_under_aiohttp_inflation(self, pg_schema: tuple[str, str]) -> None:
        """Run by a plain AppRunner (aiohttp inflating the body itself), a gzip bomb is still
        refused at max_inflated, and an honest gzip body still stored."""
        from aiohttp import web

        from atrace.collector._app import make_app

        dsn, schema = pg_schema
        runner = web.AppRunner(make_app(dsn, schema=schema, limits=_SMALL))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            helper = CollectorServer(dsn, schema)
            key = await helper.create_key("alpha")
            headers = {"Authorization": f"Bearer {key}", "Content-Encoding": "gzip"}
            bomb = gzip.compress(bytes(64 * MiB), 6)
            _, body = native_body(make_rows(5))
            async with aiohttp.ClientSession() as session:
                url = f"http://{host}:{port}/v1/ingest"
                async with session.post(url, data=bomb, headers=headers) as resp:
                    assert resp.status == 413
                async with session.post(url, data=gzip.compress(body), headers=headers) as resp:
                    assert resp.status == 200
            assert await helper.count() == 5
        finally:
            await runner.cleanup()

    async def test_broken_gzip(self, collector_server: CollectorServer) -> None:
        """Truncated gzip, or a plain body labelled gzip, is 400; another encoding is 415."""
        key = await collector_server.create_key("alpha")
        _, body = native_body(make_rows(5))
        packed = gzip.compress(body)
        for data in (packed[: len(packed) // 2], body, b""):
            resp = await collector_server.post(
                "/v1/ingest", data, key, headers={"Content-Encoding": "gzip"}
            )
            assert resp.status == 400, resp
            assert "gzip" in resp.json()["error"]
        resp = await collector_server.post(
            "/v1/ingest", body, key, headers={"Content-Encoding": "br"}
        )
        assert resp.status == 415
        assert "error" in resp.json()
        await _nothing_written(collector_server)

    async def test_gzip_members(self, collector_server: CollectorServer) -> None:
        """A gzip body of several members (as `cat a.gz b.gz` makes) inflates whole."""
        key = await collector_server.create_key("alpha")
        _, body = native_body(make_rows(5))
        half = len(body) // 2
        data = gzip.compress(body[:half]) + gzip.compress(body[half:])
        resp = await collector_server.post(
            "/v1/ingest", data, key, headers={"Content-Encoding": "gzip"}
        )
        assert resp.status == 200, resp
        assert await collector_server.count() == 5


def _gzip_zeros(n: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MiB)
    parts = [packer.compress(block) for _ in range(n // MiB)]
    parts.append(packer.flush())
    return b"".join(parts)


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


# ---- malformed bodies ---------------------------------------------------------------------------


class TestMalformed:
    async def test_truncated_msgpack(self, collector_server: CollectorServer) -> None:
        """A truncated msgpack batch is 400 with a JSON error; nothing written."""
        key = await collector_server.create_key("alpha")
        _, body = native_body(make_rows(20))
        resp = await collector_server.post("/v1/ingest", body[: len(body) - 7], key)
        assert resp.status == 400
        assert "msgpack" in resp.json()["error"]
        await _nothing_written(collector_server)

    async def test_json_wrong_types(self, collector_server: CollectorServer) -> None:
        """A JSON batch with a wrongly typed value in one row is refused whole (400)."""
        key = await collector_server.create_key("alpha")
        rows = [list(r) for r in make_rows(10)]
        for r in rows:
            for column in ("attrs", "links", "otlp"):
                raw = r[COLUMNS.index(column)]
                r[COLUMNS.index(column)] = None if raw is None else orjson.loads(raw)
        rows[6][COLUMNS.index("ts")] = "yesterday"
        doc = {"v": 1, "batch": uuid.uuid4().hex, "columns": COLUMNS, "rows": rows}
        resp = await collector_server.post(
            "/v1/ingest", orjson.dumps(doc), key, content_type="application/json"
        )
        assert resp.status == 400
        assert "rows[6]" in resp.json()["error"]
        await _nothing_written(collector_server)

    async def test_invalid_protobuf(self, collector_server: CollectorServer) -> None:
        """Bytes that are not an OTLP protobuf message are 400 on both OTLP endpoints."""
        key = await collector_server.create_key("alpha")
        for path in ("/v1/traces", "/v1/logs"):
            resp = await collector_server.post(
                path, b"\x0a\xff\xff\xff\xff\x0f garbage", key,
                content_type="application/x-protobuf",
            )  # fmt: skip
            assert resp.status == 400, resp
            assert "error" in resp.json()
        await _nothing_written(collector_server)

    async def test_invalid_otlp_json(self, collector_server: CollectorServer) -> None:
        """OTLP/JSON with a wrongly typed field is 400."""
        key = await collector_server.create_key("alpha")
        doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 12, "name": []}]}]}]}
        resp = await collector_server.post(
            "/v1/traces", orjson.dumps(doc), key, content_type="application/json"
        )
        assert resp.status == 400
        await _nothing_written(collector_server)

    async def test_unsupported_content_types(self, collector_server: CollectorServer) -> None:
        """Content types the endpoints do not speak are 415."""
        key = await collector_server.create_key("alpha")
        _, body = native_body(make_rows(2))
        for path, content_type in (
            ("/v1/ingest", "text/plain"),
            ("/v1/traces", "application/msgpack"),
            ("/v1/logs", "text/xml"),
        ):
            resp = await collector_server.post(path, body, key, content_type=content_type)
            assert resp.status == 415, (path, resp)
            assert "error" in resp.json()
        await _nothing_written(collector_server)


# ---- hostile values -----------------------------------------------------------------------------

_SQLISH = (
    "'; DROP TABLE records; --",
    '" OR "1"="1',
    "$1); DELETE FROM batches WHERE ($1",
    "\\x00\\'; COPY records TO '/tmp/x'; --",
    "'||pg_sleep(10)||'",
)
_TEXT_COLUMNS = [
    c
    for c in COLUMNS[8:]
    if c not in ("pid", "attrs", "span_kind", "trace_flags", "links", "otlp", "resource_id")
]


class TestHostileValues:
    async def test_sql_in_every_field_stored_verbatim(
        self, collector_server: CollectorServer
    ) -> None:
        """SQL-looking text in every text column and in attribute keys and values is stored
        exactly as sent."""
        key = await collector_server.create_key("alpha")
        text_columns = [COLUMNS.index(c) for c in _TEXT_COLUMNS]
        rows = []
        for text, row in zip(_SQLISH, make_rows(len(_SQLISH)), strict=True):
            values = list(row)
            for i in text_columns:
                values[i] = text
            values[COLUMNS.index("attrs")] = orjson.dumps({text: text, "nested": {text: [text]}})
            link = {"trace_id": "ab" * 16, "span_id": "cd" * 8, "attrs": {text: text}}
            values[COLUMNS.index("links")] = orjson.dumps([link])
            values[COLUMNS.index("otlp")] = orjson.dumps({"severity_text": text})
            rows.append(tuple(values))
        for fmt in ("msgpack", "json"):
            _, body = native_body(rows, fmt)
            resp = await collector_server.post(
                "/v1/ingest", body, key, content_type=f"application/{fmt}"
            )
            assert resp.status == 200, resp
        records = await collector_server.records()
        assert len(records) == 2 * len(rows)
        for record in records:
            expected = record["service"]
            assert expected in _SQLISH
            for column in _TEXT_COLUMNS:
                assert record[column] == expected, column
            attrs = orjson.loads(record["attrs"])
            assert attrs == {expected: expected, "nested": {expected: [expected]}}
            (link,) = orjson.loads(record["links"])
            assert link["attrs"] == {expected: expected}
            assert orjson.loads(record["otlp"]) == {"severity_text": expected}
        # The schema is intact: the tables those strings name are still there.
        assert len(await collector_server.fetch("SELECT * FROM {schema}.batches")) == 2

    async def test_huge_attribute_keys(self, collector_server: CollectorServer) -> None:
        """10,000-character attribute keys are accepted; the row is stored with the key cut to
        a bounded length and the value intact."""
        key = await collector_server.create_key("alpha")
        long_key = "k" * 10_000
        row = make_rows(1)[0]
        row = (*row[:14], orjson.dumps({long_key: "v", "short": 1}), *row[15:])
        _, body = native_body([row])
        resp = await collector_server.post("/v1/ingest", body, key)
        assert resp.status == 200, resp
        (record,) = await collector_server.records()
        attrs = orjson.loads(record["attrs"])
        assert attrs["short"] == 1
        (cut,) = [k for k in attrs if k != "short"]
        assert long_key.startswith(cut) and 0 < len(cut) < 10_000
        assert attrs[cut] == "v"

    async def test_nul_characters(self, collector_server: CollectorServer) -> None:
        """Text PostgreSQL cannot store (NUL characters) is sanitised, not refused."""
        key = await collector_server.create_key("alpha")
        row = make_rows(1)[0]
        row = (*row[:13], "bad\x00text end", orjson.dumps({"a": "x\x00y"}), *row[15:])
        for fmt in ("msgpack", "json"):
            _, body = native_body([row], fmt)
            resp = await collector_server.post(
                "/v1/ingest", body, key, content_type=f"application/{fmt}"
            )
            assert resp.status == 200, resp
        records = await collector_server.records()
        assert len(records) == 2
        for record in records:
            assert record["message"] == "bad\ufffdtext end"
            assert "\x00" not in orjson.loads(record["attrs"])["a"]


# ---- overload and outage ------------------------------------------------------------------------


class TestBackpressure:
    async def test_in_flight_bound(self, pg_server: PgServer, pg_schema: tuple[str, str]) -> None:
        """Past max_inflight_requests a request is refused at once with 503 and Retry-After;
        the one in flight still completes."""
        dsn, schema = pg_schema
        limits = Limits(max_inflight_requests=1)
        async with (
            TCPProxy(pg_server.host, pg_server.port) as proxy,
            CollectorServer(dsn, schema, app_dsn=proxy.url_for(dsn), limits=limits) as server,
        ):
            key = await server.create_key("alpha")
            _, warm = native_body(make_rows(2))
            assert (await server.post("/v1/ingest", warm, key)).status == 200
            proxy.pause()
            _, held = native_body(make_rows(10))
            first = asyncio.ensure_future(server.post("/v1/ingest", held, key))
            assert server.app is not None
            from atrace.collector._ingest import INGEST

            admission = server.app[INGEST].admission
            await wait_until(lambda: admission.records == 10)
            _, body = native_body(make_rows(3))
            refused = await server.post("/v1/ingest", body, key)
            proxy.resume()
            assert refused.status == 503
            assert refused.headers["Retry-After"] == "1"
            assert "in flight" in refused.json()["error"]
            assert (await first).status == 200
            assert (await server.post("/v1/ingest", body, key)).status == 200
            assert await server.count() == 15

    async def test_slow_body_times_out(self, pg_schema: tuple[str, str]) -> None:
        """A client that stops sending its body is answered 408 after body_timeout."""
        dsn, schema = pg_schema
        async with CollectorServer(dsn, schema, limits=Limits(body_timeout=0.3)) as server:
            key = await server.create_key("alpha")
            head = (
                f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
                "Content-Length: 1000\r\n\r\n"
            ).encode()

            async def stall() -> AsyncIterator[bytes]:
                yield b"\x85"
                await asyncio.sleep(30)

            status, raw, _ = await raw_request(*_host_port(server), head, stall())
            assert status == 408, raw
            await _nothing_written(server)


class TestDatabaseOutage:
    async def test_unreachable_is_503(
        self, pg_server: PgServer, pg_schema: tuple[str, str]
    ) -> None:
        """With PostgreSQL cut off, ingest and /healthz answer 503 (with Retry-After on ingest),
        an uncached key is 503 rather than 401, and all works again once it is back."""
        dsn, schema = pg_schema
        async with (
            TCPProxy(pg_server.host, pg_server.port) as proxy,
            CollectorServer(dsn, schema, app_dsn=proxy.url_for(dsn)) as server,
        ):
            key = await server.create_key("alpha")
            fresh = await server.create_key("alpha")
            _, body = native_body(make_rows(5))
            assert (await server.post("/v1/ingest", body, key)).status == 200
            proxy.cut()
            _, body2 = native_body(make_rows(7))
            resp = await server.post("/v1/ingest", body2, key)
            assert resp.status == 503, resp
            assert int(resp.headers["Retry-After"]) >= 1
            assert "database" in resp.json()["error"]
            unknown = await server.post("/v1/ingest", body2, fresh)
            assert unknown.status == 503
            health = await server.request("GET", "/healthz")
            assert health.status == 503
            assert health.json()["status"] == "unavailable"
            proxy.restore()
            assert (await server.post("/v1/ingest", body2, key)).status == 200
            assert (await server.post("/v1/ingest", body2, fresh)).json()["duplicate"]
            assert (await server.request("GET", "/healthz")).status == 200
            assert await server.count() == 12
            assert server.metrics.value("errors", reason="unavailable_database") >= 2

    async def test_lost_commit_answer_then_retry(
        self, pg_server: PgServer, pg_schema: tuple[str, str]
    ) -> None:
        """A batch whose COMMIT reached PostgreSQL but whose answer was lost is 503 to the
        client; its retry is answered as a duplicate and the rows are stored once."""
        dsn, schema = pg_schema
        async with (
            TCPProxy(pg_server.host, pg_server.port) as proxy,
            CollectorServer(dsn, schema, app_dsn=proxy.url_for(dsn)) as server,
        ):
            key = await server.create_key("alpha")
            _, warm = native_body(make_rows(1))
            assert (await server.post("/v1/ingest", warm, key)).status == 200
            _, body = native_body(make_rows(40))
            proxy.cut_after_commit()
            lost = await server.post("/v1/ingest", body, key)
            assert lost.status == 503
            assert proxy.commits_cut == 1
            retry = await server.post("/v1/ingest", body, key)
            assert retry.status == 200
            assert retry.json()["duplicate"] is True
            assert await server.count() == 41


# ---- error answers ------------------------------------------------------------------------------


def _with_password(dsn: str) -> tuple[str, str]:
    """``dsn`` with a password (the server trusts local connections, so any one works), and it."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password:
        return dsn, parts.password
    password = "pw-" + uuid.uuid4().hex
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:{password}@{host}").geturl(), password


class TestErrorAnswers:
    async def test_query_routes_answer_503_while_the_database_is_cut_off(
        self, pg_server: PgServer, pg_schema: tuple[str, str]
    ) -> None:
        """A read request for a key still trusted from memory is 503 with Retry-After while
        PostgreSQL is cut off, counted as unavailable_database, and 200 once it is back."""
        dsn, schema = pg_schema
        async with (
            TCPProxy(pg_server.host, pg_server.port) as proxy,
            CollectorServer(dsn, schema, app_dsn=proxy.url_for(dsn)) as server,
        ):
            key = await server.create_key("alpha")
            assert (await server.request("GET", "/v1/search", key=key)).status == 200
            proxy.cut()
            cut = await server.request("GET", "/v1/search", key=key)
            proxy.restore()
            assert cut.status == 503, cut
            assert cut.headers["Retry-After"] == "1"
            assert cut.json()["error"].startswith("database unavailable: ")
            assert server.metrics.value("errors", reason="unavailable_database") == 1
            assert (await server.request("GET", "/v1/search", key=key)).status == 200

    async def test_no_secret_in_any_answer_or_log_line(
        self, pg_schema: tuple[str, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """401, 400 and 500 answers and the log lines of a failure name the fault, never the
        API key or the password of the collector's DSN."""
        dsn, schema = pg_schema
        app_dsn, password = _with_password(dsn)
        async with CollectorServer(dsn, schema, app_dsn=app_dsn) as server:
            key = await server.create_key("alpha")
            forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
            answers = [
                await server.request("GET", "/v1/search", key=forged),
                await server.request("GET", "/v1/search", headers={"X-API-Key": f"x{key}"}),
                await server.request("GET", "/v1/search?limit=0", key=key),
            ]
            # A table gone from under the collector: a failure retrying cannot mend.
            await server.fetch("ALTER TABLE {schema}.records RENAME TO records_away")
            with caplog.at_level(logging.INFO):
                try:
                    answers.append(await server.request("GET", "/v1/search", key=key))
                finally:
                    await server.fetch("ALTER TABLE {schema}.records_away RENAME TO records")
        assert [a.status for a in answers] == [401, 401, 400, 500]
        assert answers[2].json()["field"] == "limit"
        assert answers[3].json() == {"error": "internal error"}
        assert "UndefinedTableError" in caplog.text  # the failure was logged, with its cause
        secret = key.rpartition("_")[2]
        for text in [caplog.text, *(a.body.decode() for a in answers)]:
            assert secret not in text and password not in text
