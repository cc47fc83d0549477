"""The flusher: its state machine, triggers (size, interval, flush, shutdown), policies, fan-out,
sink failures."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import orjson
import pytest

import atrace
from _helpers import wait_until
from atrace._pipeline import state
from atrace._pipeline.pipeline import FlushMode, Pipeline, PipelineState
from atrace.config import Config
from atrace.errors import InternalError
from atrace.sinks import Batch
from atrace.sinks._base import SinkOptions
from atrace.testing import FakeClock, MemorySink

IDLE, RUNNING, STOPPING, FORCED = (
    PipelineState.IDLE,
    PipelineState.RUNNING,
    PipelineState.STOPPING,
    PipelineState.FORCED,
)
# Every move the pipeline may make, and no other.
ALLOWED = {
    (IDLE, RUNNING),
    (IDLE, STOPPING),
    (RUNNING, STOPPING),
    (RUNNING, IDLE),
    (STOPPING, FORCED),
    (STOPPING, IDLE),
    (FORCED, IDLE),
}


def install(config: Config, **kwargs: Any) -> Pipeline:
    p = Pipeline(config, **kwargs)
    state.swap(p)
    return p


def in_state(p: Pipeline, where: PipelineState) -> Pipeline:
    """``p`` put straight into ``where``, as the moves that lead there would."""
    path = {IDLE: [], RUNNING: [RUNNING], STOPPING: [RUNNING, STOPPING]}
    path[FORCED] = [*path[STOPPING], FORCED]
    for step in path[where]:
        p._set_state(step)
    return p


def log_record(message: str) -> tuple[Any, ...]:
    return (0, time.time_ns(), 20, None, None, None, None, 0, None, "n", message, None, None, None)


class TestStateMachine:
    @pytest.mark.parametrize(("old", "new"), sorted(ALLOWED, key=lambda m: (m[0].name, m[1].name)))
    def test_allowed_move(self, old: PipelineState, new: PipelineState) -> None:
        """Each move of the table is taken."""
        p = in_state(Pipeline(Config(sinks=[MemorySink()])), old)
        p._set_state(new)
        assert p.state is new

    @pytest.mark.parametrize(
        ("old", "new"),
        [m for m in itertools.product(PipelineState, repeat=2) if m not in ALLOWED],
        ids=lambda s: s.name,
    )
    def test_refused_move_names_both_states(self, old: PipelineState, new: PipelineState) -> None:
        """Any move outside the table raises InternalError naming both states, and changes
        nothing."""
        p = in_state(Pipeline(Config(sinks=[MemorySink()])), old)
        with pytest.raises(InternalError, match=f"from {old.name} to {new.name}"):
            p._set_state(new)
        assert p.state is old

    async def test_lifecycle(self, memory_sink: MemorySink) -> None:
        """IDLE until the first record, RUNNING while the flusher runs, IDLE again after a
        shutdown, and RUNNING on the next record."""
        p = install(Config(sinks=[memory_sink], flush_interval=3600))
        assert p.state is IDLE
        atrace.info("first")
        assert p.state is RUNNING
        done = p.stop_nowait()
        assert p.state is STOPPING
        assert await asyncio.wrap_future(done)
        assert p.state is IDLE and len(memory_sink.rows) == 1
        atrace.info("second")
        assert p.state is RUNNING

    async def test_stop_without_a_flusher_writes_what_is_left(
        self, memory_sink: MemorySink
    ) -> None:
        """Stopping an idle pipeline that holds records starts a flusher only to write them."""
        p = Pipeline(Config(sinks=[memory_sink], flush_interval=3600))
        p.ring.push(log_record("left"))
        assert await asyncio.wrap_future(p.stop_nowait())
        assert p.state is IDLE
        assert [r["message"] for r in memory_sink.logs()] == ["left"]

    async def test_forced_when_stopping_outlasts_the_deadline(self) -> None:
        """A write still hanging at shutdown_timeout is cut short (FORCED) and its batch spilled."""

        class Hung(MemorySink):
            name = "hung"

            async def write(self, batch: Batch) -> None:
                await asyncio.sleep(3600)

        seen: list[PipelineState] = []
        p = install(Config(sinks=[Hung()], flush_interval=3600, shutdown_timeout=0.2))
        original = p._set_state

        def watch(new: PipelineState) -> None:
            seen.append(new)
            original(new)

        p._set_state = watch  # type: ignore[method-assign]
        atrace.info("x")
        p.request_flush()
        await wait_until(lambda: p.metrics().in_flight == 1)
        # False: the record was spilled, not written.
        assert not await asyncio.wrap_future(p.stop_nowait())
        assert seen == [RUNNING, STOPPING, FORCED, IDLE]
        m = p.metrics()
        assert (m.spilled, m.written, m.in_flight) == (1, 0, 0)


class TestFlushModes:
    @pytest.mark.parametrize(
        ("mode", "written"),
        [(FlushMode.FULL_BATCHES, 20), (FlushMode.EVERYTHING, 25), (FlushMode.FINAL, 25)],
        ids=lambda v: getattr(v, "name", v),
    )
    async def test_how_much_each_mode_writes(self, mode: FlushMode, written: int) -> None:
        """FULL_BATCHES writes whole batches and leaves the rest; the others write everything."""
        sink = MemorySink()
        p = Pipeline(Config(sinks=[sink], batch_size=10, flush_interval=3600))
        for i in range(25):
            p.ring.push(log_record(f"m{i}"))
        await p._flush(mode)
        await wait_until(lambda: len(sink.rows) == written)
        assert len(p.ring) == 25 - written

    async def test_only_final_announces_a_young_open_span(self, memory_sink: MemorySink) -> None:
        """A span open for less than one interval gets a start row from FINAL, not EVERYTHING."""
        p = install(Config(sinks=[memory_sink], flush_interval=3600))
        with atrace.span("young"):
            await p._flush(FlushMode.EVERYTHING)
            assert len(p.ring) == 0 and memory_sink.rows == []
            await p._flush(FlushMode.FINAL)
            assert [r["kind"] for r in memory_sink.records()] == [1]


class TestFakeClock:
    async def test_interval_on_the_fake_clock(self) -> None:
        """A record below the batch size is written once the interval has passed on the fake
        clock, not before, and no real time is waited for."""
        sink = MemorySink()
        with FakeClock() as clock:
            atrace.configure(sink=sink, flush_interval=1.0, batch_size=100)
        atrace.info("one")
        await clock.wait_for_sleepers()  # the flusher waits for its next look at the ring
        clock.advance(0.5)
        await clock.wait_for_sleepers()  # it looked, found nothing due, and sleeps again
        clock.advance(0.25)
        await clock.wait_for_sleepers()
        assert atrace.metrics().batches == 0 and sink.rows == []
        clock.advance(0.25)
        await clock.wait_for_sleepers()
        assert atrace.metrics().batches == 1  # dispatched by the interval alone
        await wait_until(lambda: len(sink.rows) == 1)

    async def test_batch_size(self) -> None:
        """Full batches are written without waiting for the interval; the remainder waits."""
        sink = MemorySink()
        with FakeClock() as clock:
            atrace.configure(sink=sink, flush_interval=60, batch_size=10)
        for i in range(25):
            atrace.info(f"m{i}")
        await clock.wait_for_sleepers()
        await wait_until(lambda: len(sink.rows) == 20)
        assert atrace.metrics().queue_size == 5
        assert atrace.metrics().batches == 2

    async def test_long_span_announced_after_one_interval(self) -> None:
        """A span open longer than one interval on the clock gets its start row at that flush."""
        sink = MemorySink()
        with FakeClock() as clock:
            atrace.configure(sink=sink, flush_interval=10.0)
        with atrace.span("long"):
            atrace.info("inside")
            await clock.wait_for_sleepers()
            clock.advance(10.0)
            await clock.wait_for_sleepers()
            await wait_until(lambda: len(sink.rows) == 2)
        assert [r["kind"] for r in sink.records()] == [0, 1]

    async def test_flush_writes_everything_now(self, configure_memory: MemorySink) -> None:
        """aflush returns once everything emitted before it is in the sink."""
        atrace.configure(service="t", sink=configure_memory, flush_interval=3600, batch_size=1000)
        for i in range(10):
            atrace.info(f"m{i}")
        assert await atrace.aflush()
        assert [r["message"] for r in configure_memory.logs()] == [f"m{i}" for i in range(10)]

    async def test_shutdown_writes_and_closes(self, memory_sink: MemorySink) -> None:
        """ashutdown writes what is buffered, closes the sinks, and atrace restarts on next use."""
        atrace.configure(service="t", sink=memory_sink, flush_interval=3600)
        atrace.info("before")
        assert await atrace.ashutdown(timeout=5)
        assert memory_sink.closed == 1 and len(memory_sink.rows) == 1
        assert atrace.metrics().running is False
        atrace.info("after")
        assert await atrace.aflush()
        assert memory_sink.opened == 2 and len(memory_sink.rows) == 2

    def test_sync_program_uses_a_thread(self, memory_sink: MemorySink) -> None:
        """Without a running loop the flusher runs on a daemon thread; flush() waits for it."""
        atrace.configure(service="t", sink=memory_sink, flush_interval=3600)
        with atrace.span("sync"):
            atrace.info("no loop here")
        assert atrace.flush(timeout=10)
        assert [r["kind"] for r in memory_sink.records()] == [0, 3]
        assert any(t.name == "atrace-flusher" for t in threading.enumerate())
        assert atrace.shutdown(timeout=10)
        assert not any(t.name == "atrace-flusher" for t in threading.enumerate())

    async def test_sync_flush_on_the_flusher_loop_does_not_block(
        self, configure_memory: MemorySink
    ) -> None:
        """flush() called on the flusher's own loop only requests (it cannot wait there)."""
        atrace.info("x")
        await atrace.aflush()
        atrace.info("y")
        assert atrace.flush() is False
        await wait_until(lambda: len(configure_memory.rows) == 2)


