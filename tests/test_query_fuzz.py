"""Hostile query parameters at every read endpoint of a real collector: a 400 at worst, never 5xx.

The collector runs on 127.0.0.1 over the session's PostgreSQL, with records stored so that the
statements really run. Each request's query string is written by hand (percent-escapes and all)
and sent as is. Every answer must be below 500, every 400 a one-line JSON reason that quotes at
most about 100 characters of the value and no NUL, and nothing may be logged with a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from yarl import URL

from _collector import CollectorServer, make_rows, native_body
from atrace.collector._limits import Limits

# The parameters each endpoint knows; the tail takes the search's.
_SEARCH = ("service", "level", "kind", "since", "until", "q", "trace_id", "limit", "cursor")
PARAMS: dict[str, tuple[str, ...]] = {
    "/v1/search": (*_SEARCH, "attr.user", "attr.k"),
    "/v1/tail": (*_SEARCH, "attr.user"),
    "/v1/stats": ("since", "until", "service", "interval", "durations"),
    "/v1/spans": ("since", "until", "service", "slow_ms", "errors", "limit"),
    "/v1/errors": ("since", "until", "service", "limit", "scan"),
}
TRACE = "/v1/traces/"
SEED = 20_240_601
GENERATED = 1_000
CONCURRENCY = 8
MAX_QUERY = 7000


@pytest_asyncio.fixture
async def collector_server(pg_schema: tuple[str, str]) -> AsyncIterator[CollectorServer]:
    """A started collector whose per-key rates and tail caps do not stand in the way: every
    request of the fuzz reaches the parameter parsing."""
    dsn, schema = pg_schema
    limits = Limits(
        query_rate=1e6,
        query_burst=100_000,
        max_queries_per_key=64,
        max_inflight_queries=64,
        max_tail_per_key=10_000,
        max_tail_subscribers=10_000,
    )
    server = CollectorServer(dsn, schema, limits=limits)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _b64(value: Any) -> str:
    # The standard library's JSON: orjson refuses integers beyond 64 bits, a cursor may not.
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# Values that once answered 500, as raw query strings (already percent-encoded).
KNOWN_BAD: list[str] = [
    "since=999999999w",
    "until=999999999w",
    "since=99999999999999999999",
    "since=-99999999999999999999",
    "since=" + "9" * 5000,
    "since=%C2%B2",
    "since=%D9%A1%D9%A2",
    "since=0001-01-01T00:00:00%2B23:00",
    "since=9999-12-31T23:59:59-23:59",
    "since=%FF%FE",
    "slow_ms=inf",
    "slow_ms=-inf",
    "slow_ms=nan",
    "slow_ms=1e309",
    "slow_ms=-5",
    "slow_ms=99999999999999999999",
    "level=%C2%B2",
    "level=99999999999999999999",
    "level=-1",
    "q=a%00b",
    "service=%00",
    "service=%ED%A0%80",
    "q=%FF%FE%FD",
    "interval=%00",
    "interval=" + "x" * 3000,
    "cursor=!!!",
    "cursor=%00",
    "cursor=" + _b64([10**30, "(1,1)"]),
    "cursor=" + _b64([1, "(99999999999,1)"]),
    "cursor=" + _b64([1, "(4294967296,1)"]),
    "cursor=" + _b64([1, "(1,99999)"]),
    "cursor=" + _b64({"a": 1, "b": 2}),
    "cursor=" + _b64([1.5, "(1,1)"]),
    "cursor=" + _b64([1, "(1,1)", 3]),
    "cursor=" + _b64(7),
    "limit=-1",
    "limit=0",
    "limit=99999999999999999999999",
    "limit=" + "9" * 5000,
    "limit=%D9%A5",
    "limit=1e3",
    "scan=-1",
    "scan=999999999999",
    "trace_id=%00" * 1,
    "trace_id=" + "%00" * 32,
    "trace_id=" + _q("\uff46" * 32),  # full-width f
    "trace_id=" + _q("İ" * 32),
    "trace_id=0af7651916cd43dd8448eb211c80319c%00",
    "trace_id=" + "a" * 4000,
    "attr.=x",
    "attr.%00=1",
    "attr.k=%00",
    "attr.k=" + _q('"\\u0000"'),
    "attr.k=" + _q('{"\\u0000": 1}'),
    "attr.k=1e400",
    "attr.k=" + "[" * 2000,
    "attr.k=99999999999999999999999999",
    "limit=1&limit=2",
    "since=1h&since=2h",
    "attr.k=1&attr.k=2",
    "errors=1&errors=0",
    "%00=1",
    "x" * 3000 + "=1",
    "since=1h&until=2h",
    "interval=1m&since=2261-01-01",
]


def _unicode(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        c = rng.choice((0x20, 0x80, 0x300, 0x600, 0x660, 0xFF10, 0x1F600, 0x10000, 0xE000))
        code = c + rng.randrange(0x100)
        out.append(chr(code))
    return "".join(out)


def _generated_value(rng: random.Random) -> str:
    """One hostile value, percent-encoded."""
    pick = rng.randrange(13)
    if pick == 0:  # printable ASCII noise
        return _q("".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(0, 40))))
    if pick == 1:  # unicode: combining marks, Arabic-Indic and full-width digits, emoji
        return _q(_unicode(rng, rng.randrange(1, 20)))
    if pick == 2:  # huge or negative integers
        return str(rng.choice((-1, 1)) * 10 ** rng.randrange(0, 60) + rng.randrange(-9, 10))
    if pick == 3:  # floats and their spellings
        return _q(
            rng.choice(("inf", "-inf", "nan", "NaN", "1e309", "-0", "1e-400", "0x10", "1_000"))
            + rng.choice(("", " ", "ms", "."))
        )
    if pick == 4:  # NULs somewhere
        text = "".join(chr(rng.randrange(48, 123)) for _ in range(rng.randrange(0, 10)))
        cut = rng.randrange(len(text) + 1)
        return _q(text[:cut]) + "%00" + _q(text[cut:])
    if pick == 5:  # raw percent-escapes, mostly invalid UTF-8
        return "".join(f"%{rng.randrange(256):02X}" for _ in range(rng.randrange(1, 12)))
    if pick == 6:  # relative ages, some far too long ago
        count = rng.choice((0, 1, 15, 10**9 - 1, 10 ** rng.randrange(1, 30)))
        return f"{count}{rng.choice('smhdwSMHDWxy')}"
    if pick == 7:  # ISO 8601 with odd fields
        year = rng.choice((0, 1, 1000, 1678, 1970, 2024, 2262, 9999))
        zone = rng.choice(("", "Z", "+23:59", "-23:59", "+99:99", "+00"))
        return _q(
            f"{year:04d}-{rng.randrange(0, 14):02d}-{rng.randrange(0, 33):02d}T23:59:59{zone}"
        )
    if pick == 8:  # cursor-shaped values
        ts = rng.choice((0, -1, 2**63, 10**30, 1.5, "x", None))
        rid = rng.choice(("(1,1)", "(0,0)", "(4294967296,1)", "(1,65536)", "", 5, "(-1,1)"))
        return _b64(rng.choice(([ts, rid], [ts], {"ts": ts}, ts)))
    if pick == 9:  # JSON for attribute filters
        return _q(
            rng.choice(('"\\u0000"', '{"a": "\\u0000"}', "[1,2", "1e400", "true", "null", '{"":1}'))
        )
    if pick == 10:  # hex, trace-id-like
        length = rng.choice((0, 31, 32, 33, 36, 64))
        return _q("".join(rng.choice("0123456789abcdefABCDEF-g ") for _ in range(length)))
    if pick == 11:  # long values
        return _q(rng.choice("ab9%\x00é") * rng.choice((101, 1025)))
    return ""  # empty


def _generated_key(rng: random.Random, known: tuple[str, ...]) -> str:
    pick = rng.randrange(10)
    if pick < 7:
        return rng.choice(known)
    if pick == 7:
        return "attr." + _q(_unicode(rng, rng.randrange(0, 4)))
    if pick == 8:
        return rng.choice(("attr.", "attr.%00", "%00", "unknown", "LIMIT", "attr"))
    return _q(_unicode(rng, rng.randrange(1, 6)))


def generated_queries(n: int, seed: int = SEED) -> list[dict[str, str]]:
    """``n`` cases, each a raw query string per endpoint (and a trace path segment)."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        case: dict[str, str] = {}
        for path, known in PARAMS.items():
            parts = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                key = _generated_key(rng, known)
                value = _generated_value(rng)
                parts.append(f"{key}={value}")
                if rng.random() < 0.1:  # the same key again
                    parts.append(f"{key}={_generated_value(rng)}")
            # Within aiohttp's 8190-byte request line: longer is refused before atrace sees it.
            while len("&".join(parts)) > MAX_QUERY and len(parts) > 1:
                parts.pop()
            case[path] = "&".join(parts)[:MAX_QUERY]
        case[TRACE] = _generated_value(rng) or "x"
        cases.append(case)
    return cases


