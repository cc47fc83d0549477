"""Thread and executor instrumentation: the current span follows, reversibly and only when asked."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import atrace
from atrace._emit import instrument
from atrace._emit.instrument import instrument_threads, threads_instrumented, uninstrument_threads
from atrace.testing import Capture, capture

# Python 3.14 runs a thread in its own ``_context``, which start() alone can fill.
PATCHED = [
    (threading.Thread, "start"),
    *([] if sys.version_info >= (3, 14) else [(threading.Thread, "_bootstrap_inner")]),
    (ThreadPoolExecutor, "submit"),
]


def _originals() -> list[Any]:
    return [cls.__dict__[name] for cls, name in PATCHED]


ORIGINALS = _originals()


@pytest.fixture(autouse=True)
def cap() -> Iterator[Capture]:
    """Every record of the test, in memory (no flusher thread, no database)."""
    with capture() as c:
        yield c


@pytest.fixture(autouse=True)
def _never_left_instrumented() -> Iterator[None]:
    """Each test ends with the original methods in place, whatever it did."""
    yield
    uninstrument_threads()
    assert _originals() == ORIGINALS


@pytest.fixture
def instrumented() -> Iterator[None]:
    """Threads and executors instrumented for the test."""
    instrument_threads()
    yield
    uninstrument_threads()


def _in_thread(fn: Callable[[], Any], thread_cls: type[threading.Thread] = threading.Thread) -> Any:
    out: list[Any] = []
    t = thread_cls(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


class RunOverride(threading.Thread):
    """A Thread subclass with its own run(), as many libraries write them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Any = "not run"

    def run(self) -> None:
        self.seen = atrace.current_span()


class TestThreads:
    def test_plain_thread_gets_the_span(self, instrumented: None) -> None:
        """A threading.Thread started inside a span runs its target under that span."""
        with atrace.span("p") as sp:
            assert _in_thread(atrace.current_span) is sp

    def test_context_is_taken_at_start(self, instrumented: None) -> None:
        """The span is the one current at start(), not at construction."""
        out: list[Any] = []
        t = threading.Thread(target=lambda: out.append(atrace.current_span()))
        with atrace.span("at start") as sp:
            t.start()
        t.join()
        assert out == [sp]

    def test_subclass_overriding_run(self, instrumented: None) -> None:
        """A subclass whose run() replaces Thread.run still runs under the span."""
        t = RunOverride()
        with atrace.span("p") as sp:
            t.start()
        t.join()
        assert t.seen is sp

    def test_timer(self, instrumented: None) -> None:
        """threading.Timer (a subclass with its own run) carries the span too."""
        out: list[Any] = []
        with atrace.span("p") as sp:
            timer = threading.Timer(0, lambda: out.append(atrace.current_span()))
            timer.start()
        timer.join()
        assert out == [sp]

    def test_thread_changes_stay_in_the_thread(self, instrumented: None) -> None:
        """A span entered in the thread does not leak back to the starting thread."""
        with atrace.span("p") as sp:

            def work() -> Any:
                with atrace.span("in thread"):
                    pass
                return atrace.current_span()

            assert _in_thread(work) is sp
            assert atrace.current_span() is sp

    def test_classes_untouched(self, instrumented: None) -> None:
        """Only methods are patched: the classes, isinstance and subclasses are as they were."""
        t = threading.Thread(target=lambda: None)
        assert type(t) is threading.Thread and isinstance(t, threading.Thread)
        assert issubclass(atrace.Thread, threading.Thread)
        assert threading.Thread.start.__name__ == "start"

    def test_atrace_threads_do_not_inherit(self, instrumented: None) -> None:
        """Threads atrace starts for itself (named atrace-*) never run under a user's span."""
        out: list[Any] = []
        with atrace.span("p"):
            t = threading.Thread(target=lambda: out.append(atrace.current_span()), name="atrace-x")
            t.start()
        t.join()
        assert out == [None]

    def test_without_instrumentation_the_span_stays_behind(self) -> None:
        """Uninstrumented, a plain thread does not see the span (what instrumenting changes)."""
        assert not threads_instrumented()
        with atrace.span("p"):
            assert _in_thread(atrace.current_span) is None
            t = RunOverride()
            t.start()
            t.join()
        assert t.seen is None


