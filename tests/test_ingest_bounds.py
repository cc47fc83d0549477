"""Per-record bounds on every ingest path: attribute size, nesting and timestamps.

Each test runs on the six ways a record arrives: ``/v1/ingest`` (msgpack, JSON), ``/v1/traces``
and ``/v1/logs`` (OTLP protobuf, OTLP JSON), against a real collector and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import asyncpg
import orjson
import pytest

from _collector import CollectorServer, collector_server, native_body
from atrace._formats.bounds import TOO_DEEP
from atrace._postgres.schema import ensure_partitions, partition_name
from atrace.collector._ingest import INGEST

__all__ = ("collector_server",)

PATHS = [
    ("ingest", "msgpack"),
    ("ingest", "json"),
    ("traces", "protobuf"),
    ("traces", "json"),
    ("logs", "protobuf"),
    ("logs", "json"),
]
_IDS = [f"{p}-{f}" for p, f in PATHS]
_DAY_NS = 86_400 * 10**9
_MEDIA = {"protobuf": "application/x-protobuf", "json": "application/json"}


def _any_json(value: Any) -> str:
    """An OTLP/JSON AnyValue for a value built of lists, strings and ints (as text, any depth)."""
    if isinstance(value, _Deep):
        head = '{"arrayValue":{"values":[' * value.depth
        return head + '{"intValue":"1"}' + "]}}" * value.depth
    if isinstance(value, list):
        return '{"arrayValue":{"values":[' + ",".join(map(_any_json, value)) + "]}}"
    if isinstance(value, str):
        return orjson.dumps({"stringValue": value}).decode()
    return f'{{"intValue":"{value}"}}'


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _any_pb(value: Any) -> bytes:
    """An AnyValue in protobuf, written by hand so that any depth can be sent."""
    if isinstance(value, _Deep):
        out = _varint(3 << 3) + _varint(1)  # int_value: 1
        for _ in range(value.depth):
            out = _field(5, _field(1, out))  # array_value { values: [out] }
        return out
    if isinstance(value, list):
        return _field(5, b"".join(_field(1, _any_pb(v)) for v in value))
    if isinstance(value, str):
        return _field(1, value.encode())
    return _varint(3 << 3) + _varint(value)


class _Deep:
    """A value of ``depth`` nested arrays around the integer 1."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def json_bytes(self) -> bytes:
        return b"[" * self.depth + b"1" + b"]" * self.depth


def _attrs_json(attrs: dict[str, Any]) -> bytes:
    parts = []
    for key, value in attrs.items():
        text = value.json_bytes() if isinstance(value, _Deep) else orjson.dumps(value)
        parts.append(orjson.dumps(key) + b":" + text)
    return b"{" + b",".join(parts) + b"}"


def _body(path: str, fmt: str, records: list[tuple[int, dict[str, Any]]], trace: str) -> bytes:
    """One request on ``path`` in ``fmt`` holding a record per ``(ts, attrs)``."""
    if path == "ingest":
        rows = []
        for n, (ts, attrs) in enumerate(records):
            row = (ts, 3, 20, trace, n + 1, None, 1000, 1, "svc", None, None, None, "op")
            rows.append(
                (
                    *row,
                    None,
                    _attrs_json(attrs),
                    None,
                    None,
                    None,
                    None,
                    1,
                    None,
                    3,
                    None,
                    None,
                    None,
                    None,
                )
            )
        return native_body(rows, fmt)[1]
    if fmt == "json":
        items = []
        for n, (ts, attrs) in enumerate(records):
            kvs = ",".join(f'{{"key":"{k}","value":{_any_json(v)}}}' for k, v in attrs.items())
            ids = f'"traceId":"{trace}","spanId":"{n + 1:016x}"'
            if path == "traces":
                items.append(
                    f'{{{ids},"name":"op","startTimeUnixNano":"{ts}",'
                    f'"endTimeUnixNano":"{ts + 1000}","attributes":[{kvs}]}}'
                )
            else:
                items.append(f'{{{ids},"timeUnixNano":"{ts}","attributes":[{kvs}]}}')
        inner = "spans" if path == "traces" else "logRecords"
        outer = "resourceSpans" if path == "traces" else "resourceLogs"
        middle = "scopeSpans" if path == "traces" else "scopeLogs"
        return f'{{"{outer}":[{{"{middle}":[{{"{inner}":[{",".join(items)}]}}]}}]}}'.encode()
    out = b""
    for n, (ts, attrs) in enumerate(records):
        kvs = b"".join(
            _field(9 if path == "traces" else 6, _field(1, k.encode()) + _field(2, _any_pb(v)))
            for k, v in attrs.items()
        )
        ids = _field(1, bytes.fromhex(trace)) + _field(2, (n + 1).to_bytes(8, "big"))
        if path == "traces":
            times = _varint(7 << 3 | 1) + ts.to_bytes(8, "little")
            times += _varint(8 << 3 | 1) + (ts + 1000).to_bytes(8, "little")
            rec = ids + _field(5, b"op") + times + kvs
        else:
            # LogRecord: time_unix_nano 1 (fixed64), trace_id 9, span_id 10, attributes 6.
            rec = _varint(1 << 3 | 1) + ts.to_bytes(8, "little") + kvs
            rec += _field(9, bytes.fromhex(trace)) + _field(10, (n + 1).to_bytes(8, "big"))
        out += _field(2, rec)
    return _field(1, _field(2, out))