async def _status(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"}
    async with session.get(URL(url, encoded=True), headers=headers) as resp:
        if resp.status == 200 and resp.content_type == "text/event-stream":
            return 200, b""  # a live tail that started: nothing more to read
        return resp.status, await resp.read()


def _check_answer(url: str, status: int, body: bytes) -> None:
    assert status < 500, f"{url[:300]} answered {status}: {body[:300]!r}"
    assert status in (200, 400, 404), f"{url[:300]} answered {status}: {body[:300]!r}"
    if status == 400:
        answer = orjson.loads(body)
        error, field = answer["error"], answer.get("field")
        assert "\n" not in error and "\x00" not in error, error
        # The parameter's name and about 100 characters of its value, then the reason.
        assert len(error) < 450, error
        assert field is None or ("\x00" not in field and len(field) <= 101), field


def _tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name.split(".")[0] in ("atrace", "aiohttp")
        and (r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage())
    ]


async def _seeded(server: CollectorServer) -> str:
    key = await server.create_key("alpha")
    _, body = native_body(make_rows(40))
    resp = await server.post("/v1/ingest", body, key, content_type="application/msgpack")
    assert resp.status < 300, resp
    return key


async def _run_all(server: CollectorServer, key: str, urls: list[str]) -> dict[int, int]:
    gate = asyncio.Semaphore(CONCURRENCY)
    counts: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:

        async def one(url: str) -> None:
            async with gate:
                status, body = await _status(session, url, key)
            _check_answer(url, status, body)
            counts[status] = counts.get(status, 0) + 1

        await asyncio.gather(*(one(u) for u in urls))
    return counts