class TestExecutors:
    def test_submit(self, instrumented: None) -> None:
        """ThreadPoolExecutor.submit runs the callable under the submitter's span."""
        with ThreadPoolExecutor(2) as pool, atrace.span("p") as sp:
            assert pool.submit(atrace.current_span).result() is sp

    def test_map(self, instrumented: None) -> None:
        """Executor.map (built on submit) carries the span as well."""
        with ThreadPoolExecutor(2) as pool, atrace.span("p") as sp:
            seen = list(pool.map(lambda _: atrace.current_span(), range(4)))
        assert seen == [sp] * 4

    def test_worker_threads_keep_no_span(self, instrumented: None) -> None:
        """A worker started by a job in a span does not keep that span for later jobs."""
        original_submit = ORIGINALS[-1]
        with ThreadPoolExecutor(1) as pool:
            with atrace.span("first"):
                pool.submit(lambda: None).result()  # starts the pool's only worker
            assert pool.submit(atrace.current_span).result() is None
            # A job that bypasses the patch runs in the worker's own context: it must be empty.
            assert original_submit(pool, atrace.current_span).result() is None

    def test_arguments_pass_through(self, instrumented: None) -> None:
        """Positional and keyword arguments reach the callable unchanged, even named fn."""

        def f(a: int, /, *, fn: str) -> tuple[int, str]:
            return a, fn

        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(f, 1, fn="x").result() == (1, "x")

    async def test_run_in_executor(self, instrumented: None) -> None:
        """loop.run_in_executor (default and given executor) runs under the awaiting span."""
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as pool:
            async with atrace.span("p") as sp:
                default = await loop.run_in_executor(None, atrace.current_span)
                given = await loop.run_in_executor(pool, atrace.current_span)
        assert default is sp and given is sp

    async def test_to_thread_runs_once(self, instrumented: None) -> None:
        """asyncio.to_thread, which copies the context itself, runs the function exactly once."""
        calls: list[Any] = []

        def f() -> Any:
            calls.append(atrace.current_span())
            return len(calls)

        async with atrace.span("p") as sp:
            assert await asyncio.to_thread(f) == 1
        assert calls == [sp]

    async def test_without_instrumentation_the_span_stays_behind(self) -> None:
        """Uninstrumented, submit and run_in_executor do not see the span."""
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as pool:
            async with atrace.span("p"):
                assert pool.submit(atrace.current_span).result() is None
                assert await loop.run_in_executor(pool, atrace.current_span) is None


class TestTree:
    async def test_nested_spans_in_threads_and_jobs_are_children(
        self, instrumented: None, cap: Capture
    ) -> None:
        """Spans opened in a thread or a pool job are children of the submitter's span."""

        def child(name: str) -> None:
            with atrace.span(name), atrace.span(f"{name}.inner"):
                pass

        with ThreadPoolExecutor(2) as pool:
            async with atrace.span("root"):
                t = threading.Thread(target=child, args=("thread",))
                t.start()
                t.join()
                pool.submit(child, "job").result()
                await asyncio.get_running_loop().run_in_executor(pool, child, "loop")
        root = cap.span("root")
        assert {s.name for s in cap.children(root)} == {"thread", "job", "loop"}
        for name in ("thread", "job", "loop"):
            outer = cap.span(name)
            assert outer.trace_id == root.trace_id and outer.parent_id == root.span_id
            assert cap.span(f"{name}.inner").parent_id == outer.span_id
        assert cap.tree() == "root\n  thread\n    thread.inner\n  job\n    job.inner\n" + (
            "  loop\n    loop.inner"
        )

    def test_without_instrumentation_thread_spans_are_roots(self, cap: Capture) -> None:
        """Uninstrumented, a span opened in a thread starts a trace of its own."""
        with atrace.span("root"):
            _in_thread(lambda: atrace.span("orphan").__enter__().__exit__(None, None, None))
        assert cap.span("orphan").parent_id is None
        assert cap.span("orphan").trace_id != cap.span("root").trace_id