async def _post(
    server: CollectorServer, key: str, path: str, fmt: str, body: bytes
) -> tuple[int, Any]:
    """POST a body; the status and the answer (JSON, or the OTLP response's partial success)."""
    if path == "ingest":
        media = "application/msgpack" if fmt == "msgpack" else "application/json"
        resp = await server.post("/v1/ingest", body, key, content_type=media)
        return resp.status, resp.json() if resp.status == 200 else resp.body
    resp = await server.post(f"/v1/{path}", body, key, content_type=_MEDIA[fmt])
    if resp.status != 200:
        return resp.status, resp.body
    if fmt == "json":
        doc = orjson.loads(resp.body)
        return 200, doc.get("partialSuccess", {})
    if path == "traces":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse as Response,
        )
    else:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceResponse as Response,
        )
    answer = Response()
    answer.ParseFromString(resp.body)
    part = answer.partial_success
    rejected = part.rejected_spans if path == "traces" else part.rejected_log_records
    return 200, {"rejected": rejected, "message": part.error_message}


def _rejected(path: str, answer: Any) -> int:
    if path == "ingest":
        return int(answer.get("rejected", {}).get("timestamp", 0))
    for name in ("rejected", "rejectedSpans", "rejectedLogRecords"):
        if name in answer:
            return int(answer[name])
    return 0


async def _stored_attrs(server: CollectorServer, project: str) -> list[Any]:
    return [orjson.loads(r["attrs"]) for r in await server.records(project)]


async def _reads_back(server: CollectorServer, key: str, trace: str) -> None:
    """The query API answers 200 with the stored records in it."""
    search = await server.request("GET", "/v1/search?limit=100", key=key)
    assert search.status == 200, search
    tree = await server.request("GET", f"/v1/traces/{trace}", key=key)
    assert tree.status == 200, tree


def _now() -> int:
    return time.time_ns() // 1000 * 1000


# aiohttp's client warns that an 11 MB body sent as bytes holds its event loop: as meant here.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize(("path", "fmt"), PATHS, ids=_IDS)
async def test_large_attributes_are_bounded(
    collector_server: CollectorServer, path: str, fmt: str
) -> None:
    """An 11 MB attribute value becomes a marker (its siblings kept), and attributes over the
    record's bound as a whole become one marker; both read back through the query API."""
    bounds = collector_server.app[INGEST].bounds
    key = await collector_server.create_key("p")
    trace = uuid.uuid4().hex
    # 11 MB in one value: one string natively, 2,700 strings of 4,096 (OTLP cuts each string).
    big: Any = "x" * 11_000_000 if path == "ingest" else ["y" * 4096] * 2700
    many = {f"k{i}": "z" * 4000 for i in range(40)}  # each value small, 160 KB in all
    body = _body(path, fmt, [(_now(), {"big": big, "keep": "me"}), (_now(), many)], trace)
    status, _ = await _post(collector_server, key, path, fmt, body)
    assert status == 200
    first, second = sorted(await _stored_attrs(collector_server, "p"), key=len)
    assert first["keep"] == "me"
    assert first["big"]["atrace.truncated"] is True
    assert first["big"]["atrace.limit"] == bounds.max_value_bytes
    assert first["big"]["atrace.original_bytes"] > 11_000_000
    assert second["atrace.truncated"] is True
    assert second["atrace.limit"] == bounds.max_attrs_bytes
    for record in await collector_server.records("p"):
        assert len(record["attrs"]) <= bounds.max_attrs_bytes
    await _reads_back(collector_server, key, trace)


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list):
        (value,) = value
        depth += 1
    assert value == TOO_DEEP
    return depth


@pytest.mark.parametrize(("path", "fmt"), PATHS, ids=_IDS)
async def test_deep_values_are_cut(collector_server: CollectorServer, path: str, fmt: str) -> None:
    """A value nested 300 deep is cut at max_depth with "<too deep>" (or, in protobuf, past the
    parser's own nesting limit, the request is refused whole); the rows read back with 200."""
    bounds = collector_server.app[INGEST].bounds
    key = await collector_server.create_key("p")
    trace = uuid.uuid4().hex
    deep = _Deep(40 if fmt == "protobuf" else 300)
    body = _body(path, fmt, [(_now(), {"deep": deep, "keep": 1})], trace)
    status, _ = await _post(collector_server, key, path, fmt, body)
    assert status == 200
    (attrs,) = await _stored_attrs(collector_server, "p")
    assert attrs["keep"] == 1
    assert _depth(attrs["deep"]) == bounds.max_depth
    await _reads_back(collector_server, key, trace)
    if fmt == "protobuf":
        body = _body(path, fmt, [(_now(), {"deep": _Deep(300), "keep": 1})], trace)
        status, _ = await _post(collector_server, key, path, fmt, body)
        assert status == 400
        assert await collector_server.count("p") == 1


