"""Test capture: records in memory at once, pleasant asserts, the old configuration restored."""

from __future__ import annotations

import asyncio
import importlib.metadata
import pathlib
import threading
from collections.abc import Iterator

import orjson
import pytest

import atrace
from atrace import pytest_plugin, testing
from atrace._formats.resources import known
from atrace._pipeline import state
from atrace._records import COLUMNS
from atrace.testing import Capture, FakeClock, MemorySink, Record, capture

pytest_plugins = ["pytester"]


@pytest.fixture
def cap() -> Iterator[Capture]:
    """A capture active for the whole test."""
    with capture() as c:
        yield c


def _checkout(order_id: int) -> None:
    with atrace.span("checkout", order_id=order_id):
        with atrace.span("charge", amount=12.5):
            atrace.info("charged", card="visa")
        with atrace.span("ship"):
            pass


class TestRecords:
    def test_visible_without_flushing(self, cap: Capture) -> None:
        """Spans and logs are there as soon as the code returns: no flush, no wait."""
        _checkout(42)
        assert [s.name for s in cap.spans] == ["charge", "ship", "checkout"]
        assert cap.messages == ["charged"]
        assert len(cap.records) == 4

    def test_span_fields(self, cap: Capture) -> None:
        """A span record has its name, attributes, status, duration, ids, kind and flags."""
        with atrace.span("work", n=1) as sp:
            pass
        rec = cap.span("work")
        # Not failed and no status set: unset (OpenTelemetry's rule), at info level.
        assert (rec.name, rec.attrs, rec.status, rec.level, rec.kind) == (
            "work",
            {"n": 1},
            0,
            20,
            3,
        )
        assert (rec.span_kind, rec.trace_state, rec.trace_flags, rec.status_message) == (
            1,
            None,
            3,
            None,
        )
        assert (rec.trace_id, rec.span_id, rec.parent_id) == (sp.trace_id, sp.span_id, None)
        assert rec.duration_ns == sp.duration_ns and rec.duration_ns is not None
        assert rec.is_span and not rec.is_log and not rec.failed
        assert rec.as_dict()["name"] == "work"

    def test_log_fields(self, cap: Capture) -> None:
        """A log record has level, message, attributes and the span it was emitted in."""
        with atrace.span("s") as sp:
            atrace.warning("careful", k="v")
        (log,) = cap.logs
        assert (log.level, log.message, log.attrs, log.name) == (
            30,
            "careful",
            {"k": "v"},
            __name__,
        )
        assert (log.trace_id, log.span_id) == (sp.trace_id, sp.span_id)
        assert cap.logs_in(cap.span("s")) == [log]

    def test_records_are_frozen(self, cap: Capture) -> None:
        """Records are immutable values."""
        atrace.info("x")
        with pytest.raises(AttributeError):
            cap.logs[0].message = "y"  # type: ignore[misc]

    def test_nested_parent_links(self, cap: Capture) -> None:
        """Children point at their parent, and children() lists them by start time."""
        _checkout(1)
        root = cap.span("checkout")
        assert [c.name for c in cap.children(root)] == ["charge", "ship"]
        assert cap.span("charge").parent_id == root.span_id
        assert {s.trace_id for s in cap.spans} == {root.trace_id}
        assert cap.children(cap.span("ship")) == []

    def test_tree(self, cap: Capture) -> None:
        """tree() prints span names by nesting and start time; logs=True adds the messages."""
        _checkout(1)
        with atrace.span("second trace"):
            pass
        assert cap.tree() == "checkout\n  charge\n  ship\nsecond trace"
        assert cap.tree(logs=True) == "checkout\n  charge\n    - charged\n  ship\nsecond trace"

    def test_errors(self, cap: Capture) -> None:
        """A failed span and an exception log carry status, type, message and stack."""
        with pytest.raises(ValueError), atrace.span("fails"):
            raise ValueError("nope")
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            atrace.exception("divided")
        failed = cap.span("fails")
        assert (failed.status, failed.level, failed.failed) == (2, 40, True)
        assert (failed.error_type, failed.error_message) == ("ValueError", "nope")
        assert failed.stack_trace is not None and 'raise ValueError("nope")' in failed.stack_trace
        (log,) = cap.logs
        assert (log.error_type, log.level) == ("ZeroDivisionError", 40)

    def test_status_set_by_the_code(self, cap: Capture) -> None:
        """set_status("error", msg) fails a span with a status message and no error;
        set_status("ok", msg) makes it OK and drops the message."""
        with atrace.span("refused", kind="server") as sp:
            sp.set_status("error", "quota exceeded")
        with atrace.span("fine") as sp:
            sp.set_status("ok", "ignored")
        refused, fine = cap.span("refused"), cap.span("fine")
        assert (refused.status, refused.level, refused.failed) == (2, 40, True)
        assert refused.status_message == "quota exceeded" and refused.span_kind == 2
        assert (refused.error_type, refused.error_message, refused.stack_trace) == (None,) * 3
        assert (fine.status, fine.failed, fine.status_message) == (1, False, None)

    def test_find_by_name_and_attributes(self, cap: Capture) -> None:
        """find() filters spans by name and by attribute values."""
        for i in range(3):
            with atrace.span("job", i=i, even=i % 2 == 0):
                pass
        assert len(cap.find("job")) == 3
        assert [s.attrs["i"] for s in cap.find("job", even=True)] == [0, 2]
        assert cap.find("job", missing=1) == []
        assert len(cap.find()) == 3
        assert cap.span("job", i=1).attrs == {"i": 1, "even": False}

    def test_span_missing_lists_what_exists(self, cap: Capture) -> None:
        """span() of a missing name fails with the spans that were captured."""
        _checkout(7)
        with pytest.raises(AssertionError) as info:
            cap.span("refund")
        text = str(info.value)
        assert "exactly one span named 'refund', found 0" in text
        assert "captured spans (3)" in text
        assert "span 'checkout' {'order_id': 7}" in text

    def test_span_ambiguous(self, cap: Capture) -> None:
        """span() of a name seen twice fails and says so."""
        for _ in range(2):
            with atrace.span("twice"):
                pass
        with pytest.raises(AssertionError, match="found 2"):
            cap.span("twice")

    def test_clear(self, cap: Capture) -> None:
        """clear() forgets what was captured, including what was not looked at yet."""
        atrace.info("before")
        cap.clear()
        atrace.info("after")
        assert cap.messages == ["after"]

    def test_records_from_other_threads(self, cap: Capture) -> None:
        """Records emitted in other threads are there once those threads are done."""
        threads = [threading.Thread(target=atrace.info, args=(f"t{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(m or "" for m in cap.messages) == ["t0", "t1", "t2", "t3"]

    def test_record_from_row(self) -> None:
        """A row in column order becomes a record with attributes decoded."""
        row = (1, 0, 20, None, None, None, None, 0, "svc", None, "h", 1, "n", "m", b'{"a":1}')
        rec = Record.from_row(
            (*row, None, None, None, "f.py:1", None, None, None, None, None, b'{"event":true}', 5)
        )
        assert (rec.attrs, rec.location, rec.message) == ({"a": 1}, "f.py:1", "m")
        assert (rec.span_kind, rec.trace_state, rec.trace_flags, rec.status_message) == (None,) * 4
        assert (rec.links, rec.otlp, rec.resource_id) == ((), {"event": True}, 5)
        assert str(rec) == "log 'n' 'm' {'a': 1}"
        span = (1, 3, 40, "ab" * 16, 7, None, 5, 2, "svc", None, "h", 1, "op", None, None)
        link = b'[{"trace_id":"' + b"cd" * 16 + b'","span_id":"00000000000000ff"}]'
        rec = Record.from_row(
            (*span, None, None, None, None, 2, "k=v", 1, "HTTP 503", link, None, None)
        )
        assert rec.links == ({"trace_id": "cd" * 16, "span_id": "00000000000000ff"},)
        assert (rec.span_kind, rec.trace_state, rec.trace_flags, rec.status_message) == (
            2,
            "k=v",
            1,
            "HTTP 503",
        )
        assert rec.failed and rec.as_dict()["status_message"] == "HTTP 503"
        assert list(rec.as_dict()) == list(COLUMNS)
        # A row of the old width (19 columns) is refused, not read with columns shifted.
        with pytest.raises(ValueError):
            Record.from_row((*row, None, None, None, "f.py:1"))

    def test_record_new_fields_default_to_none(self) -> None:
        """Records built by hand without the schema 5 fields still work: they are None."""
        rec = Record(
            1,
            0,
            20,
            None,
            None,
            None,
            None,
            0,
            "svc",
            None,
            None,
            None,
            "n",
            "m",
            {},
            None,
            None,
            None,
            None,
        )
        assert (rec.span_kind, rec.trace_state, rec.trace_flags, rec.status_message) == (None,) * 4


class TestPipeline:
    def test_flush_and_metrics_inside(self, cap: Capture) -> None:
        """atrace.flush() returns at once and metrics() counts captured records as written."""
        _checkout(1)
        assert atrace.flush(1)
        m = atrace.metrics()
        assert (m.accepted, m.written, m.dropped, m.queue_size, m.running) == (4, 4, 0, 0, False)

    async def test_async_use(self) -> None:
        """async with capture() works, and aflush/ashutdown inside it return at once."""
        async with capture() as cap:
            async with atrace.span("a"):
                await asyncio.sleep(0)
                await atrace.amit("awaited")
            assert await atrace.aflush(1)
            assert [s.name for s in cap.spans] == ["a"]
            assert await atrace.ashutdown(1)
            atrace.info("after shutdown")
        assert cap.messages == ["awaited", "after shutdown"]

    async def test_no_thread_or_task_left(self) -> None:
        """Nothing runs in the background during or after a capture, even after flushes."""
        threads = set(threading.enumerate())
        tasks = asyncio.all_tasks()
        with capture() as cap:
            atrace.info("x")
            atrace.flush()
            await atrace.aflush()
            assert set(threading.enumerate()) == threads
            assert asyncio.all_tasks() == tasks
        assert cap.messages == ["x"]
        assert set(threading.enumerate()) == threads

    def test_unconfigured_before_and_after(self) -> None:
        """Starting unconfigured, atrace is unconfigured again after the capture."""
        assert state.current() is None
        with capture() as cap:
            atrace.info("in")
        assert state.current() is None
        atrace.configure(service="t", sink=MemorySink())
        atrace.info("out")
        assert cap.messages == ["in"]

    async def test_previous_configuration_restored(self, configure_memory: MemorySink) -> None:
        """The configuration in force before comes back; its service name carries into capture."""
        before = atrace.get_config()
        atrace.info("first")
        with capture() as cap:
            atrace.info("captured")
            assert atrace.get_config().service == "test"
        atrace.info("second")
        assert atrace.get_config() is before
        assert await atrace.aflush()
        assert [r["message"] for r in configure_memory.logs()] == ["first", "second"]
        assert cap.messages == ["captured"]
        assert cap.logs[0].service == "test"

    def test_overrides_and_no_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """service/attributes may be given; ATRACE_* variables do not leak into a capture."""
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "region=eu")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
        monkeypatch.setenv("ATRACE_SINK", "postgresql://nowhere.invalid/db")
        with capture(service="svc", attributes={"team": "core"}) as cap:
            atrace.info("x")
        (log,) = cap.logs
        # The attributes given are the resource's (as OTEL_RESOURCE_ATTRIBUTES would be): the
        # record names it, and the environment's region is not in it.
        assert (log.service, log.attrs) == ("svc", {})
        resource = orjson.loads(known([log.resource_id])[log.resource_id])["resource"]["attrs"]
        assert resource["team"] == "core" and "region" not in resource
        with capture() as plain:
            atrace.info("y")
        assert plain.logs[0].service == "unknown_service:python"

    def test_nested_captures(self) -> None:
        """An inner capture takes its block's records; the outer one resumes afterwards."""
        with capture() as outer:
            atrace.info("a")
            with capture() as inner:
                atrace.info("b")
            atrace.info("c")
        assert outer.messages == ["a", "c"]
        assert inner.messages == ["b"]

    def test_nothing_after_exit(self) -> None:
        """Records emitted after the block are not captured; the capture stays readable."""
        with capture() as cap:
            atrace.info("in")
        atrace.configure(service="t", sink=MemorySink())
        atrace.info("out")
        assert cap.messages == ["in"]
        assert "closed" in repr(cap)

    def test_reentering_an_active_capture_fails(self, cap: Capture) -> None:
        """One capture object cannot be entered twice at once."""
        with pytest.raises(RuntimeError, match="already active"):
            cap.__enter__()

    def test_capacity_overflow_is_reported(self) -> None:
        """More records than capacity between two looks are counted and named in failures."""
        with capture(capacity=2) as cap:
            for i in range(5):
                with atrace.span(f"s{i}"):
                    pass
            assert cap.dropped == 3
            with pytest.raises(AssertionError, match="3 records were dropped"):
                cap.span("s0")

    def test_configure_inside_stays(self) -> None:
        """A configuration made by the code under test stays in force after the capture."""
        sink = MemorySink()
        with capture() as cap:
            atrace.info("captured")
            config = atrace.configure(service="inner", sink=sink)
        assert atrace.get_config() is config
        assert cap.messages == ["captured"]

    def test_memory_sink_unchanged(self) -> None:
        """MemorySink keeps rows and gives them back as dicts."""
        sink = MemorySink()
        atrace.configure(service="t", sink=sink)
        atrace.info("m", a=1)
        assert atrace.flush(10)
        assert [(r["message"], r["attrs"]) for r in sink.logs()] == [("m", {"a": 1})]
        assert sink.batch_ids and sink.opened == 1


class TestFakeClock:
    def test_readings_move_only_when_advanced(self) -> None:
        """monotonic() starts at ``start`` and moves by each advance; time_ns() moves with it."""
        clock = FakeClock(start=100.0)
        before = clock.time_ns()
        assert clock.monotonic() == clock.perf_counter() == 100.0
        clock.advance(2.5)
        assert clock.monotonic() == 102.5
        assert clock.time_ns() - before >= 2_500_000_000

    def test_refuses_to_go_back(self) -> None:
        """advance() with a negative amount is refused."""
        with pytest.raises(ValueError, match="forward"):
            FakeClock().advance(-1)

    async def test_sleep_wakes_at_its_deadline(self) -> None:
        """A sleep returns once the clock has moved its full duration, not earlier."""
        clock = FakeClock()
        sleeper = asyncio.ensure_future(clock.sleep(5))
        await clock.wait_for_sleepers(1)
        clock.advance(4)
        await asyncio.sleep(0)
        assert not sleeper.done() and clock.sleepers == 1
        clock.advance(1)
        await asyncio.wait_for(sleeper, 10)
        assert clock.sleepers == 0

    async def test_cancelled_sleep_leaves(self) -> None:
        """A cancelled sleep no longer counts as waiting on the clock."""
        clock = FakeClock()
        sleeper = asyncio.ensure_future(clock.sleep(5))
        await clock.wait_for_sleepers(1)
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        assert clock.sleepers == 0

    async def test_wakes_a_sleeper_on_another_thread(self) -> None:
        """A sleep on another thread's loop wakes when this thread advances the clock."""
        clock = FakeClock()
        woke = threading.Event()

        def other() -> None:
            asyncio.run(clock.sleep(1))
            woke.set()

        thread = threading.Thread(target=other)
        thread.start()
        await clock.wait_for_sleepers(1)
        clock.advance(1)
        await asyncio.to_thread(thread.join, 10)
        assert woke.is_set()

    async def test_wait_for_sleepers_gives_up(self) -> None:
        """wait_for_sleepers() raises TimeoutError when nothing ever sleeps on the clock."""
        with pytest.raises(TimeoutError, match="0 sleeps"):
            await FakeClock().wait_for_sleepers(1, timeout=0.01)

    async def test_drives_a_configured_pipeline(self, memory_sink: MemorySink) -> None:
        """A pipeline configured inside the block flushes when its interval passes on the clock,
        and leaving the block puts the real clock back for pipelines configured later."""
        with FakeClock() as clock:
            atrace.configure(service="t", sink=memory_sink, flush_interval=30)
        atrace.info("x")
        await clock.wait_for_sleepers()
        clock.advance(30)
        await clock.wait_for_sleepers()
        assert atrace.metrics().batches == 1
        assert state.use_clock(None) is None  # the block put the real clock back


class TestPlugin:
    USER_TESTS = """
import asyncio
import atrace


def work():
    with atrace.span("outer", n=1):
        with atrace.span("inner"):
            atrace.info("hello", k=2)


def test_sync(atrace_capture):
    work()
    assert atrace_capture.tree() == "outer\\n  inner"
    assert atrace_capture.span("inner").parent_id == atrace_capture.span("outer").span_id
    assert atrace_capture.logs[0].message == "hello"


async def test_async(atrace_capture):
    async with atrace.span("a"):
        await asyncio.sleep(0)
    assert [s.name for s in atrace_capture.spans] == ["a"]


def test_isolated(atrace_capture):
    assert atrace_capture.records == []


def test_missing_span(atrace_capture):
    work()
    atrace_capture.span("absent")
"""

    def _plugin_args(self) -> list[str]:
        # Loaded by its entry point once atrace is installed with it; otherwise named here.
        names = {ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
        return [] if "atrace.pytest_plugin" in names else ["-p", "atrace.pytest_plugin"]

    def test_fixture_in_a_users_project(self, pytester: pytest.Pytester) -> None:
        """A user's sync and async tests get atrace_capture; a failure says what was captured."""
        pytester.makeini(
            "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
            "filterwarnings = error\n"
        )
        pytester.makepyfile(test_user=self.USER_TESTS)
        # In a process of its own: the plugin (and atrace) are imported fresh, as in a user's run.
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *self._plugin_args())
        result.assert_outcomes(passed=3, failed=1)
        result.stdout.fnmatch_lines(
            [
                "*expected exactly one span named 'absent', found 0; captured spans (2):",
                "*span 'inner'",
                "*span 'outer' {'n': 1}",
                "*Captured atrace records*",
                "outer",
                "  inner",
                "    - hello",
            ]
        )

    def test_entry_point_declared(self) -> None:
        """pyproject.toml registers the plugin under pytest11, so installing atrace enables it."""
        text = (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
        section = text.split("[project.entry-points.pytest11]", 1)
        assert len(section) == 2, "pyproject.toml lacks [project.entry-points.pytest11]"
        assert 'atrace = "atrace.pytest_plugin"' in section[1].split("\n[", 1)[0]


class TestPublicSurface:
    @pytest.mark.parametrize("module", [testing, pytest_plugin], ids=lambda m: m.__name__)
    def test_all(self, module: object) -> None:
        """__all__ is a tuple naming every public callable the module defines."""
        exported = module.__all__  # type: ignore[attr-defined]
        name = module.__name__  # type: ignore[attr-defined]
        assert isinstance(exported, tuple)
        assert all(hasattr(module, item) for item in exported)
        defined = {
            k
            for k, v in vars(module).items()
            if not k.startswith("_") and getattr(v, "__module__", None) == name and callable(v)
        }
        assert defined <= set(exported)
