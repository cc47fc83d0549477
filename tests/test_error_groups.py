"""Error groups count occurrences against a real PostgreSQL: one exception is one occurrence
however many records carry it, HTTP-status failures group by status, method and route; and
search's ``q`` and attribute filters over the fields they cover."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

import atrace
from atrace._emit.ids import format_span_id, new_span_id, new_trace_id
from atrace._postgres.schema import ensure_text_index
from atrace._postgres.session import connection_init
from atrace.collector import _query as query
from atrace.collector._query import Filters, parse_filters
from test_query import MS, NOW, A, S, copy_rows, make_row

ORIGIN = "atrace.exception.origin"
STACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/shop/pay.py", line 12, in charge\n'
    "    gateway.charge(card)\n"
    "ValueError: card 4242 declined\n"
)


@pytest.fixture
def db(pg_db: tuple[Any, str]) -> tuple[Any, str]:
    """A connection with atrace's codecs to a migrated schema (tests/_pg.py)."""
    return pg_db


def failed_span(
    ts: int, span_id: int, parent_id: int | None, trace: str, name: str, **kw: Any
) -> tuple[Any, ...]:
    """A span ended by an exception, as atrace stores it."""
    fields: dict[str, Any] = {
        "error_type": "ValueError",
        "error_message": "card 4242 declined",
        "stack_trace": STACK,
        **kw,
    }
    return make_row(
        ts,
        kind=3,
        level=40,
        status=2,
        trace_id=trace,
        span_id=span_id,
        parent_id=parent_id,
        duration_ns=10 * MS,
        name=name,
        **fields,
    )


def exception_log(ts: int, span_id: int | None, trace: str | None, **kw: Any) -> tuple[Any, ...]:
    """An ``atrace.exception("payment failed")`` log of the same exception."""
    fields: dict[str, Any] = {
        "level": 40,
        "error_type": "ValueError",
        "error_message": "card 4242 declined",
        "stack_trace": STACK,
        **kw,
    }
    return make_row(ts, trace_id=trace, span_id=span_id, message="payment failed", **fields)


def one_exception(t0: int, *, marked: bool) -> list[tuple[Any, ...]]:
    """One exception raised in an inner span, through its outer span, then logged: three rows.

    ``marked`` writes them as atrace does now (the later two name the inner span as origin;
    the log, written outside any span, has no trace id), else as older versions did (no such
    attribute; the log written in the outer span).
    """
    trace, outer, inner = new_trace_id(), new_span_id(), new_span_id()
    link = {"attrs": {ORIGIN: format_span_id(inner), "order": 7}} if marked else {}
    return [
        failed_span(t0, outer, None, trace, "checkout", **link),
        failed_span(t0 + MS, inner, outer, trace, "charge card"),
        exception_log(t0 + 20 * MS, None, None, **link)
        if marked
        else exception_log(t0 + 20 * MS, outer, trace),
    ]


def http_span(
    ts: int, code: int | str, method: str, route: str | None, *, name: str | None = None, **kw: Any
) -> tuple[Any, ...]:
    """A server span failed on its response status, no exception, as the integrations end it."""
    attrs: dict[str, Any] = {"http.request.method": method, "http.response.status_code": code}
    if route is not None:
        attrs["http.route"] = route
    attrs.update(kw.pop("attrs", {}))
    kw.setdefault("level", 20)
    return make_row(
        ts,
        kind=3,
        status=2,
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        name=name or (f"{method} {route}" if route else method),
        error_message=f"HTTP {code}",
        attrs=attrs,
        **kw,
    )