@pytest.mark.parametrize(("path", "fmt"), PATHS, ids=_IDS)
async def test_timestamps_outside_the_window_are_rejected(
    collector_server: CollectorServer, pg_schema: tuple[str, str], path: str, fmt: str
) -> None:
    """Records dated far ahead or far back are rejected and counted, the rest stored; the far
    day's partition can still be made for everyone, and later records are stored."""
    dsn, schema = pg_schema
    key = await collector_server.create_key("p")
    trace = uuid.uuid4().hex
    now = _now()
    future, past = now + 5 * _DAY_NS, now - 30 * _DAY_NS
    body = _body(path, fmt, [(future, {"a": 1}), (now, {"a": 2}), (past, {"a": 3})], trace)
    status, answer = await _post(collector_server, key, path, fmt, body)
    assert status == 200
    assert _rejected(path, answer) == 2
    if path == "ingest":
        assert answer["accepted"] == 1
    assert [a["a"] for a in await _stored_attrs(collector_server, "p")] == [2]
    # Days later: the far day's partition is made (no row of it waits in the default partition).
    today = dt.datetime.now(dt.timezone.utc).date()
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_partitions(conn, schema, today=today + dt.timedelta(days=4))
        far_day = dt.datetime.fromtimestamp(future / 1e9, dt.timezone.utc).date()
        made = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.{partition_name(far_day)}")
        assert made is not None
    finally:
        await conn.close()
    status, answer = await _post(
        collector_server, key, path, fmt, _body(path, fmt, [(_now(), {"a": 4})], trace)
    )
    assert status == 200 and _rejected(path, answer) == 0
    assert sorted(a["a"] for a in await _stored_attrs(collector_server, "p")) == [2, 4]


@pytest.mark.parametrize(("path", "fmt"), PATHS, ids=_IDS)
async def test_refused_request_writes_nothing(
    collector_server: CollectorServer, path: str, fmt: str
) -> None:
    """A request refused for one malformed record stores none of its records, oversize or not."""
    key = await collector_server.create_key("p")
    trace = uuid.uuid4().hex
    body = _body(path, fmt, [(_now(), {"big": "x" * 200_000}), (_now(), {"a": 1})], trace)
    if path == "ingest":
        at = body.rfind(b"svc")  # the last record's service: not valid UTF-8, or a number
        broken = body[:at] + (b"\xff\xfe\xfd" if fmt == "msgpack" else b'1"') + body[at + 3 :]
    elif fmt == "json":
        broken = body.replace(f'"spanId":"{2:016x}"'.encode(), b'"spanId":"zz"')
    else:
        broken = body[:-3]  # a record cut short
    status, _ = await _post(collector_server, key, path, fmt, broken)
    assert status == 400
    assert await collector_server.count("p") == 0


async def test_rows_waiting_in_the_default_partition_move_into_their_day(
    pg_db: tuple[Any, str],
) -> None:
    """Rows that reached the default partition (written before a day's partition existed) no
    longer block that day: its partition is made from them, and they stay queryable."""
    conn, schema = pg_db
    today = dt.datetime.now(dt.timezone.utc).date()
    far = today + dt.timedelta(days=40)
    for hour in (1, 2):
        await conn.execute(
            f"INSERT INTO {schema}.records (ts, kind, level, service, project, message) "
            f"VALUES ('{far.isoformat()} 0{hour}:00:00+00', 0, 20, 'svc', 'p', 'm{hour}')"
        )
    where = "SELECT tableoid::regclass::text FROM {}.records WHERE message = 'm1'"
    assert (await conn.fetchval(where.format(schema))).endswith("records_default")
    await ensure_partitions(conn, schema, today=far - dt.timedelta(days=1), ahead=1)
    name = partition_name(far)
    assert (await conn.fetchval(where.format(schema))).endswith(name)
    assert await conn.fetchval(f"SELECT count(*) FROM {schema}.{name}") == 2
    assert await conn.fetchval(f"SELECT count(*) FROM {schema}.records_default") == 0
    # The day's partition is a real one: later rows of that day land in it.
    await conn.execute(
        f"INSERT INTO {schema}.records (ts, kind, level, service, project, message) "
        f"VALUES ('{far.isoformat()} 05:00:00+00', 0, 20, 'svc', 'p', 'm5')"
    )
    assert await conn.fetchval(f"SELECT count(*) FROM {schema}.{name}") == 3