class TestPolicies:
    async def test_drop_oldest_counts(self, memory_sink: MemorySink) -> None:
        """When full, drop_oldest keeps the newest records and counts the dropped ones."""
        atrace.configure(service="t", sink=memory_sink, capacity=10, flush_interval=3600)
        for i in range(25):
            atrace.info(f"m{i}")
        m = atrace.metrics()
        assert (m.accepted, m.dropped, m.queue_size, m.high_water) == (25, 15, 10, 10)
        await atrace.aflush()
        assert [r["message"] for r in memory_sink.logs()] == [f"m{i}" for i in range(15, 25)]
        m = atrace.metrics()
        assert m.accepted == m.written + m.dropped + m.queue_size

    async def test_drop_newest(self, memory_sink: MemorySink) -> None:
        """drop_newest keeps the oldest records."""
        atrace.configure(
            service="t", sink=memory_sink, capacity=10, policy="drop_newest", flush_interval=3600
        )
        for i in range(25):
            atrace.info(f"m{i}")
        await atrace.aflush()
        assert [r["message"] for r in memory_sink.logs()] == [f"m{i}" for i in range(10)]
        assert atrace.metrics().dropped == 15


class FailingSink(MemorySink):
    name = "failing"

    def __init__(self, failures: int, exc: BaseException | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.exc = exc or RuntimeError("sink is down")

    async def write(self, batch: Batch) -> None:
        if self.failures:
            self.failures -= 1
            raise self.exc
        await super().write(batch)


class TestSinks:
    async def test_fan_out(self) -> None:
        """Every configured sink receives every row, under the same batch id."""
        a, b = MemorySink(), MemorySink()
        atrace.configure(service="t", sinks=[a, b])
        atrace.info("both")
        await atrace.aflush()
        assert a.rows == b.rows and len(a.rows) == 1
        assert a.batch_ids == b.batch_ids

    async def test_sink_error_never_reaches_app_nor_stops_flusher(self) -> None:
        """A sink raising is counted; the flusher keeps going and later batches are written."""
        bad, good = FailingSink(failures=1), MemorySink()
        atrace.configure(service="t", sinks=[bad, good], flush_interval=3600)
        atrace.info("first")
        assert not await atrace.aflush()  # the first sink refused it: not everything written
        atrace.info("second")
        assert not await atrace.aflush()
        m = atrace.metrics()
        # RuntimeError is not worth retrying: the batch is kept apart as rejected, not lost.
        assert (m.sink_errors, m.dropped_permanent, m.written, m.running) == (1, 1, 1, True)
        assert [r["message"] for r in bad.logs()] == ["second"]
        assert [r["message"] for r in good.logs()] == ["first", "second"]

    async def test_sink_open_failure_is_counted(self) -> None:
        """A sink whose open() raises does not stop the others."""

        class NoOpen(MemorySink):
            name = "no-open"

            async def open(self) -> None:
                raise ConnectionRefusedError("nope")

        good = MemorySink()
        atrace.configure(service="t", sinks=[NoOpen(), good], retry_attempts=1)
        atrace.info("x")
        assert not await atrace.aflush()  # spilled for the first sink
        m = atrace.metrics()
        assert len(good.rows) == 1 and m.sink_errors == 1
        assert (m.spilled, m.spilled_pending, m.written) == (1, 1, 0)  # the first sink's

    async def test_hung_sink_is_cut_at_its_deadline(self) -> None:
        """A sink call that hangs is cancelled at the write deadline; the flusher carries on."""

        class Hung(MemorySink):
            name = "hung"

            async def write(self, batch: Batch) -> None:
                await asyncio.sleep(3600)

        good = MemorySink()
        config = Config(sinks=[Hung(), good], flush_interval=3600, retry_attempts=1)
        install(config, write_timeout=0.1)
        atrace.info("x")
        assert not await atrace.aflush(timeout=10)  # the hung sink's copy was spilled
        assert len(good.rows) == 1 and atrace.metrics().sink_errors == 1

    @pytest.mark.parametrize("concurrency", [1, 2])
    async def test_concurrent_writes_up_to_the_sinks_limit(self, concurrency: int) -> None:
        """Batches are written side by side up to the sink's concurrency, never more."""

        class Slow(MemorySink):
            name = "slow"

            def __init__(self) -> None:
                super().__init__()
                self.concurrency = concurrency
                self.active = self.peak = 0

            async def write(self, batch: Batch) -> None:
                self.active += 1
                self.peak = max(self.peak, self.active)
                await asyncio.sleep(0.01)
                self.active -= 1
                await super().write(batch)

        sink = Slow()
        atrace.configure(service="t", sink=sink, batch_size=10, flush_interval=3600)
        for i in range(100):
            atrace.info(f"m{i}")
        assert await atrace.aflush()
        assert sink.peak == concurrency
        assert sorted(r["message"] for r in sink.logs()) == sorted(f"m{i}" for i in range(100))
        assert len(sink.batch_ids) == 10

    def test_sink_object_needs_name(self) -> None:
        """A sink object without a name is a configuration error."""

        class Anonymous:
            async def open(self) -> None: ...
            async def write(self, batch: Batch) -> None: ...
            async def close(self) -> None: ...

        with pytest.raises(atrace.ConfigError):
            atrace.configure(sink=Anonymous())


class TestReconfigure:
    async def test_records_of_old_config_still_written(self) -> None:
        """Records buffered before configure() is called again are written by the old pipeline."""
        old, new = MemorySink(), MemorySink()
        atrace.configure(service="old", sink=old, flush_interval=3600)
        atrace.info("to old")
        atrace.configure(service="new", sink=new, flush_interval=3600)
        atrace.info("to new")
        await atrace.aflush()
        await wait_until(lambda: len(old.rows) == 1)
        assert old.logs()[0]["service"] == "old" and new.logs()[0]["service"] == "new"

    async def test_resource_attributes_are_the_resources(self, memory_sink: MemorySink) -> None:
        """Resource attributes (configure(attributes=...), OTEL_RESOURCE_ATTRIBUTES) are the
        process's resource: one document every record names, not a copy in each record."""
        from atrace._formats.resources import known

        atrace.configure(service="t", sink=memory_sink, attributes={"region": "eu", "k": "global"})
        atrace.info("a", k="own")
        atrace.info("b")
        await atrace.aflush()
        logs = memory_sink.logs()
        assert [r["attrs"] for r in logs] == [{"k": "own"}, None]
        (rid,) = {r["resource_id"] for r in logs}
        doc = orjson.loads(known([rid])[rid])
        assert doc["resource"]["attrs"]["region"] == "eu"
        assert doc["resource"]["attrs"]["k"] == "global"
        assert doc["resource"]["attrs"]["service.name"] == "t"
        assert doc["scope"]["name"] == "atrace"


class TestFork:
    async def test_prefork_workers_write_their_own_records_once(
        self, pg_schema: tuple[str, str], tmp_path: Any
    ) -> None:
        """Workers forked after configure start with an empty ring; nothing is written twice."""
        import os

        import asyncpg

        dsn, schema = pg_schema
        atrace.configure(service="prefork", sink=dsn, schema=schema, flush_interval=3600)
        for i in range(10):
            atrace.info(f"parent-{i}")  # still in the ring when the workers fork
        children = []
        for w in range(3):
            pid = os.fork()
            if pid == 0:  # a worker: emit, flush, leave without running the parent's handlers
                code = 1
                try:
                    for i in range(20):
                        atrace.info(f"worker-{w}-{i}")
                    code = 0 if atrace.shutdown(timeout=30) else 2
                finally:
                    os._exit(code)
            children.append(pid)
        for pid in children:
            _, status = await asyncio.to_thread(os.waitpid, pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert await atrace.aflush(timeout=30)
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(f"SELECT message, pid FROM {schema}.records WHERE kind = 0")
        finally:
            await conn.close()
        messages = sorted(r["message"] for r in rows)
        assert len(messages) == len(set(messages)) == 70
        assert {r["pid"] for r in rows if r["message"].startswith("parent")} == {os.getpid()}
        assert len({r["pid"] for r in rows}) == 4

    async def test_multiprocessing_fork_child(self, pg_schema: tuple[str, str]) -> None:
        """A multiprocessing child (fork start method) flushes its records when it ends."""
        import multiprocessing

        import asyncpg

        dsn, schema = pg_schema
        atrace.configure(service="mp", sink=dsn, schema=schema, flush_interval=3600)
        ctx = multiprocessing.get_context("fork")
        proc = ctx.Process(target=_mp_child, args=(25,))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        conn = await asyncpg.connect(dsn)
        try:
            n = await conn.fetchval(
                f"SELECT count(*) FROM {schema}.records WHERE message LIKE 'mp-child-%'"
            )
        finally:
            await conn.close()
        assert n == 25


def _mp_child(n: int) -> None:
    for i in range(n):
        atrace.info(f"mp-child-{i}")
    # No flush: the child ends through multiprocessing, which skips atexit handlers.


class TestReentrancy:
    async def test_logging_handler_calling_atrace_on_sink_errors(self) -> None:
        """atrace's warnings bridged back into atrace by a handler neither hang nor recurse."""
        import logging

        class Bridge(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                atrace.warning(record.getMessage(), module=record.name)

        bridge = Bridge()
        logger = logging.getLogger("atrace")
        logger.addHandler(bridge)
        sink = FailingSink(failures=10**9)
        try:
            atrace.configure(service="loop", sink=sink, flush_interval=0.01)
            for i in range(50):
                atrace.info(f"m{i}")
                await asyncio.sleep(0.001)
            # Settled (not hung) but False: the failing sink's batches were spilled.
            assert not await asyncio.wait_for(atrace.aflush(timeout=10), 20)
        finally:
            logger.removeHandler(bridge)
        m = atrace.metrics()
        # Warnings are rate-limited, so the feedback adds a bounded handful of records.
        assert 50 < m.accepted < 60
        assert m.accepted == m.written + m.dropped + m.queue_size + m.in_flight + m.spilled_pending


class TestPressure:
    async def test_full_ring_with_a_slow_sink_spills_instead_of_dropping(
        self, tmp_path: Any
    ) -> None:
        """Under drop_oldest, batches that cannot be written in time are spilled, not dropped."""

        class Slow(MemorySink):
            name = "slow"

            async def write(self, batch: Batch) -> None:
                await asyncio.sleep(0.05)
                await super().write(batch)

        sink = Slow()
        atrace.configure(
            service="t", sink=sink, capacity=100, batch_size=10, flush_interval=0.01,
            spill_dir=str(tmp_path / "spill"),
        )  # fmt: skip
        for burst in range(50):
            for i in range(10):
                atrace.info(f"m{burst}-{i}")
            await asyncio.sleep(0.002)
        assert not await atrace.aflush(timeout=30)  # some wait in the spill
        m = atrace.metrics()
        assert m.spilled > 0 and m.dropped_ring < m.spilled
        assert (
            m.accepted
            == 500
            == m.written + m.dropped + m.queue_size + m.in_flight + m.spilled_pending
        )


class TestReplayAccounting:
    async def test_foreign_batch_rejected_on_replay(self, tmp_path: Any) -> None:
        """An earlier process's batch refused for good on replay moves to rejected, and is not
        counted as dropped here, where it was never accepted."""
        import uuid

        from atrace._delivery.spill import Spill
        from atrace._pipeline.encode import Encoder

        class Picky(MemorySink):
            name = "picky"

            async def write(self, batch: Batch) -> None:
                if any(r[13] == "poison" for r in batch.rows):
                    raise ValueError("cannot store this")
                await super().write(batch)

        sink = Picky()
        spill_dir = tmp_path / "spill"
        enc = Encoder(service="old", environment=None, host="h", pid=1)
        rows = enc.rows(
            [
                (
                    0,
                    time.time_ns(),
                    20,
                    None,
                    None,
                    None,
                    None,
                    0,
                    None,
                    "n",
                    "poison",
                    None,
                    None,
                    None,
                )
            ]
        )
        key = SinkOptions.of(sink).spill_key
        earlier = Spill(spill_dir / key)
        assert earlier.append(uuid.uuid4(), rows)
        earlier.close()
        atrace.configure(service="t", sink=sink, spill_dir=str(spill_dir), flush_interval=0.01)
        atrace.info("fresh")
        assert await atrace.aflush()
        await wait_until(lambda: Spill(spill_dir / key).stats().rejected_batches == 1)
        m = atrace.metrics()
        assert (m.dropped, m.replayed, m.written) == (0, 0, 1)
        assert m.accepted == m.written + m.dropped + m.queue_size + m.in_flight + m.spilled_pending
        assert [r["message"] for r in sink.logs()] == ["fresh"]