class TestOccurrences:
    async def test_origin_attribute(self, db: tuple[Any, str]) -> None:
        """Records naming an origin are linked to it, not counted: two exceptions, two counted."""
        conn, schema = db
        rows = one_exception(NOW - 30 * S, marked=True) + one_exception(NOW - 20 * S, marked=True)
        await copy_rows(conn, schema, A, rows)
        out = await query.errors(conn, schema, A, now=NOW)
        (group,) = out["groups"]
        assert (group["count"], group["linked"], out["occurrences"]) == (2, 4, 2)
        assert group["label"] == "ValueError: card 4242 declined"
        assert group["kind"] == "exception" and group["http"] is None
        assert group["first_seen"] == NOW - 30 * S + MS  # the inner span, nearest the raise
        assert out["scanned"] == 6

    async def test_older_rows_by_their_place_in_the_trace(self, db: tuple[Any, str]) -> None:
        """Without the attribute, a span or log holding the error of a record one level deeper
        in its trace is linked to it; siblings failing alike stay separate occurrences."""
        conn, schema = db
        rows = one_exception(NOW - 40 * S, marked=False)
        # Three attempts fail alike under one parent span, which fails with the last one.
        trace, parent = new_trace_id(), new_span_id()
        rows.append(failed_span(NOW - 30 * S, parent, None, trace, "retrying"))
        rows += [
            failed_span(NOW - 30 * S + i * 20 * MS, new_span_id(), parent, trace, f"try {i}")
            for i in range(3)
        ]
        # A log of the same text written in a span before its child failed is its own error.
        trace2, span2 = new_trace_id(), new_span_id()
        rows.append(exception_log(NOW - 10 * S, span2, trace2))
        rows.append(failed_span(NOW - 10 * S + MS, new_span_id(), span2, trace2, "later"))
        await copy_rows(conn, schema, A, rows)
        (group,) = (await query.errors(conn, schema, A, now=NOW))["groups"]
        assert (group["count"], group["linked"]) == (1 + 3 + 2, 2 + 1)

    async def test_origin_not_read(self, db: tuple[Any, str]) -> None:
        """Records whose first record was not read (a warning) stand for it once, together."""
        conn, schema = db
        trace, span = new_trace_id(), new_span_id()
        mark = {"attrs": {ORIGIN: format_span_id(span)}}
        rows = [
            exception_log(NOW - 9 * S, span, trace, level=30),  # logged as a warning first
            failed_span(NOW - 10 * S, span, None, trace, "job", **mark),
            exception_log(NOW - 8 * S, None, trace, **mark),
        ]
        await copy_rows(conn, schema, A, rows)
        out = await query.errors(conn, schema, A, now=NOW)
        (group,) = out["groups"]
        assert (group["count"], group["linked"], out["scanned"]) == (1, 1, 2)


class TestHttpFailures:
    async def test_grouped_by_status_method_and_route(self, db: tuple[Any, str]) -> None:
        """500s and 502s, and different routes, are different groups, labelled by all three."""
        conn, schema = db
        t = NOW - 60 * S
        rows = [http_span(t + i * S, 502, "GET", "/order/{order_id}") for i in range(3)]
        rows += [http_span(t + 10 * S + i * S, 500, "GET", "/order/{order_id}") for i in range(2)]
        rows.append(http_span(t + 20 * S, 502, "POST", "/pay"))
        # Older attribute names, the route only in the span name, the status as text.
        rows.append(
            make_row(
                t + 21 * S,
                kind=2,
                status=2,
                name="GET /legacy/{id}",
                error_message="HTTP 503",
                attrs={"http.method": "GET", "http.status_code": "503"},
            )
        )
        # A client span fails on a 404; a server span with an exception stays an exception.
        rows.append(
            http_span(
                t + 22 * S,
                404,
                "GET",
                None,
                name="HTTP GET",
                attrs={"server.address": "payments.internal"},
            )
        )
        rows.append(
            http_span(t + 23 * S, 500, "GET", "/order/{order_id}", error_type="KeyError", level=40)
        )
        await copy_rows(conn, schema, A, rows)
        out = await query.errors(conn, schema, A, now=NOW)
        got = {g["label"]: (g["count"], g["kind"], g["http"]) for g in out["groups"]}
        assert got == {
            "HTTP 502 GET /order/{order_id}": (
                3,
                "http",
                {"status": 502, "method": "GET", "route": "/order/{order_id}"},
            ),
            "HTTP 500 GET /order/{order_id}": (
                2,
                "http",
                {"status": 500, "method": "GET", "route": "/order/{order_id}"},
            ),
            "HTTP 502 POST /pay": (1, "http", {"status": 502, "method": "POST", "route": "/pay"}),
            "HTTP 503 GET /legacy/{id}": (
                1,
                "http",
                {"status": 503, "method": "GET", "route": "/legacy/{id}"},
            ),
            "HTTP 404 GET payments.internal": (
                1,
                "http",
                {"status": 404, "method": "GET", "route": "payments.internal"},
            ),
            "KeyError: HTTP 500": (1, "exception", None),
        }
        assert [g["label"] for g in out["groups"][:2]] == [
            "HTTP 502 GET /order/{order_id}",
            "HTTP 500 GET /order/{order_id}",
        ]


