"""Tracer: service override, bound attributes, span kinds, the classic log(message, attr), remote
parent."""

from __future__ import annotations

import atrace
from atrace.testing import MemorySink


class TestTracer:
    async def test_service_and_bound_attrs(self, configure_memory: MemorySink) -> None:
        """A tracer's records carry its service and bound attributes; bind returns a new tracer."""
        base = atrace.Tracer(service="billing", region="eu")
        child = base.bind(job=7)
        assert base.bound == {"region": "eu"} and child.bound == {"region": "eu", "job": 7}
        with child.span("run", step=1):
            child.info("started", extra_key="x")
        base.warning("plain")
        await atrace.aflush()
        recs = {r["message"] or r["name"]: r for r in configure_memory.records()}
        assert recs["run"]["service"] == "billing"
        assert recs["run"]["attrs"] == {"region": "eu", "job": 7, "step": 1}
        assert recs["started"]["attrs"] == {"region": "eu", "job": 7, "extra_key": "x"}
        assert recs["started"]["span_id"] == recs["run"]["span_id"]
        assert recs["plain"]["level"] == 30 and recs["plain"]["attrs"] == {"region": "eu"}
        assert recs["plain"]["location"].split(":")[0].endswith("test_tracer.py")

    async def test_classic_log_call(self, configure_memory: MemorySink) -> None:
        """log(message, attr) takes a dict or a JSON string; bad JSON is kept verbatim."""
        t = atrace.Tracer(service="legacy")
        t.log("dict", {"a": 1})
        t.log("json", '{"b": 2}', level="error")
        t.log("not json", "{oops")
        t.log("list json", "[1, 2]")
        await atrace.aflush()
        rows = {r["message"]: r for r in configure_memory.logs()}
        assert rows["dict"]["attrs"] == {"a": 1}
        assert rows["json"]["attrs"] == {"b": 2} and rows["json"]["level"] == 40
        assert rows["not json"]["attrs"] == {"attr": "{oops"}
        assert rows["list json"]["attrs"] == {"attr": [1, 2]}

    async def test_parent_id_attaches_root_spans(self, configure_memory: MemorySink) -> None:
        """A tracer's spans join its parent_id/trace_id when nothing is current."""
        tid = "0af7651916cd43dd8448eb211c80319c"
        t = atrace.Tracer(service="worker", parent_id="b7ad6b7169203331", trace_id=tid)
        async with t.span("job"):
            pass
        t.info("orphan log")
        await atrace.aflush()
        span = configure_memory.spans()[0]
        assert span["trace_id"] == tid
        assert (
            atrace.parse_traceparent(f"00-{tid}-b7ad6b7169203331-01").span_id == span["parent_id"]
        )
        log = configure_memory.logs()[0]
        assert log["trace_id"] == tid

    async def test_levels_and_amit(self, configure_memory: MemorySink) -> None:
        """Every level method exists on a tracer, plus amit and exception."""
        t = atrace.Tracer()
        t.debug("d")
        t.info("i")
        t.warn("w")
        t.error("e")
        t.critical("c")
        t.fatal("f")
        try:
            raise ValueError("v")
        except ValueError:
            t.exception("x")
        await t.amit("a", level="error", k=1)
        await atrace.aflush()
        rows = configure_memory.logs()
        assert [r["level"] for r in rows] == [10, 20, 30, 40, 50, 50, 40, 40]
        assert rows[6]["error_type"] == "ValueError"
        assert rows[7]["attrs"] == {"k": 1}
        assert all(r["service"] == "test" for r in rows)

    async def test_traced_method(self, configure_memory: MemorySink) -> None:
        """tracer.traced wraps a function in a span of the tracer's service."""
        t = atrace.Tracer(service="svc", team="a")

        @t.traced("work")
        async def work() -> int:
            return 1

        assert await work() == 1
        await atrace.aflush()
        row = configure_memory.spans()[0]
        assert (row["name"], row["service"], row["attrs"]) == ("work", "svc", {"team": "a"})

    async def test_span_and_traced_kind(self, configure_memory: MemorySink) -> None:
        """tracer.span and tracer.traced take a kind, as atrace.span does; the default is
        internal, and the kind does not join the bound attributes."""
        import pytest

        t = atrace.Tracer(service="svc", team="a")
        with t.span("serve", kind="server", step=1):
            pass
        with t.span("plain"):
            pass

        @t.traced("consume", kind=atrace.SpanKind.CONSUMER)
        def consume() -> None:
            pass

        @t.traced(kind="producer")
        def produce() -> None:
            pass

        consume()
        produce()
        await atrace.aflush()
        rows = {r["name"].rsplit(".", 1)[-1]: r for r in configure_memory.spans()}
        assert {name: r["span_kind"] for name, r in rows.items()} == {
            "serve": 2,
            "plain": 1,
            "consume": 5,
            "produce": 4,
        }
        assert rows["serve"]["attrs"] == {"team": "a", "step": 1}
        assert all(r["service"] == "svc" for r in rows.values())
        with pytest.raises(atrace.ConfigError, match="kind"):
            t.span("bad", kind="sideways")
        with pytest.raises(atrace.ConfigError, match="kind"):
            t.traced(kind=9)

    def test_invalid_parent(self) -> None:
        """A malformed parent_id is a ConfigError naming parent_id."""
        import pytest

        with pytest.raises(atrace.ConfigError, match="parent_id"):
            atrace.Tracer(parent_id="nothex")
