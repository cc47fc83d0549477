"""The stdlib logging bridge: records become atrace logs without loops, deadlocks or extra work."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest

import atrace
from atrace._emit.instrument import instrument_logging, uninstrument_logging
from atrace.integrations import logging as bridge
from atrace.integrations.logging import AtraceHandler
from atrace.testing import Capture, MemorySink, capture


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of the test's own, bridged at DEBUG, that does not reach pytest's handlers."""
    log = _lone_logger(logging.DEBUG)
    instrument_logging(logging.DEBUG, log)
    yield log
    uninstrument_logging(log)


def _lone_logger(level: int) -> logging.Logger:
    # Outside the logger tree: pytest's log capture attaches to every registered logger that
    # does not propagate, and its formatting would count as a second one. The NullHandler keeps
    # logging's last resort (which formats warnings onto stderr) out of the way.
    log = logging.Logger(f"app.{uuid.uuid4().hex[:8]}", level)
    log.addHandler(logging.NullHandler())
    return log


@pytest.fixture
def cap() -> Iterator[Capture]:
    """Every atrace record of the test, in memory."""
    with capture() as c:
        yield c


@pytest.fixture(autouse=True)
def _nothing_left_attached() -> Iterator[None]:
    """Each test ends with no handler attached by instrument_logging."""
    yield
    uninstrument_logging()


class Counted:
    """An argument that counts how often it is turned into text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls = 0

    def __str__(self) -> str:
        self.calls += 1
        return self.text


def _line_after(fn: Any, offset: int) -> int:
    return int(fn.__code__.co_firstlineno) + offset


class TestRecords:
    def test_levels(self, logger: logging.Logger, cap: Capture) -> None:
        """Each record keeps its level number, custom levels included."""
        logger.debug("d")
        logger.info("i")
        logger.warning("w")
        logger.error("e")
        logger.critical("c")
        logger.log(25, "custom")
        assert [(r.message, r.level) for r in cap.logs] == [
            ("d", 10),
            ("i", 20),
            ("w", 30),
            ("e", 40),
            ("c", 50),
            ("custom", 25),
        ]

    def test_name_is_the_logger_and_kind_is_log(self, logger: logging.Logger, cap: Capture) -> None:
        """The record's name is the logger's name; it is a log with no parent."""
        logger.info("hi")
        (rec,) = cap.logs
        assert (rec.name, rec.kind, rec.parent_id) == (logger.name, 0, None)

    def test_extra_fields_become_attributes(self, logger: logging.Logger, cap: Capture) -> None:
        """Fields given through extra= are attributes; values JSON cannot hold become their repr."""

        class Opaque:
            def __repr__(self) -> str:
                return "<opaque>"

        logger.info("x", extra={"user": "ada", "n": 2, "tags": ["a"], "obj": Opaque()})
        logger.info("plain")
        first, second = cap.logs
        assert first.attrs == {"user": "ada", "n": 2, "tags": ["a"], "obj": "<opaque>"}
        assert second.attrs == {}

    def test_standard_fields_are_not_attributes(self, logger: logging.Logger, cap: Capture) -> None:
        """A record formatted by another handler first (message, asctime) has no extra attrs."""
        other = logging.StreamHandler(_Sink())
        other.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(other)
        logger.handlers.reverse()  # the formatting handler runs first
        try:
            logger.info("formatted %d", 1)
        finally:
            logger.removeHandler(other)
        (rec,) = cap.logs
        assert rec.message == "formatted 1"
        assert rec.attrs == {}

    def test_location_is_the_callers_line(self, logger: logging.Logger, cap: Capture) -> None:
        """The location is the logging call's file:line, also through stacklevel."""
        logger.info("here")
        line = _line_after(self.test_location_is_the_callers_line, 2)

        def helper() -> None:
            logger.info("via helper", stacklevel=2)

        helper()
        helper_line = _line_after(self.test_location_is_the_callers_line, 8)
        here, via = cap.logs
        assert here.location == f"{__file__}:{line}"
        assert via.location == f"{__file__}:{helper_line}"

    def test_timestamp_from_record_created(self, logger: logging.Logger, cap: Capture) -> None:
        """The time is the record's creation time, to the nanosecond its float allows."""
        created: list[float] = []

        def keep(record: logging.LogRecord) -> bool:
            created.append(record.created)
            return True

        logger.addFilter(keep)
        try:
            logger.info("t")
        finally:
            logger.removeFilter(keep)
        (rec,) = cap.logs
        exact = Decimal(created[0]) * 10**9
        assert rec.ts == int(exact.to_integral_value(ROUND_HALF_EVEN))

    def test_nanoseconds_kept_where_one_float_would_lose_them(self) -> None:
        """Seconds and fraction are converted apart, so the float's full precision survives."""
        created = 1_700_000_000.123456789
        exact = int((Decimal(created) * 10**9).to_integral_value(ROUND_HALF_EVEN))
        assert bridge._created_ns(created) == exact
        assert int(created * 1e9) != exact  # what a single multiplication gives

    def test_percent_args_formatted_once(self, logger: logging.Logger, cap: Capture) -> None:
        """A %-style argument is turned into text exactly once."""
        arg = Counted("world")
        logger.info("hello %s", arg)
        assert cap.messages == ["hello world"]
        assert arg.calls == 1

    def test_disabled_level_does_no_work(self, cap: Capture) -> None:
        """A record below the handler's level is neither formatted nor bridged."""
        log = _lone_logger(logging.DEBUG)
        instrument_logging(logging.INFO, log)
        arg = Counted("x")
        log.debug("hidden %s", arg)
        log.info("shown")
        assert arg.calls == 0
        assert cap.messages == ["shown"]

    def test_bad_format_arguments_keep_the_record(
        self, logger: logging.Logger, cap: Capture
    ) -> None:
        """Arguments that do not fit the format still give a record that says what went wrong."""
        logger.info("%d items", "many")
        (rec,) = cap.logs
        assert rec.message is not None
        assert rec.message.startswith("%d items % ('many',)")
        assert "formatting failed" in rec.message