class TestEndToEnd:
    async def test_one_exception_through_spans_and_a_log(self, pg_schema: tuple[str, str]) -> None:
        """An exception raised in an inner span, leaving its outer span, then logged with
        atrace.exception is one occurrence with two linked records."""
        dsn, schema = pg_schema
        atrace.configure(service="shop", sink=dsn, schema=schema, flush_interval=0.05)
        try:
            # The outer span first, the inner one within it.
            async with atrace.span("checkout"), atrace.span("charge card"):
                raise ValueError("card 4242 declined")
        except ValueError:
            atrace.exception("payment failed")
        assert await atrace.aflush(timeout=30)
        await atrace.ashutdown()
        conn = await asyncpg.connect(dsn)
        try:
            await connection_init(conn)
            out = await query.errors(conn, schema, "default")
        finally:
            await conn.close()
        assert out["scanned"] == 3
        (group,) = out["groups"]
        assert group["error_type"] == "ValueError"
        assert (group["count"], group["linked"]) == (1, 2)


class TestSearchText:
    async def test_q_covers_error_messages_and_attribute_values(self, db: tuple[Any, str]) -> None:
        """q finds words of the error message and of attribute values, with or without the
        full-text index, and the words may sit in different fields."""
        conn, schema = db
        rows = [
            make_row(
                NOW - 3 * S,
                level=40,
                message="charge attempt",
                error_type="GatewayError",
                error_message="gateway unreachable",
                attrs={"order_id": "ord9Xk2", "retries": 3, "tags": ["vip"]},
            ),
            make_row(NOW - 2 * S, message="charge attempt", attrs={"order_id": "ord1"}),
            make_row(NOW - 1 * S, message="nothing to see", attrs={"note": "unreachable"}),
        ]
        await copy_rows(conn, schema, A, rows)

        async def found(q: str) -> list[int]:
            f = parse_filters({"q": q}, project=A, now=NOW)
            return [r["ts"] for r in (await query.search(conn, schema, f))["records"]]

        cases = {
            "unreachable": [NOW - S, NOW - 3 * S],
            "ord9Xk2": [NOW - 3 * S],
            "GatewayError": [NOW - 3 * S],
            "charge ord9Xk2": [NOW - 3 * S],  # one word in the message, one in an attribute
            "vip": [NOW - 3 * S],
            "charge": [NOW - 2 * S, NOW - 3 * S],
            "order_id": [],  # keys are not searched
        }
        for q, want in cases.items():
            assert await found(q) == want, q
        await ensure_text_index(conn, schema)
        for q, want in cases.items():
            assert await found(q) == want, q
        # The live tail's in-memory q looks at the same fields.
        row = rows[0]
        for q in ("UNREACHABLE", "ord9xk2", "gatewayerror", "vip"):
            assert Filters(project=A, q=q).matches(row), q
        assert not Filters(project=A, q="order_id").matches(row)


class TestAttrFilters:
    async def test_numbers_and_booleans_match_their_text(self, db: tuple[Any, str]) -> None:
        """attr.KEY=42 matches 42, 42.0, "42" and "42.0", attr.KEY="42" the same, "042" only
        itself; true matches true and "true", never 1."""
        conn, schema = db
        values: list[Any] = [42, "42", 42.0, "42.0", "042", True, "true", 1, None]
        rows = [
            make_row(NOW - i * S, message=f"m{i}", attrs={"v": v}) for i, v in enumerate(values)
        ]
        await copy_rows(conn, schema, A, rows)

        async def matched(value: str) -> list[Any]:
            f = parse_filters({"attr.v": value, "limit": "1000"}, project=A, now=NOW + S)
            recs = (await query.search(conn, schema, f))["records"]
            return [r["attrs"]["v"] for r in recs]

        assert await matched("42") == [42, "42", 42.0, "42.0"]
        assert await matched('"42"') == [42, "42", 42.0, "42.0"]
        assert await matched("42.0") == [42, "42", 42.0, "42.0"]
        assert await matched("042") == ["042"]
        assert await matched("true") == [True, "true"]
        assert await matched("1") == [1]
        assert await matched("null") == [None]
        for i, v in enumerate(values):
            want = i in (0, 1, 2, 3)
            assert Filters(project=A, attrs={"v": 42}).matches(rows[i]) is want, v
            assert Filters(project=A, attrs={"v": "42"}).matches(rows[i]) is want, v
