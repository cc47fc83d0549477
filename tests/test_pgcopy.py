"""Binary COPY encoding, compiled and twin, checked against what a real PostgreSQL stores."""

from __future__ import annotations

import importlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import asyncpg
import orjson
import pytest

from atrace._formats import pgcopy
from atrace._postgres.schema import ensure_schema
from atrace._postgres.session import connection_init, copy_rows
from atrace._records import COLUMNS
from atrace.sinks.postgres import broken_row

_IMPLS = ["atrace._formats._pgcopy_py"]
try:
    importlib.import_module("atrace._formats._pgcopy")
    _IMPLS.append("atrace._formats._pgcopy")
except ImportError:  # the twin alone (ATRACE_PUREPYTHON builds): the compiled case is absent
    pass

NOW = time.time_ns()


@pytest.fixture(params=_IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


@pytest.fixture
async def conn(pg_schema: tuple[str, str]) -> AsyncIterator[Any]:
    dsn, schema = pg_schema
    c = await asyncpg.connect(dsn)
    await ensure_schema(c, schema)
    yield c
    await c.close()


def row(**over: Any) -> tuple[Any, ...]:
    base: dict[str, Any] = dict.fromkeys(COLUMNS)
    base.update(ts=NOW, kind=3, level=20, status=1, service="svc")
    base.update(over)
    return tuple(base[c] for c in COLUMNS)


async def copy_raw(conn: Any, schema: str, data: bytes, extra: tuple[str, ...] = ()) -> None:
    await conn.copy_to_table(
        "records",
        schema_name=schema,
        columns=pgcopy.COPY_COLUMNS + extra,
        source=memoryview(pgcopy.HEADER + data + pgcopy.TRAILER),  # bytes would be a path
        format="binary",
    )


async def stored(conn: Any, schema: str) -> list[dict[str, Any]]:
    out = []
    for r in await conn.fetch(f"SELECT * FROM {schema}.records ORDER BY ts, span_id"):
        d = dict(r)
        d["ts"] = int(d["ts"].timestamp() * 1_000_000) * 1000
        d["trace_id"] = None if d["trace_id"] is None else d["trace_id"].hex
        d["attrs"] = None if d["attrs"] is None else orjson.loads(d["attrs"])
        out.append(d)
    return out


class TestEncodeRows:
    async def test_every_column_type_round_trips(
        self, impl: ModuleType, conn: Any, pg_schema: tuple[str, str]
    ) -> None:
        """Each column, at its edges and as NULL, reads back as written."""
        _, schema = pg_schema
        trace = uuid.uuid4().hex
        rows = [
            row(
                ts=NOW - 1234,
                kind=0,
                level=50,
                trace_id=trace,
                span_id=-(2**63),
                parent_id=2**63 - 1,
                duration_ns=0,
                status=2,
                service="säö ✓ 𝄞",
                environment="prod",
                host="h",
                pid=2**31 - 1,
                name="n'; DROP TABLE records; --",
                message="m" * 10_000,
                attrs=orjson.dumps({"k": [1, 2.5, None, "x"], "ü": {"n": True}}),
                error_type="E",
                error_message="bad",
                stack_trace="tb",
                location="a.py:1",
            ),
            row(ts=NOW + 5_000),  # NULLs everywhere they may be
            row(ts=NOW + 9_000, trace_id=str(uuid.UUID(trace)), span_id=1, pid=-(2**31)),
        ]
        await copy_raw(conn, schema, impl.encode_rows(rows))
        got = await stored(conn, schema)
        assert len(got) == 3
        first = got[0]
        assert first["ts"] == (NOW - 1234) // 1000 * 1000
        assert (first["kind"], first["level"], first["status"]) == (0, 50, 2)
        assert first["trace_id"] == trace
        assert (first["span_id"], first["parent_id"]) == (-(2**63), 2**63 - 1)
        assert first["service"] == "säö ✓ 𝄞"
        assert first["name"] == "n'; DROP TABLE records; --"
        assert first["message"] == "m" * 10_000
        assert first["attrs"] == {"k": [1, 2.5, None, "x"], "ü": {"n": True}}
        assert first["pid"] == 2**31 - 1
        assert first["project"] == "default"
        assert got[1]["trace_id"] is None and got[1]["attrs"] is None and got[1]["pid"] is None
        assert got[2]["trace_id"] == trace and got[2]["pid"] == -(2**31)

    async def test_extra_columns_and_slices(
        self, impl: ModuleType, conn: Any, pg_schema: tuple[str, str]
    ) -> None:
        """Slices concatenate to the whole; extra values fill the columns after COLUMNS."""
        _, schema = pg_schema
        rows = [row(ts=NOW + i, span_id=i) for i in range(10)]
        data = b"".join(impl.encode_rows(rows, s, s + 3, ("proj-a",)) for s in range(0, 10, 3))
        assert data == impl.encode_rows(rows, extra=("proj-a",))
        await copy_raw(conn, schema, data, ("project",))
        got = await stored(conn, schema)
        assert [r["span_id"] for r in got] == list(range(10))
        assert {r["project"] for r in got} == {"proj-a"}

    @pytest.mark.parametrize(
        ("bad", "error"),
        [
            ({"trace_id": "zz" * 16}, ValueError),
            ({"trace_id": "abc"}, ValueError),
            ({"span_id": 2**64}, OverflowError),
            ({"level": 70_000}, OverflowError),
            ({"pid": "12"}, TypeError),
            ({"service": 12}, TypeError),
            ({"message": "a\x00b"}, ValueError),
        ],
    )
    def test_bad_values_raise_without_on_error(
        self, impl: ModuleType, bad: dict[str, Any], error: type[Exception]
    ) -> None:
        """A value of the wrong type or range is an error naming it, not a corrupt stream."""
        with pytest.raises(error):
            impl.encode_rows([row(**bad)])

    async def test_one_bad_row_is_replaced_not_fatal(
        self, impl: ModuleType, conn: Any, pg_schema: tuple[str, str]
    ) -> None:
        """With on_error, the bad row becomes an error row and its neighbours land intact."""
        _, schema = pg_schema
        rows = [row(ts=NOW, span_id=1), row(ts=NOW + 1000, span_id=2**70), row(ts=NOW + 2000)]
        await copy_raw(conn, schema, impl.encode_rows(rows, on_error=broken_row))
        got = await stored(conn, schema)
        assert len(got) == 3
        assert got[0]["span_id"] == 1
        assert got[1]["level"] == 40 and got[1]["error_type"] == "OverflowError"
        assert got[1]["message"] == "atrace: a row could not be written"
        assert any(w in got[1]["error_message"] for w in ("does not fit", "too large"))
        assert got[2]["kind"] == 3

    def test_twins_agree_on_random_rows(self) -> None:
        """Compiled and twin produce the same bytes for the same rows."""
        if len(_IMPLS) < 2:
            pytest.fail("the compiled module is not built")
        seed = random.randrange(2**32)
        print("seed", seed)
        rnd = random.Random(seed)
        rows = [
            row(
                ts=NOW + rnd.randrange(10**12),
                span_id=rnd.randrange(-(2**63), 2**63),
                trace_id=uuid.UUID(int=rnd.getrandbits(128)).hex if rnd.random() < 0.8 else None,
                message="".join(chr(rnd.randrange(1, 0x2FFF)) for _ in range(rnd.randrange(20))),
                attrs=orjson.dumps({"i": rnd.random()}) if rnd.random() < 0.5 else None,
            )
            for _ in range(300)
        ]
        compiled = importlib.import_module("atrace._formats._pgcopy")
        twin = importlib.import_module("atrace._formats._pgcopy_py")
        assert compiled.encode_rows(rows) == twin.encode_rows(rows)


class TestCopyRows:
    async def test_batch_in_slices_with_project(
        self, conn: Any, pg_schema: tuple[str, str]
    ) -> None:
        """copy_rows streams a batch in slices over a codec connection, with a project column."""
        dsn, schema = pg_schema
        c = await asyncpg.connect(dsn)
        try:
            await connection_init(c)
            rows = [row(ts=NOW + i * 1000, span_id=i) for i in range(2_500)]
            await copy_rows(
                c, schema, rows, extra_columns=("project",), extra_values=("p1",), step=700
            )
        finally:
            await c.close()
        n = await conn.fetchval(f"SELECT count(*) FROM {schema}.records WHERE project = 'p1'")
        assert n == 2_500


class TestOptionalColumns:
    def test_a_batch_sends_only_the_optional_columns_it_has_values_in(self) -> None:
        """Logs on whole microseconds send none of schemas 5 and 6's columns; a span's kind
        and flags, a trace state, a status message, links, an otlp document and nanoseconds
        each bring their own."""
        base = pgcopy.COPY_COLUMNS[: len(COLUMNS) - 7]
        whole = NOW // 1000 * 1000  # on a microsecond
        logs = [row(kind=0, ts=whole), row(kind=0, ts=whole + 1000)]
        assert pgcopy.copy_columns(logs) == (base, 0)
        spans = [
            row(span_kind=2, trace_flags=3, ts=whole),
            row(span_kind=1, trace_flags=1, ts=whole + 7),
        ]
        names, keep = pgcopy.copy_columns(spans)
        assert names == (*base, "span_kind", "trace_flags", "ts_frac") and keep == 0b10000101
        linked = [row(span_kind=1, links=b"[]", ts=whole), row(kind=0, otlp=b"{}", ts=whole)]
        names, keep = pgcopy.copy_columns(linked)
        assert names == (*base, "span_kind", "links", "otlp") and keep == 0b00110001
        full = [
            row(
                span_kind=3,
                trace_state="a=1",
                trace_flags=3,
                status_message="x",
                links=b'[{"trace_id":"01","span_id":"02"}]',
                otlp=b'{"flags":256}',
                resource_id=-7,
                ts=whole + 1,
            )
        ]
        assert pgcopy.copy_columns(full) == (pgcopy.COPY_COLUMNS, pgcopy.ALL_OPTIONAL)

    async def test_columns_left_out_read_back_null_and_the_rest_exact(
        self, impl: ModuleType, conn: Any, pg_schema: tuple[str, str]
    ) -> None:
        """A batch COPYed with only some optional columns stores the others as null and the
        sent ones as they were, nanoseconds included."""
        _, schema = pg_schema
        whole = NOW // 1000 * 1000
        rows = [
            row(
                span_kind=2,
                ts=whole + 789,
                links=b'[{"span_id":"00f067aa0ba902b7"}]',
                resource_id=2**63 - 1,
            ),
            row(kind=0, ts=whole + 2000),
        ]
        names, keep = pgcopy.copy_columns(rows)
        data = impl.encode_rows(rows, keep=keep)
        await conn.copy_to_table(
            "records",
            schema_name=schema,
            columns=names,
            source=memoryview(pgcopy.HEADER + data + pgcopy.TRAILER),
            format="binary",
        )
        got = await conn.fetch(
            f"SELECT span_kind, trace_state, trace_flags, status_message, links::text, otlp, "
            f"resource_id, ts_frac FROM {schema}.records ORDER BY ts"
        )
        assert [tuple(r) for r in got] == [
            (2, None, None, None, '[{"span_id": "00f067aa0ba902b7"}]', None, 2**63 - 1, 789),
            (None,) * 8,
        ]
