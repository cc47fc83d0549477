"""Context: tasks inherit, siblings are isolated, threads and executors via helpers, W3C headers."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import atrace
from atrace.testing import MemorySink


class TestTasks:
    async def test_child_task_inherits_parent_span(self, configure_memory: MemorySink) -> None:
        """A task created inside a span sees that span as current."""
        async with atrace.span("parent") as parent:
            seen = await asyncio.create_task(_current())
        assert seen is parent

    async def test_sibling_tasks_isolated(self, configure_memory: MemorySink) -> None:
        """Concurrent sibling tasks never see each other's spans."""
        barrier = asyncio.Barrier(2) if hasattr(asyncio, "Barrier") else None

        async def worker(name: str) -> tuple[str, str | None]:
            async with atrace.span(name) as sp:
                if barrier is not None:
                    await barrier.wait()
                else:
                    await asyncio.sleep(0.01)
                cur = atrace.current_span()
                assert cur is sp
                return name, getattr(cur, "name", None)

        results = await asyncio.gather(worker("a"), worker("b"))
        assert results == [("a", "a"), ("b", "b")]

    async def test_to_thread_keeps_parent(self, configure_memory: MemorySink) -> None:
        """asyncio.to_thread copies the context, so the thread sees the span."""
        async with atrace.span("p") as sp:
            assert await asyncio.to_thread(atrace.current_span) is sp

    async def test_run_in_executor_helper(self, configure_memory: MemorySink) -> None:
        """The executor helper carries the span where plain run_in_executor does not."""
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as pool:
            async with atrace.span("p") as sp:
                plain = await loop.run_in_executor(pool, atrace.current_span)
                helped = await atrace.run_in_executor(pool, atrace.current_span)
        assert plain is None
        assert helped is sp

    async def test_thread_helpers(self, configure_memory: MemorySink) -> None:
        """atrace.Thread and atrace.wrap run their target under the creating span."""
        seen: dict[str, object] = {}
        with atrace.span("p") as sp:
            t = atrace.Thread(target=lambda: seen.setdefault("thread", atrace.current_span()))
            wrapped = atrace.wrap(lambda: seen.setdefault("wrap", atrace.current_span()))
        t.start()
        t.join()
        plain = threading.Thread(target=lambda: seen.setdefault("plain", atrace.current_span()))
        plain.start()
        plain.join()
        th = threading.Thread(target=wrapped)
        th.start()
        th.join()
        assert seen == {"thread": sp, "wrap": sp, "plain": None}

    async def test_spans_from_threads_reach_the_sink(self, configure_memory: MemorySink) -> None:
        """Spans emitted in other threads are written with the right parent."""
        with atrace.span("root") as root:
            threads = [atrace.Thread(target=_thread_work, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        await atrace.aflush()
        children = [r for r in configure_memory.spans() if r["name"].startswith("thread-")]
        assert len(children) == 4
        assert {r["parent_id"] for r in children} == {root.span_id}


def _thread_work(i: int) -> None:
    with atrace.span(f"thread-{i}"):
        pass


async def _current() -> object:
    return atrace.current_span()


class TestForeignContextExit:
    async def test_async_generator_closed_elsewhere(self, configure_memory: MemorySink) -> None:
        """A span inside an async generator closed from another task never raises a Token error."""

        async def gen() -> AsyncIterator[int]:
            async with atrace.span("in-gen"):
                yield 1
                yield 2

        agen = gen()
        assert await agen.__anext__() == 1
        # Finalised from another task, i.e. another Context, as asyncio's asyncgen hooks do.
        await asyncio.create_task(agen.aclose())
        await atrace.aflush()
        assert [r["name"] for r in configure_memory.spans()] == ["in-gen"]

    async def test_sync_generator_collected(self, configure_memory: MemorySink) -> None:
        """A generator left open inside a span and garbage-collected later exits without error."""

        def gen() -> Iterator[int]:
            with atrace.span("in-sync-gen"):
                yield 1
                yield 2

        def start() -> None:
            g = gen()
            next(g)
            holder.append(g)

        holder: list[Iterator[int]] = []
        import contextvars

        contextvars.copy_context().run(start)
        holder.clear()
        gc.collect()
        await atrace.aflush()
        assert [r["name"] for r in configure_memory.spans()] == ["in-sync-gen"]
        assert atrace.current_span() is None

    async def test_task_cancelled_inside_span(self, configure_memory: MemorySink) -> None:
        """Cancelling a task whose span is open neither raises a Token error nor leaks the span."""

        async def work() -> None:
            async with atrace.span("outer"), atrace.span("inner"):
                await asyncio.sleep(10)

        tasks = [asyncio.create_task(work()) for _ in range(10)]
        await asyncio.sleep(0.01)
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert atrace.current_span() is None
        await atrace.aflush()
        assert len(configure_memory.spans()) == 20


class TestTraceContext:
    async def test_given_trace_id(self, configure_memory: MemorySink) -> None:
        """Spans inside trace_context(trace_id) join that trace."""
        tid = "4bf92f3577b34da6a3ce929d0e0e4736"
        with atrace.trace_context(tid):
            assert atrace.current_trace_id() == tid
            with atrace.span("joined"):
                pass
        assert atrace.current_trace_id() is None
        await atrace.aflush()
        assert configure_memory.spans()[0]["trace_id"] == tid

    async def test_new_trace_per_block(self, configure_memory: MemorySink) -> None:
        """trace_context() without an id opens a fresh trace each time."""
        with atrace.trace_context() as a:
            pass
        async with atrace.trace_context() as b:
            pass
        assert a.trace_id != b.trace_id

    def test_invalid_trace_id(self) -> None:
        """An invalid trace id is a ConfigError naming trace_id."""
        with pytest.raises(atrace.ConfigError, match="trace_id"):
            atrace.trace_context("0" * 32)


class TestW3C:
    def test_inject_extract_round_trip(self) -> None:
        """traceparent written for a span parses back to the same trace, span and flags."""
        with atrace.trace_context(), atrace.span("x") as sp:
            headers = atrace.inject({})
        ctx = atrace.extract(headers)
        assert ctx is not None
        assert ctx.trace_id == sp.trace_id and ctx.span_id == sp.span_id
        # A trace atrace starts is sampled, and its id's right-most 7 bytes are random.
        assert headers["traceparent"].endswith("-03") and ctx.flags == sp.flags == 3

    @pytest.mark.parametrize(
        "value",
        [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ],
    )
    def test_invalid_traceparent_ignored(self, value: str) -> None:
        """traceparent values that break the W3C rules are ignored."""
        assert atrace.parse_traceparent(value) is None

    def test_future_version_and_x_trace_id(self) -> None:
        """A future version with extra fields is accepted; X-Trace-ID is the fallback."""
        ctx = atrace.parse_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-xyz"
        )
        assert ctx is not None and ctx.sampled is False
        fallback = atrace.extract({"X-Trace-ID": "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"})
        assert fallback is not None and fallback.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert fallback.span_id is None


class TestSpanContext:
    def test_positional_frozen_value(self) -> None:
        """SpanContext(trace_id, span_id) builds positionally, cannot change, compares by value."""
        tid = "4bf92f3577b34da6a3ce929d0e0e4736"
        ctx = atrace.SpanContext(tid, 0x00F067AA0BA902B7)
        assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (tid, 0x00F067AA0BA902B7, True)
        assert ctx == atrace.SpanContext(tid, 0x00F067AA0BA902B7, True)
        assert not hasattr(ctx, "__dict__")
        with pytest.raises(AttributeError):
            ctx.span_id = 1  # type: ignore[misc]
        assert ctx.span_id == 0x00F067AA0BA902B7
        assert hash(ctx) == hash(atrace.SpanContext(tid, 0x00F067AA0BA902B7))
        assert ctx != atrace.SpanContext(tid, 1) and ctx.replace(span_id=1).span_id == 1
        assert pickle.loads(pickle.dumps(ctx)) == ctx
        assert repr(ctx) == f"SpanContext(trace_id={tid!r}, span_id='00f067aa0ba902b7')"

    async def test_spans_under_it_take_its_ids(self, configure_memory: MemorySink) -> None:
        """A span opened under a SpanContext parent gets its trace id and its span as parent."""
        tid = "4bf92f3577b34da6a3ce929d0e0e4736"
        with atrace.trace_context(tid, parent_id="00f067aa0ba902b7") as ctx:
            assert isinstance(ctx, atrace.SpanContext)
            with atrace.span("child"):
                pass
        await atrace.aflush()
        span = configure_memory.spans()[0]
        assert span["trace_id"] == tid and span["parent_id"] == 0x00F067AA0BA902B7