class TestHelpers:
    @pytest.mark.parametrize("patched", [False, True], ids=["plain", "instrumented"])
    async def test_explicit_helpers_work_either_way(self, patched: bool) -> None:
        """atrace.Thread, wrap and run_in_executor carry the span with or without instrumenting."""
        if patched:
            instrument_threads()
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as pool:
            async with atrace.span("p") as sp:
                via_thread = _in_thread(atrace.current_span, atrace.Thread)
                wrapped = atrace.wrap(atrace.current_span)
                via_helper = await atrace.run_in_executor(pool, atrace.current_span)
            via_wrap = _in_thread(wrapped)
            assert await loop.run_in_executor(pool, wrapped) is sp
        assert (via_thread, via_wrap, via_helper) == (sp, sp, sp)


class TestReversible:
    def test_uninstrument_restores_the_very_functions(self) -> None:
        """uninstrument_threads puts back the identical function objects it replaced."""
        instrument_threads()
        assert threads_instrumented()
        patched = _originals()
        assert all(p is not o for p, o in zip(patched, ORIGINALS, strict=True))
        uninstrument_threads()
        assert not threads_instrumented()
        assert all(now is o for now, o in zip(_originals(), ORIGINALS, strict=True))
        with atrace.span("p"):
            assert _in_thread(atrace.current_span) is None

    def test_idempotent(self) -> None:
        """Instrumenting twice patches once; uninstrumenting twice is harmless."""
        instrument_threads()
        first = _originals()
        instrument_threads()
        assert _originals() == first
        uninstrument_threads()
        uninstrument_threads()
        assert _originals() == ORIGINALS

    def test_concurrent_toggling(self) -> None:
        """Many threads instrumenting and uninstrumenting at once leave a consistent state."""
        barrier = threading.Barrier(8)

        def toggle(i: int) -> None:
            barrier.wait()
            for _ in range(50):
                if i % 2:
                    instrument_threads()
                else:
                    uninstrument_threads()

        workers = [threading.Thread(target=toggle, args=(i,)) for i in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        instrument_threads()
        assert all(p is not o for p, o in zip(_originals(), ORIGINALS, strict=True))
        with atrace.span("p") as sp:
            assert _in_thread(atrace.current_span) is sp
        uninstrument_threads()
        assert _originals() == ORIGINALS

    def test_wrapped_again_by_another_library(self) -> None:
        """If another library wraps the patched start(), uninstrument leaves theirs working."""
        instrument_threads()
        ours = threading.Thread.__dict__["start"]
        calls: list[str] = []

        def theirs(self: threading.Thread) -> None:
            calls.append(self.name)
            ours(self)

        our_submit = ThreadPoolExecutor.__dict__["submit"]

        def their_submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any) -> Any:
            calls.append("submit")
            return our_submit(self, fn, *args)

        threading.Thread.start = theirs  # type: ignore[method-assign]
        ThreadPoolExecutor.submit = their_submit  # type: ignore[method-assign,assignment]
        try:
            uninstrument_threads()
            assert threading.Thread.__dict__["start"] is theirs
            assert ThreadPoolExecutor.__dict__["submit"] is their_submit
            with ThreadPoolExecutor(1) as pool, atrace.span("p"):
                # Their wrappers still run; ours pass straight through now.
                assert _in_thread(atrace.current_span) is None
                assert pool.submit(atrace.current_span).result() is None
            assert calls.count("submit") == 1 and len(calls) == 3  # + our thread + the worker
        finally:
            threading.Thread.start = ORIGINALS[0]  # type: ignore[method-assign]
            ThreadPoolExecutor.submit = ORIGINALS[-1]  # type: ignore[method-assign]

    def test_import_is_light(self) -> None:
        """Importing the instrument module loads neither logging, concurrent.futures nor asyncio."""
        heavy = ("logging", "concurrent.futures", "asyncio")
        code = (
            "import sys, atrace._emit.instrument; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]"

    def test_all_is_the_public_surface(self) -> None:
        """The module's __all__ names exactly the public functions it defines."""
        defined = {
            k
            for k, v in vars(instrument).items()
            if not k.startswith("_")
            and getattr(v, "__module__", None) == instrument.__name__
            and callable(v)
        }
        assert isinstance(instrument.__all__, tuple)
        assert defined == set(instrument.__all__)
