"""Log calls: levels, attributes, span links, every way of attaching an error, amit."""

from __future__ import annotations

import asyncio

import pytest

import atrace
from atrace.testing import MemorySink


class TestLevels:
    async def test_every_level_function(self, configure_memory: MemorySink) -> None:
        """Each level function writes its logging number; warn and fatal are aliases."""
        atrace.debug("d")
        atrace.info("i")
        atrace.warning("w")
        atrace.warn("w2")
        atrace.error("e")
        atrace.critical("c")
        atrace.fatal("f")
        await atrace.aflush()
        got = [(r["message"], r["level"]) for r in configure_memory.logs()]
        assert got == [("d", 10), ("i", 20), ("w", 30), ("w2", 30), ("e", 40), ("c", 50), ("f", 50)]

    async def test_attrs_name_location(self, configure_memory: MemorySink) -> None:
        """Keyword arguments become attributes; name is the caller's module; location its line."""
        atrace.info("hello", user="ada", n=2)
        line = self.test_attrs_name_location.__code__.co_firstlineno + 2
        await atrace.aflush()
        (row,) = configure_memory.logs()
        assert row["attrs"] == {"user": "ada", "n": 2}
        assert row["name"] == __name__
        assert row["location"].endswith(f"test_log.py:{line}")
        assert row["kind"] == 0 and row["span_id"] is None and row["trace_id"] is None

    async def test_log_linked_to_current_span(self, configure_memory: MemorySink) -> None:
        """A log inside a span carries that span's id and trace id."""
        async with atrace.span("s") as sp:
            atrace.info("inside")
        await atrace.aflush()
        (log,) = configure_memory.logs()
        assert (log["trace_id"], log["span_id"], log["parent_id"]) == (
            sp.trace_id,
            sp.span_id,
            None,
        )

    async def test_module_and_extra(self, configure_memory: MemorySink) -> None:
        """module= overrides the logger name; extra= merges into the attributes."""
        atrace.info("m", module="billing.worker", extra={"a": 1, "b": 2}, b=3)
        await atrace.aflush()
        (row,) = configure_memory.logs()
        assert row["name"] == "billing.worker"
        assert row["attrs"] == {"a": 1, "b": 3}

    async def test_non_string_message(self, configure_memory: MemorySink) -> None:
        """A message that is not a string is stored as its str()."""
        atrace.info({"k": 1})
        await atrace.aflush()
        assert configure_memory.logs()[0]["message"] == "{'k': 1}"


class TestErrors:
    async def test_exc_info_inside_except(self, configure_memory: MemorySink) -> None:
        """exc_info=True inside an except block records that exception."""
        try:
            raise ValueError("bad")
        except ValueError:
            atrace.error("failed", exc_info=True)
        await atrace.aflush()
        (row,) = configure_memory.logs()
        assert row["error_type"] == "ValueError" and row["error_message"] == "bad"
        assert 'raise ValueError("bad")' in row["stack_trace"]

    async def test_exc_info_outside_except_is_the_callers_stack(
        self, configure_memory: MemorySink
    ) -> None:
        """exc_info=True with no exception being handled records the caller's stack."""
        atrace.warning("where am I", exc_info=True)
        await atrace.aflush()
        (row,) = configure_memory.logs()
        assert row["error_type"] is None
        assert row["stack_trace"].startswith("Stack (most recent call last)")
        assert "test_exc_info_outside_except_is_the_callers_stack" in row["stack_trace"]
        assert "atrace/log.py" not in row["stack_trace"]

    async def test_exception_function(self, configure_memory: MemorySink) -> None:
        """exception() logs at error level with the handled exception."""
        try:
            {}["k"]
        except KeyError:
            atrace.exception("lookup failed")
        await atrace.aflush()
        (row,) = configure_memory.logs()
        assert row["level"] == 40 and row["error_type"] == "KeyError"

    async def test_exception_argument_and_explicit_text(self, configure_memory: MemorySink) -> None:
        """exception=e records a given exception; error_message/stack_trace override the text."""
        atrace.error("given", exception=RuntimeError("boom"))
        atrace.error("explicit", error_message="disk full", stack_trace="frame 1\nframe 2")
        atrace.error("both", exception=OSError("x"), error_message="custom")
        await atrace.aflush()
        rows = {r["message"]: r for r in configure_memory.logs()}
        assert rows["given"]["error_type"] == "RuntimeError"
        assert rows["given"]["error_message"] == "boom"
        assert rows["explicit"]["error_message"] == "disk full"
        assert rows["explicit"]["stack_trace"] == "frame 1\nframe 2"
        assert rows["both"]["error_type"] == "OSError"
        assert rows["both"]["error_message"] == "custom"


class TestAmit:
    async def test_amit_levels(self, configure_memory: MemorySink) -> None:
        """amit takes a level name or number."""
        assert await atrace.amit("a", level="warning", k=1)
        assert await atrace.amit("b", level=35)
        await atrace.aflush()
        assert [(r["message"], r["level"], r["attrs"]) for r in configure_memory.logs()] == [
            ("a", 30, {"k": 1}),
            ("b", 35, None),
        ]
        with pytest.raises(atrace.ConfigError):
            await atrace.amit("c", level="loud")

    async def test_block_policy_waits_instead_of_dropping(self, memory_sink: MemorySink) -> None:
        """Under the block policy amit waits for room; nothing is dropped, everything is written."""
        atrace.configure(
            service="t",
            sink=memory_sink,
            capacity=10,
            batch_size=5,
            policy="block",
            flush_interval=0.01,
        )
        await asyncio.gather(*(atrace.amit(f"m{i}") for i in range(200)))
        await atrace.aflush()
        m = atrace.metrics()
        assert m.dropped == 0
        assert sorted(r["message"] for r in memory_sink.logs()) == sorted(
            f"m{i}" for i in range(200)
        )

    async def test_sync_emit_under_block_drops_newest(self, memory_sink: MemorySink) -> None:
        """A sync emit cannot wait: under block it drops (counted) rather than stall the caller."""
        atrace.configure(
            service="t", sink=memory_sink, capacity=5, policy="block", flush_interval=60
        )
        for i in range(20):
            atrace.info(f"m{i}")
        m = atrace.metrics()
        assert m.accepted == 20 and m.dropped == 15
        await atrace.aflush()
        assert [r["message"] for r in memory_sink.logs()] == [f"m{i}" for i in range(5)]