class TestErrors:
    def test_exception_inside_except(self, logger: logging.Logger, cap: Capture) -> None:
        """logger.exception records the handled exception's type, message and traceback."""
        lookup: dict[str, int] = {}
        try:
            lookup["missing"]
        except KeyError:
            logger.exception("lookup failed")
        (rec,) = cap.logs
        assert (rec.level, rec.error_type, rec.error_message) == (40, "KeyError", "'missing'")
        assert rec.stack_trace is not None
        assert 'in test_exception_inside_except\n    lookup["missing"]' in rec.stack_trace

    def test_exc_info_given_an_exception_outside_except(
        self, logger: logging.Logger, cap: Capture
    ) -> None:
        """exc_info=<exception> outside an except block records that exception."""
        try:
            raise ValueError("bad value")
        except ValueError as exc:
            caught = exc
        logger.warning("later", exc_info=caught)
        (rec,) = cap.logs
        assert (rec.error_type, rec.error_message) == ("ValueError", "bad value")
        assert rec.stack_trace is not None and "raise ValueError" in rec.stack_trace

    def test_exc_info_true_outside_except_records_the_callers_stack(
        self, logger: logging.Logger, cap: Capture
    ) -> None:
        """exc_info=True with no exception records the stack of the logging call, no type."""
        logger.error("no exception here", exc_info=True)
        line = _line_after(self.test_exc_info_true_outside_except_records_the_callers_stack, 4)
        (rec,) = cap.logs
        assert rec.error_type is None
        assert rec.stack_trace is not None
        assert rec.stack_trace.startswith("Stack (most recent call last):")
        assert f'"{__file__}", line {line}' in rec.stack_trace
        assert "integrations/logging.py" not in rec.stack_trace

    def test_stack_info(self, logger: logging.Logger, cap: Capture) -> None:
        """stack_info=True without an exception keeps logging's stack text."""
        logger.info("where am I", stack_info=True)
        (rec,) = cap.logs
        assert rec.error_type is None
        assert rec.stack_trace is not None and "test_stack_info" in rec.stack_trace


class TestSpans:
    def test_log_inside_span_carries_its_ids(self, logger: logging.Logger, cap: Capture) -> None:
        """A record logged inside a span carries its trace and span ids; outside, none."""
        with atrace.span("work") as sp:
            logger.info("inside")
        logger.info("outside")
        inside, outside = cap.logs
        assert (inside.trace_id, inside.span_id) == (sp.trace_id, sp.span_id)
        assert (outside.trace_id, outside.span_id) == (None, None)
        assert cap.logs_in(cap.span("work")) == [inside]

    async def test_async_tasks_log_into_their_own_span(
        self, logger: logging.Logger, cap: Capture
    ) -> None:
        """Concurrent tasks' records land in the span of the task that logged them."""
        import asyncio

        async def job(name: str) -> None:
            async with atrace.span(name):
                await asyncio.sleep(0)
                logger.info(name)

        await asyncio.gather(job("a"), job("b"))
        for name in ("a", "b"):
            assert [r.message for r in cap.logs_in(cap.span(name))] == [name]

    async def test_through_the_real_pipeline(self, configure_memory: MemorySink) -> None:
        """Bridged records reach a configured sink like atrace's own logs."""
        log = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
        log.propagate = False
        instrument_logging(logging.INFO, log)
        async with atrace.span("s") as sp:
            log.warning("stored", extra={"k": 1})
        assert await atrace.aflush()
        (row,) = configure_memory.logs()
        assert (row["message"], row["level"], row["attrs"]) == ("stored", 30, {"k": 1})
        assert (row["trace_id"], row["span_id"], row["name"]) == (sp.trace_id, sp.span_id, log.name)


