"""Spans: nesting, status, errors, attributes, @traced on every kind of function, long spans."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

import atrace
from atrace import SpanKind
from atrace._records import Status
from atrace.testing import MemorySink

KIND_WORDS = ("internal", "server", "client", "producer", "consumer")


def by_name(rows: list[dict], name: str) -> dict:
    matches = [r for r in rows if r["name"] == name]
    assert len(matches) == 1, f"{name}: {len(matches)} rows"
    return matches[0]


class TestSpanContextManager:
    async def test_async_nesting(self, configure_memory: MemorySink) -> None:
        """A span opened inside another is its child, in the same trace."""
        async with atrace.span("outer", a=1) as outer:
            async with atrace.span("inner") as inner:
                assert atrace.current_span() is inner
            assert atrace.current_span() is outer
        assert atrace.current_span() is None
        await atrace.aflush()
        rows = configure_memory.spans()
        o, i = by_name(rows, "outer"), by_name(rows, "inner")
        assert o["parent_id"] is None and i["parent_id"] == o["span_id"]
        assert o["trace_id"] == i["trace_id"] == outer.trace_id
        # Neither failed nor had a status set: unset (OpenTelemetry's rule), at info level.
        assert o["kind"] == 3 and o["status"] == Status.UNSET and o["level"] == 20
        assert o["span_kind"] == i["span_kind"] == SpanKind.INTERNAL
        # A new trace is sampled and random-flagged; the child inherits the flags.
        assert o["trace_flags"] == i["trace_flags"] == 3
        assert o["trace_state"] is None and o["status_message"] is None
        assert o["attrs"] == {"a": 1}
        assert o["duration_ns"] >= i["duration_ns"] > 0
        assert o["service"] == "test"

    async def test_sync_with(self, configure_memory: MemorySink) -> None:
        """The sync form records the same row."""
        with atrace.span("sync-span", k="v") as sp:
            sp.set(extra=2)
        await atrace.aflush()
        row = by_name(configure_memory.spans(), "sync-span")
        assert row["attrs"] == {"k": "v", "extra": 2}
        assert row["location"].endswith(
            f"test_span.py:{self.test_sync_with.__code__.co_firstlineno + 2}"
        )

    async def test_exception_marks_failed_and_propagates(
        self, configure_memory: MemorySink
    ) -> None:
        """An exception leaving a span fails it with type, message, trace, and propagates as is."""
        err = KeyError("missing")
        with pytest.raises(KeyError) as info:
            async with atrace.span("boom"):
                raise err
        assert info.value is err
        await atrace.aflush()
        row = by_name(configure_memory.spans(), "boom")
        assert row["status"] == 2 and row["level"] == 40
        assert row["error_type"] == "KeyError"
        assert row["error_message"] == "'missing'"
        assert "Traceback" in row["stack_trace"] and "raise err" in row["stack_trace"]

    async def test_record_exception_and_status(self, configure_memory: MemorySink) -> None:
        """A handled exception can be recorded without failing the span; set_status overrides
        the outcome, and an error's description is the status message, not the span's error."""
        with atrace.span("handled") as sp:
            try:
                raise ValueError("bad input")
            except ValueError as exc:
                sp.record_exception(exc, failed=False)
        with atrace.span("explicit") as sp2:
            sp2.set_status("error", "quota exceeded")
        await atrace.aflush()
        handled = by_name(configure_memory.spans(), "handled")
        assert handled["status"] == Status.UNSET and handled["level"] == 20
        assert handled["error_type"] == "ValueError" and handled["status_message"] is None
        explicit = by_name(configure_memory.spans(), "explicit")
        assert explicit["status"] == Status.ERROR and explicit["level"] == 40
        assert explicit["status_message"] == "quota exceeded"
        assert explicit["error_type"] is None and explicit["error_message"] is None
        assert explicit["stack_trace"] is None
        with pytest.raises(atrace.ConfigError):
            sp2.set_status("maybe")

    async def test_status_stays_unset_unless_set(self, configure_memory: MemorySink) -> None:
        """A span that did not fail stays unset; set_status("ok") makes it OK, and "unset" puts
        it back. A message given with "ok" or "unset" is ignored (OpenTelemetry's rule)."""
        with atrace.span("plain"):
            pass
        with atrace.span("ok") as sp:
            sp.set_status("ok", "all good")
        with atrace.span("ok-number") as sp:
            sp.set_status(Status.OK)
        with atrace.span("back-to-unset") as sp:
            sp.set_status("error", "first")
            sp.set_status("unset", "ignored")
        await atrace.aflush()
        rows = configure_memory.spans()
        plain = by_name(rows, "plain")
        assert plain["status"] == Status.UNSET and plain["level"] == 20
        assert plain["status_message"] is None and plain["error_message"] is None
        ok = by_name(rows, "ok")
        assert ok["status"] == Status.OK and ok["level"] == 20
        assert ok["status_message"] is None and ok["error_message"] is None
        assert by_name(rows, "ok-number")["status"] == Status.OK
        back = by_name(rows, "back-to-unset")
        assert back["status"] == Status.UNSET and back["level"] == 20
        assert back["status_message"] is None

    async def test_error_status_message_beside_exception(
        self, configure_memory: MemorySink
    ) -> None:
        """A span failed by an exception after set_status("error", msg) keeps both: the
        exception as its error, the message as its status message."""
        with pytest.raises(KeyError), atrace.span("both") as sp:
            sp.set_status("error", "lookup failed")
            raise KeyError("k")
        await atrace.aflush()
        row = by_name(configure_memory.spans(), "both")
        assert row["status"] == Status.ERROR and row["level"] == 40
        assert row["status_message"] == "lookup failed"
        assert row["error_type"] == "KeyError" and row["error_message"] == "'k'"

    async def test_custom_exception_type_is_qualified(self, configure_memory: MemorySink) -> None:
        """A non-builtin exception type is recorded with its module."""

        class PaymentError(Exception):
            pass

        with pytest.raises(PaymentError), atrace.span("pay"):
            raise PaymentError("declined")
        await atrace.aflush()
        assert by_name(configure_memory.spans(), "pay")["error_type"].endswith(
            "test_span.TestSpanContextManager.test_custom_exception_type_is_qualified.<locals>.PaymentError"
        )

    async def test_cancelled_span_is_not_a_failure(self, configure_memory: MemorySink) -> None:
        """A cancelled task ends its span with the cause recorded, status unset, not an error."""
        started = asyncio.Event()

        async def work() -> None:
            async with atrace.span("cancelled-work"):
                started.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(work())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await atrace.aflush()
        row = by_name(configure_memory.spans(), "cancelled-work")
        assert row["status"] == 0 and row["level"] == 20
        assert row["error_type"] == "asyncio.exceptions.CancelledError"


class TestSpanLinks:
    async def test_links_in_every_form(self, configure_memory: MemorySink) -> None:
        """A span links to spans given as a SpanContext, a span, a (trace, span[, attrs])
        tuple or OpenTelemetry's SpanContext and Link; the row keeps them in order with hex
        ids, and they are the span's own, not attributes."""
        from opentelemetry import trace as otel

        other = "0af7651916cd43dd8448eb211c80319c"
        remote = atrace.SpanContext(other, -2, flags=3, trace_state="rojo=1")
        otel_ctx = otel.SpanContext(
            int(other, 16), 0xB7AD6B7169203331, is_remote=True, trace_flags=otel.TraceFlags(1)
        )
        with atrace.span("earlier") as earlier:
            pass
        with atrace.span(
            "batch",
            links=[
                remote,
                earlier,
                (other, "00f067aa0ba902b7", {"messaging.batch.index": 2}),
                (int(other, 16), 5),
                otel.Link(otel_ctx, {"why": "retry"}),
            ],
            k=1,
        ):
            pass
        await atrace.aflush()
        row = by_name(configure_memory.spans(), "batch")
        assert row["attrs"] == {"k": 1}
        assert row["links"] == [
            {"trace_id": other, "span_id": "fffffffffffffffe", "trace_state": "rojo=1", "flags": 3},
            {
                "trace_id": earlier.trace_id,
                "span_id": f"{earlier.span_id & (2**64 - 1):016x}",
                "flags": earlier.flags,
            },
            {
                "trace_id": other,
                "span_id": "00f067aa0ba902b7",
                "attrs": {"messaging.batch.index": 2},
            },
            {"trace_id": other, "span_id": "0000000000000005"},
            {
                "trace_id": other,
                "span_id": "b7ad6b7169203331",
                "flags": 1,
                "attrs": {"why": "retry"},
            },
        ]
        assert by_name(configure_memory.spans(), "earlier")["links"] is None

    async def test_traced_and_tracer_spans_take_links(self, configure_memory: MemorySink) -> None:
        """@traced, Tracer.span and Tracer.traced take links= as atrace.span does."""
        target = ("ab" * 16, "cd" * 8)

        @atrace.traced(links=[target])
        def job() -> None:
            pass

        tracer = atrace.Tracer("worker")

        @tracer.traced("consume", links=[target])
        async def consume() -> None:
            pass

        job()
        await consume()
        with tracer.span("handle", links=[target]):
            pass
        await atrace.aflush()
        link = {"trace_id": "ab" * 16, "span_id": "cd" * 8}
        spans = configure_memory.spans()
        assert by_name(spans, "consume")["links"] == [link]
        assert by_name(spans, "handle")["links"] == [link]
        assert [r["links"] for r in spans if r["name"].endswith("job")] == [[link]]

    @pytest.mark.parametrize(
        "bad",
        [
            "0af7651916cd43dd8448eb211c80319c",  # one string, not a list
            [("nothex", "00f067aa0ba902b7")],
            [("0af7651916cd43dd8448eb211c80319c", "short")],
            [object()],
            [("0af7651916cd43dd8448eb211c80319c", 1, ["not", "a", "mapping"])],
        ],
    )
    def test_a_wrong_link_fails_at_the_call(self, bad: object) -> None:
        """A link that names no span is a ConfigError where the span is made."""
        with pytest.raises(atrace.ConfigError, match="links"):
            atrace.span("x", links=bad)


class TestSpanKind:
    async def test_kind_by_name_member_or_number(self, configure_memory: MemorySink) -> None:
        """A span's kind is given by name (any case), as an atrace.SpanKind, or as its number;
        the row stores OpenTelemetry's number, and internal is the default."""
        with atrace.span("default"):
            pass
        for name in KIND_WORDS:
            with atrace.span(f"named {name}", kind=name):
                pass
        with atrace.span("upper", kind="SERVER"):
            pass
        with atrace.span("member", kind=SpanKind.PRODUCER, k=1) as member:
            pass
        with atrace.span("number", kind=3):
            pass
        assert member.kind == SpanKind.PRODUCER
        await atrace.aflush()
        rows = configure_memory.spans()
        assert by_name(rows, "default")["span_kind"] == SpanKind.INTERNAL
        named = [by_name(rows, f"named {n}")["span_kind"] for n in KIND_WORDS]
        assert named == [1, 2, 3, 4, 5]
        assert by_name(rows, "upper")["span_kind"] == SpanKind.SERVER
        row = by_name(rows, "member")
        # The kind is a column, not an attribute: the attributes are the caller's alone.
        assert row["span_kind"] == SpanKind.PRODUCER and row["attrs"] == {"k": 1}
        assert by_name(rows, "number")["span_kind"] == SpanKind.CLIENT
        assert all(type(r["span_kind"]) is int for r in rows)

    def test_span_kind_is_public(self) -> None:
        """atrace.SpanKind is the records' SpanKind (its numbers: test_records)."""
        assert atrace.SpanKind is SpanKind and "SpanKind" in atrace.__all__

    async def test_opentelemetry_api_kind(self, configure_memory: MemorySink) -> None:
        """OpenTelemetry's API enum is read by member name (its own values are one lower)."""
        from opentelemetry.trace import SpanKind as OtelSpanKind

        for member in OtelSpanKind:
            with atrace.span(f"otel {member.name}", kind=member):
                pass
        await atrace.aflush()
        rows = configure_memory.spans()
        assert by_name(rows, "otel SERVER")["span_kind"] == 2
        assert {m.name: by_name(rows, f"otel {m.name}")["span_kind"] for m in OtelSpanKind} == {
            "INTERNAL": 1,
            "SERVER": 2,
            "CLIENT": 3,
            "PRODUCER": 4,
            "CONSUMER": 5,
        }

    @pytest.mark.parametrize(
        "bad", ["server ", "", "unspecified", "request", 0, 6, -1, True, 2.0, b"server", object()]
    )
    def test_bad_kind_is_a_config_error(self, bad: object) -> None:
        """A kind that names none of the five raises ConfigError, before any span starts."""
        with pytest.raises(atrace.ConfigError, match="kind"):
            atrace.span("x", kind=bad)
        with pytest.raises(atrace.ConfigError, match="kind"):
            atrace.traced(kind=bad)
        assert atrace.current_span() is None

    async def test_traced_kind(self, configure_memory: MemorySink) -> None:
        """@traced(kind=...) gives every span of the function that kind, sync or async."""

        @atrace.traced(kind="consumer")
        def handle(msg: str) -> str:
            return msg

        @atrace.traced("publish", kind=SpanKind.PRODUCER)
        async def publish() -> None:
            pass

        @atrace.traced
        def plain() -> None:
            pass

        assert handle("m") == "m"
        await publish()
        plain()
        await atrace.aflush()
        rows = configure_memory.spans()
        qual = f"{__name__}.TestSpanKind.test_traced_kind.<locals>"
        assert by_name(rows, f"{qual}.handle")["span_kind"] == SpanKind.CONSUMER
        assert by_name(rows, "publish")["span_kind"] == SpanKind.PRODUCER
        assert by_name(rows, f"{qual}.plain")["span_kind"] == SpanKind.INTERNAL

    async def test_kind_is_on_the_start_row(self, memory_sink: MemorySink) -> None:
        """A long span's start row already carries its kind."""
        atrace.configure(service="test", sink=memory_sink, flush_interval=0.01)
        async with atrace.span("long-server", kind="server") as sp:
            await asyncio.sleep(0.05)
            await atrace.aflush()
        await atrace.aflush()
        rows = [r for r in memory_sink.records() if r["span_id"] == sp.span_id]
        assert [(r["kind"], r["span_kind"]) for r in rows] == [(1, 2), (2, 2)]


class TestTraced:
    async def test_sync_and_async_functions(self, configure_memory: MemorySink) -> None:
        """@traced names the span after the qualified name and records the definition's location."""

        @atrace.traced
        def add(a: int, b: int) -> int:
            return a + b

        @atrace.traced("custom name", team="x")
        async def fetch() -> str:
            return "ok"

        assert add(1, 2) == 3
        assert await fetch() == "ok"
        await atrace.aflush()
        rows = configure_memory.spans()
        add_row = by_name(rows, f"{__name__}.TestTraced.test_sync_and_async_functions.<locals>.add")
        assert add_row["location"].endswith(
            f"test_span.py:{add.__wrapped__.__code__.co_firstlineno}"
        )
        assert by_name(rows, "custom name")["attrs"] == {"team": "x"}

    async def test_async_generator_span_covers_iteration(
        self, configure_memory: MemorySink
    ) -> None:
        """An async generator's span covers its whole iteration and is current only inside it."""
        seen_inside: list[object] = []

        @atrace.traced
        async def numbers() -> AsyncIterator[int]:
            for i in range(3):
                seen_inside.append(atrace.current_span())
                yield i

        async with atrace.span("consumer") as consumer:
            out = []
            async for n in numbers():
                assert atrace.current_span() is consumer
                out.append(n)
        assert out == [0, 1, 2]
        await atrace.aflush()
        rows = configure_memory.spans()
        gen = by_name(
            rows,
            f"{__name__}.TestTraced.test_async_generator_span_covers_iteration.<locals>.numbers",
        )
        assert gen["parent_id"] == by_name(rows, "consumer")["span_id"]
        assert all(s is not None and s.span_id == gen["span_id"] for s in seen_inside)

    async def test_generator_early_close(self, configure_memory: MemorySink) -> None:
        """Breaking out of a traced generator ends its span cleanly, not as a failure."""

        @atrace.traced
        def gen() -> Iterator[int]:
            yield from range(10)

        g = gen()
        assert next(g) == 0
        g.close()
        await atrace.aflush()
        (row,) = configure_memory.spans()
        assert row["status"] == Status.UNSET and row["level"] == 20

    async def test_generator_error_propagates(self, configure_memory: MemorySink) -> None:
        """An error inside a traced async generator reaches the consumer and fails the span."""

        @atrace.traced("failing-gen")
        async def bad() -> AsyncIterator[int]:
            yield 1
            raise RuntimeError("gen broke")

        with pytest.raises(RuntimeError, match="gen broke"):
            async for _ in bad():
                pass
        await atrace.aflush()
        assert by_name(configure_memory.spans(), "failing-gen")["status"] == 2

    async def test_send_and_return_value(self, configure_memory: MemorySink) -> None:
        """Values sent into a traced generator arrive, and its return value is kept."""

        @atrace.traced
        def echo() -> Iterator[int]:
            total = 0
            while total < 5:
                total += yield total
            return total

        g = echo()
        assert next(g) == 0
        assert g.send(2) == 2
        with pytest.raises(StopIteration) as stop:
            g.send(3)
        assert stop.value.value == 5


class TestLongSpans:
    async def test_running_span_gets_start_row_then_end_row(self, memory_sink: MemorySink) -> None:
        """A span still running at a flush is visible (start row); its end is then a second row."""
        atrace.configure(service="test", sink=memory_sink, flush_interval=0.01)
        async with atrace.span("long") as sp:
            await asyncio.sleep(0.1)
            await atrace.aflush()
            kinds = [r["kind"] for r in memory_sink.records() if r["span_id"] == sp.span_id]
            assert kinds == [1]
        await atrace.aflush()
        rows = [r for r in memory_sink.records() if r["span_id"] == sp.span_id]
        assert [r["kind"] for r in rows] == [1, 2]
        assert rows[1]["duration_ns"] >= 100_000_000 and rows[1]["status"] == Status.UNSET
        assert rows[0]["ts"] == rows[1]["ts"]
        # Both rows carry the span's kind and trace flags.
        assert [r["span_kind"] for r in rows] == [SpanKind.INTERNAL] * 2
        assert [r["trace_flags"] for r in rows] == [3, 3]

    async def test_short_span_is_one_row(self, configure_memory: MemorySink) -> None:
        """A span that ends before any flush costs exactly one row."""
        with atrace.span("short"):
            pass
        await atrace.aflush()
        assert [r["kind"] for r in configure_memory.records()] == [3]