class TestQueryFuzz:
    async def test_known_bad_values_are_400_at_every_endpoint(
        self, collector_server: CollectorServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Each value that once answered 500 answers 400 (or a result) at every read endpoint,
        with a one-line reason and no traceback in the log."""
        caplog.set_level(logging.WARNING)
        key = await _seeded(collector_server)
        base = collector_server.url
        urls = [f"{base}{path}?{query}" for path in PARAMS for query in KNOWN_BAD]
        urls += [f"{base}{TRACE}{query.partition('=')[2] or 'x'}" for query in KNOWN_BAD]
        counts = await _run_all(collector_server, key, urls)
        assert counts.get(400, 0) > len(urls) // 2, counts
        assert _tracebacks(caplog.records) == []

    async def test_known_bad_values_name_the_parameter(
        self, collector_server: CollectorServer
    ) -> None:
        """A refused value is named by its parameter, and a long one is quoted cut short."""
        key = await _seeded(collector_server)
        base = collector_server.url
        cases = {
            "/v1/spans?slow_ms=inf": "slow_ms",
            "/v1/search?since=999999999w": "since",
            "/v1/search?level=%C2%B2": "level",
            "/v1/search?q=a%00b": "q",
            "/v1/search?cursor=!!!": "cursor",
            "/v1/search?limit=1&limit=2": "limit",
            "/v1/errors?limit=-1": "limit",
            "/v1/search?attr.k=" + _q('"\\u0000"'): "attr.k",
            "/v1/stats?interval=" + "x" * 3000: "interval",
        }
        async with aiohttp.ClientSession() as session:
            for path, field in cases.items():
                status, body = await _status(session, base + path, key)
                assert status == 400, (path, body)
                answer = orjson.loads(body)
                assert answer["field"] == field, (path, answer)
                assert answer["error"].startswith(f"{field}="), answer
                assert "x" * 101 not in answer["error"], answer

    async def test_generated_values_never_answer_5xx(
        self, collector_server: CollectorServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A thousand generated queries per endpoint (fixed seed) never answer 5xx nor log a
        traceback."""
        caplog.set_level(logging.WARNING)
        key = await _seeded(collector_server)
        base = collector_server.url
        urls = []
        for case in generated_queries(GENERATED):
            urls += [f"{base}{path}?{case[path]}" for path in PARAMS]
            urls.append(f"{base}{TRACE}{case[TRACE]}")
        counts = await _run_all(collector_server, key, urls)
        assert sum(counts.values()) == GENERATED * (len(PARAMS) + 1)
        assert counts.get(400, 0) > GENERATED, counts
        assert _tracebacks(caplog.records) == []