class TestLoops:
    def test_atrace_own_loggers_not_bridged(self, cap: Capture) -> None:
        """Records of the atrace logger and its children stay out; a lookalike name does not."""
        instrument_logging(logging.WARNING)
        logging.getLogger("atrace").warning("own")
        logging.getLogger("atrace.sinks.postgres").warning("own child")
        logging.getLogger("atracelike").warning("someone else")
        assert cap.messages == ["someone else"]

    def test_recursion_guard(self, logger: logging.Logger, cap: Capture) -> None:
        """A record logged while this thread bridges another is skipped, not recursed into."""

        class Loud:
            calls = 0

            def __str__(self) -> str:
                Loud.calls += 1
                # Through the same bridged logger, with itself as argument: without the
                # guard, every str() would log again, without end.
                logger.warning("while formatting: %s", self)
                return "loud"

        logger.info("value %s", Loud())
        assert cap.messages == ["value loud"]
        assert Loud.calls == 1

    def test_buffering_that_logs_is_not_reentered(
        self, logger: logging.Logger, cap: Capture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If handing a record to atrace logs through stdlib, that record is not bridged again."""
        from atrace._emit.runtime import runtime

        real_push = runtime.push
        calls: list[Any] = []

        def push_that_logs(record: Any) -> bool:
            calls.append(record)
            logger.warning("buffering %s", "a record")  # back into the bridged logger
            return real_push(record)

        monkeypatch.setattr(runtime, "push", push_that_logs)
        logger.info("outer")
        monkeypatch.setattr(runtime, "push", real_push)
        assert len(calls) == 1
        assert cap.messages == ["outer"]

    def test_handler_that_logs_through_atrace_and_logging(self, cap: Capture) -> None:
        """A user handler that calls atrace and logs again on every record does not loop."""
        log = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
        log.propagate = False
        seen: list[str] = []

        class Echo(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record.getMessage())
                atrace.info("echo", of=record.getMessage())
                logging.getLogger("atrace.echo").warning("echoed %s", record.getMessage())

        log.addHandler(Echo())
        logging.getLogger("atrace.echo").propagate = False
        logging.getLogger("atrace.echo").addHandler(AtraceHandler())
        instrument_logging(logging.INFO, log)
        try:
            log.info("one")
        finally:
            for h in list(logging.getLogger("atrace.echo").handlers):
                logging.getLogger("atrace.echo").removeHandler(h)
        assert seen == ["one"]
        assert sorted(cap.messages, key=str) == ["echo", "one"]

    def test_one_record_through_two_handlers_is_bridged_once(self, cap: Capture) -> None:
        """A record reaching handlers on a logger and on its parent becomes one atrace log."""
        parent = logging.getLogger(f"tree.{uuid.uuid4().hex[:8]}")
        parent.propagate = False
        child = logging.getLogger(f"{parent.name}.child")
        instrument_logging(logging.INFO, parent)
        instrument_logging(logging.INFO, child)
        child.info("once")
        parent.info("parent")
        assert cap.messages == ["once", "parent"]

    def test_sink_logging_on_the_flusher_thread_is_not_fed_back(self) -> None:
        """What a sink logs on the flusher's thread is not bridged, so it cannot feed itself."""
        memory = _TalkativeSink()
        atrace.configure(service="t", sink=memory, flush_interval=0.05, spill_max_bytes=0)
        instrument_logging(logging.INFO)
        logging.getLogger("app.main").warning("from the application")
        assert atrace.flush(10)
        assert atrace.flush(10)
        assert memory.talked >= 1
        assert [r["message"] for r in memory.logs()] == ["from the application"]

    def test_no_deadlock_when_the_flusher_logs_a_sink_error(self) -> None:
        """A failing sink's warning, logged by the flusher with the bridge on root, never hangs."""
        memory = MemorySink()
        failing = _FailingSink()
        warnings: list[str] = []
        listener = _ListHandler(warnings)
        own = logging.getLogger("atrace")
        own.addHandler(listener)
        previous_root_level = logging.getLogger().level
        try:
            atrace.configure(
                service="t",
                sinks=[failing, memory],
                flush_interval=0.05,
                retry_attempts=1,
                retry_deadline=0.2,
                spill_max_bytes=0,
            )
            instrument_logging(logging.INFO)
            outcome: list[bool] = []

            def run() -> None:
                for i in range(20):
                    logging.getLogger("app.main").info("record %d", i)
                outcome.append(atrace.flush(10))

            worker = threading.Thread(target=run)
            worker.start()
            worker.join(30)
            assert not worker.is_alive(), "flush() with the bridge attached hung"
        finally:
            own.removeHandler(listener)
            uninstrument_logging()
        # Settled without hanging; False because the failing sink dropped its copies.
        assert outcome == [False]
        assert failing.attempts >= 1
        assert any("sink failing failed" in w for w in warnings)
        names = {r["name"] for r in memory.logs()}
        assert names == {"app.main"}
        assert len(memory.logs()) == 20
        assert logging.getLogger().level == previous_root_level


class TestInstrument:
    def test_idempotent_and_reversible(self, cap: Capture) -> None:
        """instrument_logging bridges each record once however often called, without adding to
        the root's handlers; uninstrument_logging stops it and puts logging back as it was."""
        root = logging.getLogger()
        before = list(root.handlers)
        level = root.level
        call_handlers = logging.Logger.callHandlers
        log = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
        root.setLevel(logging.WARNING)
        try:
            first = instrument_logging()
            second = instrument_logging(logging.DEBUG)
            assert first is second
            assert first.level == logging.DEBUG
            assert root.level == logging.DEBUG  # lowered so DEBUG records reach the handler
            assert root.handlers == before
            log.debug("bridged once")
            uninstrument_logging()
            uninstrument_logging()
            log.warning("after")
            assert cap.messages == ["bridged once"]
            assert root.handlers == before
            assert root.level == logging.WARNING
            assert logging.Logger.callHandlers is call_handlers
        finally:
            root.setLevel(level)

    def test_root_level_is_only_lowered(self) -> None:
        """A root level that already lets the records through is left as it is; one that would
        filter them is lowered to the bridged level, and put back by uninstrument_logging."""
        root = logging.getLogger()
        level = root.level
        try:
            root.setLevel(logging.DEBUG)
            instrument_logging(logging.INFO)
            assert root.level == logging.DEBUG
            uninstrument_logging()
            assert root.level == logging.DEBUG
            root.setLevel(logging.ERROR)
            instrument_logging(logging.INFO)
            assert root.level == logging.INFO
            uninstrument_logging()
            assert root.level == logging.ERROR
        finally:
            root.setLevel(level)

    @pytest.mark.parametrize(
        "setup",
        [
            "atrace.instrument_logging()\nlogging.basicConfig(level=logging.INFO, format=FORMAT)",
            "logging.basicConfig(level=logging.INFO, format=FORMAT)\natrace.instrument_logging()",
            "atrace.instrument_logging()\nlogging.config.dictConfig(DICT_CONFIG)",
        ],
        ids=["basicConfig-after", "basicConfig-before", "dictConfig-after"],
    )
    def test_the_applications_console_is_left_alone(self, setup: str) -> None:
        """The application's own logging set-up prints as it would without atrace, whether it
        runs before or after instrument_logging, and atrace receives the same records."""
        done = _run_logging_program(setup)
        assert done.stderr == "INFO app hello\n"
        assert done.stdout == "['hello']\n"

    def test_basic_config_level_wins(self) -> None:
        """A level given to basicConfig after instrument_logging is the root's level: the console
        and atrace both get the records at that level and above."""
        setup = (
            "atrace.instrument_logging()\nlogging.basicConfig(level=logging.WARNING, format=FORMAT)"
        )
        done = _run_logging_program(setup, "log.warning('careful')")
        assert done.stderr == "WARNING app careful\n"
        assert done.stdout == "['careful']\n"

    def test_no_logging_set_up_keeps_the_last_resort(self) -> None:
        """A program that sets up no logging still gets warnings on stderr from logging's last
        resort once instrumented, as without atrace."""
        done = _run_logging_program("atrace.instrument_logging()", "log.warning('careful')")
        assert done.stderr == "careful\n"
        assert done.stdout == "['hello', 'careful']\n"

    def test_level_changed_since_is_left_alone(self) -> None:
        """A logger level the application changed after instrumenting is not put back."""
        log = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
        log.setLevel(logging.ERROR)
        instrument_logging(logging.INFO, log.name)
        assert log.level == logging.INFO
        log.setLevel(logging.CRITICAL)
        uninstrument_logging(log)
        assert log.level == logging.CRITICAL
        assert log.handlers == []

    def test_existing_handler_reused_and_kept(self) -> None:
        """A handler the application added itself is reused, and left in place afterwards."""
        log = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
        mine = AtraceHandler()
        log.addHandler(mine)
        assert instrument_logging(logging.INFO, log) is mine
        uninstrument_logging(log)
        assert log.handlers == [mine]

    def test_only_the_named_logger_is_detached(self) -> None:
        """uninstrument_logging(logger) leaves other instrumented loggers alone."""
        a = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
        b = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
        ha = instrument_logging(logging.INFO, a)
        hb = instrument_logging(logging.INFO, b)
        assert ha is not hb
        with capture() as cap:
            uninstrument_logging(a)
            a.warning("from a")
            b.warning("from b")
        assert cap.messages == ["from b"]
        assert a.handlers == [] and b.handlers == []

    @pytest.mark.parametrize("level", ["verbose", -1, True, 2.5])
    def test_bad_level(self, level: Any) -> None:
        """A level that is neither a number nor a known name is a ConfigError naming it."""
        with pytest.raises(atrace.ConfigError, match="level"):
            instrument_logging(level)

    def test_bad_logger(self) -> None:
        """A logger that is not a Logger, a name or None is a ConfigError."""
        with pytest.raises(atrace.ConfigError, match="logger"):
            instrument_logging(logging.INFO, 42)  # type: ignore[arg-type]

    def test_level_by_name(self) -> None:
        """A level may be given by name."""
        log = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
        assert instrument_logging("warning", log).level == logging.WARNING

    def test_all_is_the_public_surface(self) -> None:
        """The bridge module's __all__ names exactly what it defines in public."""
        defined = {
            k
            for k, v in vars(bridge).items()
            if not k.startswith("_") and getattr(v, "__module__", None) == bridge.__name__
        }
        assert isinstance(bridge.__all__, tuple)
        assert defined <= set(bridge.__all__)
        assert all(hasattr(bridge, name) for name in bridge.__all__)


# ---- helpers -----------------------------------------------------------------------------------


_LOGGING_PROGRAM = """
import logging
import logging.config

import atrace
from atrace.testing import capture

FORMAT = "%(levelname)s %(name)s %(message)s"
DICT_CONFIG = {{
    "version": 1,
    "formatters": {{"plain": {{"format": FORMAT}}}},
    "handlers": {{"console": {{"class": "logging.StreamHandler", "formatter": "plain"}}}},
    "root": {{"level": "INFO", "handlers": ["console"]}},
}}
with capture() as cap:
{setup}
    log = logging.getLogger("app")
    log.info("hello")
    log.debug("too fine")
{more}
print(cap.messages)
"""


def _run_logging_program(setup: str, more: str = "") -> subprocess.CompletedProcess[str]:
    """A fresh interpreter that runs ``setup``, logs to "app" and prints what atrace received."""
    program = _LOGGING_PROGRAM.format(
        setup=textwrap.indent(setup, "    "), more=textwrap.indent(more, "    ")
    )
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )


class _Sink:
    """A text stream that keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _ListHandler(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


class _FailingSink:
    """A sink whose every write fails like a lost connection."""

    name = "failing"

    def __init__(self) -> None:
        self.attempts = 0

    async def open(self) -> None:
        pass

    async def write(self, batch: Any) -> None:
        self.attempts += 1
        raise ConnectionError("sink unreachable")

    async def close(self) -> None:
        pass


class _TalkativeSink(MemorySink):
    """A memory sink that logs through a non-atrace logger on every write (a chatty driver)."""

    def __init__(self) -> None:
        super().__init__()
        self.talked = 0

    async def write(self, batch: Any) -> None:
        self.talked += 1
        logging.getLogger("driver.wire").warning("wrote %d rows", len(batch))
        await super().write(batch)


def test_python_version_supported() -> None:
    """The bridge's standard-attribute set comes from this interpreter's own LogRecord."""
    blank = logging.LogRecord("", 0, "", 0, "", (), None)
    assert set(blank.__dict__) <= bridge.STANDARD_ATTRIBUTES
    if sys.version_info >= (3, 12):
        assert "taskName" in bridge.STANDARD_ATTRIBUTES
