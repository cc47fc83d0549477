"""Every record accepted is written, or counted and said: shutdown, reconfiguring, feedback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import atrace
from _proxy import TCPProxy
from atrace._delivery.lane import SinkLane
from atrace._pipeline import ring as _ring
from atrace._pipeline.report import SUMMARY_EVERY, Reporter
from atrace.testing import MemorySink


def identity() -> tuple[int, int]:
    """(accepted, written + dropped + queue_size + in_flight + spilled_pending)."""
    m = atrace.metrics()
    return m.accepted, m.written + m.dropped + m.queue_size + m.in_flight + m.spilled_pending


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "atrace" and r.levelno >= 30]


@pytest.fixture
async def proxy(pg_server: Any) -> Any:
    async with TCPProxy(pg_server.host, pg_server.port) as p:
        yield p


async def stored(dsn: str, schema: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.records WHERE kind = 0"))
    finally:
        await conn.close()


# A breaker that, once open, waits far longer than any test: only the last chance can deliver.
SLOW_BREAKER = {
    "retry_attempts": 1,
    "retry_deadline": 0.5,
    "breaker_threshold": 1,
    "breaker_reset": 3600,
    "flush_interval": 0.05,
    "batch_size": 500,
}


class TestShutdownDelivers:
    async def test_after_an_outage_shutdown_sends_what_was_spilled(
        self,
        proxy: TCPProxy,
        pg_schema: tuple[str, str],
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        dsn, schema = pg_schema
        atrace.configure(
            service="blip",
            sink=proxy.url_for(dsn),
            schema=schema,
            spill_dir=str(tmp_path / "spill"),
            **SLOW_BREAKER,
        )
        proxy.cut()
        for i in range(3000):
            atrace.info("during the cut", i=i)
        from _helpers import wait_until

        await wait_until(lambda: atrace.metrics().spilled_pending == 3000, describe=atrace.metrics)
        assert atrace.metrics().breaker_state == "open"
        proxy.restore()
        for i in range(100):
            atrace.info("after the cut", i=i)
        assert await atrace.ashutdown(timeout=30)
        m = atrace.metrics()
        assert (m.written, m.spilled_pending, m.dropped) == (3100, 0, 0)
        assert await stored(dsn, schema) == 3100
        assert identity()[0] == identity()[1]
        # The cut was said (the first failure and the first spill), the end was clean.
        said = warnings_of(caplog)
        assert any("spilled to" in w for w in said)
        assert not any("wait in the spill" in w for w in said)

    async def test_what_cannot_be_delivered_stays_spilled_and_is_said(
        self,
        proxy: TCPProxy,
        pg_schema: tuple[str, str],
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        dsn, schema = pg_schema
        spill = tmp_path / "spill"
        atrace.configure(
            sink=proxy.url_for(dsn), schema=schema, spill_dir=str(spill), **SLOW_BREAKER
        )
        proxy.cut()
        for i in range(250):
            atrace.info("lost sink", i=i)
        assert not await atrace.ashutdown(timeout=5)
        m = atrace.metrics()
        assert (m.written, m.spilled_pending) == (0, 250)
        assert identity()[0] == identity()[1]
        ends = [w for w in warnings_of(caplog) if w.startswith("atrace: at shutdown")]
        assert len(ends) == 1
        assert "250 in" in ends[0] and str(spill) in ends[0]


class TestReconfiguring:
    def test_records_before_configure_are_written_by_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # What the environment alone would configure never gets to write them.
        monkeypatch.setenv("ATRACE_SINK", "console")
        monkeypatch.setenv("ATRACE_FLUSH_INTERVAL", "3600")
        atrace.info("too early", n=1)
        assert atrace.metrics().accepted == 1
        sink = MemorySink()
        atrace.configure(service="configured", sink=sink)
        m = atrace.metrics()
        assert (m.accepted, m.queue_size, m.dropped) == (1, 1, 0)
        assert atrace.flush()
        rows = sink.records()
        assert [(r["message"], r["service"]) for r in rows] == [("too early", "configured")]
        assert identity() == (1, 1)

    def test_a_second_configuration_keeps_the_first_ones_counted(self) -> None:
        first, second = MemorySink(), MemorySink()
        atrace.configure(sink=first, flush_interval=3600)
        atrace.info("a")
        atrace.info("b")
        atrace.configure(sink=second, flush_interval=3600)
        atrace.info("c")
        assert atrace.flush()
        m = atrace.metrics()
        assert (m.accepted, m.written, m.dropped) == (3, 3, 0)
        assert [r["message"] for r in first.records()] == ["a", "b"]
        assert [r["message"] for r in second.records()] == ["c"]

    def test_reset_forgets_the_counts(self) -> None:
        atrace.configure(sink=MemorySink())
        atrace.info("a")
        atrace.reset()
        atrace.configure(sink=MemorySink())
        assert atrace.metrics().accepted == 0


class TestHonestResults:
    def test_flush_is_false_when_records_were_dropped(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        sink = MemorySink()
        atrace.configure(sink=sink, capacity=10, policy="drop_newest", flush_interval=3600)
        for i in range(25):
            atrace.info("burst", i=i)
        assert not atrace.flush()
        m = atrace.metrics()
        assert (m.written, m.dropped_ring) == (10, 15)
        full = [w for w in warnings_of(caplog) if "buffer is full" in w]
        assert len(full) == 1 and "15 records dropped" in full[0]
        # Dropped records stay unwritten: every later flush says so too.
        atrace.info("later")
        assert not atrace.flush()
        assert len([w for w in warnings_of(caplog) if "buffer is full" in w]) == 1

    def test_flush_is_true_when_everything_was_written(self) -> None:
        atrace.configure(sink=MemorySink())
        atrace.info("fine")
        assert atrace.flush()
        assert atrace.shutdown()


class TestReporter:
    def test_the_first_of_each_kind_at_once_then_a_summary_a_minute(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        now = [0.0]
        ring = _ring.Ring(4, "drop_newest")
        reporter = Reporter(ring, [], lambda: now[0])
        with caplog.at_level(logging.WARNING, logger="atrace"):
            for i in range(6):
                ring.push(("r", i))
            reporter.check()  # 2 dropped: said at once
            for i in range(5):
                ring.push(("r", i))
            reporter.check()  # 5 more: kept for the summary
            now[0] += SUMMARY_EVERY / 2
            reporter.check()
            assert len(warnings_of(caplog)) == 1
            now[0] += SUMMARY_EVERY / 2
            reporter.check()
            reporter.check()  # nothing new: no second summary
        said = warnings_of(caplog)
        assert len(said) == 2
        assert "2 records dropped" in said[0]
        assert said[1] == "atrace: in the last 60 s: 5 dropped (buffer full)"

    def test_the_lane_failure_and_spill_lines_name_the_cause_and_place(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        lane: Any = SinkLane.__new__(SinkLane)  # counters only: no sink is called here
        lane.options = type("O", (), {"name": "pg"})()
        lane.errors = lane.spilled = lane.dropped_spill = lane.dropped_permanent = 0
        lane.last_error = ""
        lane.spill = type("S", (), {"directory": tmp_path})()
        reporter = Reporter(_ring.Ring(4, "drop_oldest"), [lane], lambda: 0.0)
        with caplog.at_level(logging.WARNING, logger="atrace"):
            lane.errors, lane.spilled = 2, 100
            lane.last_error = "ConnectionRefusedError: nope"
            reporter.check()
        said = warnings_of(caplog)
        assert said[0] == (
            "atrace: sink pg failed (ConnectionRefusedError: nope); retrying, then spilling"
            " what it does not take"
        )
        assert str(tmp_path) in said[1] and "100 records spilled" in said[1]


class TestExitLine:
    def test_a_process_ending_with_records_spilled_says_so(self, tmp_path: Path) -> None:
        spill = tmp_path / "spill"
        script = textwrap.dedent(
            f"""
            import atrace
            atrace.configure(
                sink="postgresql://nobody@127.0.0.1:9/none", spill_dir={str(spill)!r},
                retry_attempts=1, retry_deadline=0.2, breaker_threshold=1,
                shutdown_timeout=3, flush_interval=3600,
            )
            for i in range(40):
                atrace.info("never delivered", i=i)
            """
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATRACE_SINK")}
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 0, done.stderr
        ends = [line for line in done.stderr.splitlines() if line.startswith("atrace: at exit")]
        assert len(ends) == 1, done.stderr
        assert "40 in" in ends[0] and str(spill) in ends[0]


_UNCONFIGURED = """
import sys
sys.modules["pgserver"] = None  # the embedded default cannot be made
import atrace
from atrace.testing import MemorySink
atrace.info("from a library, before any configuration", n=1)
print("emitted", atrace.metrics().queue_size)
if {configure!r}:
    sink = MemorySink()
    atrace.configure(sink=sink)
    print("flushed", atrace.flush(), [r["message"] for r in sink.records()])
"""


class TestUnconfiguredWithoutTheDefault:
    def _run(self, configure: bool) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATRACE_", "OTEL_"))}
        return subprocess.run(
            [sys.executable, "-c", _UNCONFIGURED.format(configure=configure)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    def test_emit_never_fails_and_a_later_configure_writes_the_records(self) -> None:
        done = self._run(configure=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "emitted 1",
            "flushed True ['from a library, before any configuration']",
        ]
        said = [line for line in done.stderr.splitlines() if line.startswith("atrace:")]
        assert len(said) == 1 and "kept in memory until atrace.configure()" in said[0]
        assert "atrace[embedded]" in said[0]

    def test_never_configured_the_exit_says_what_was_not_written(self) -> None:
        done = self._run(configure=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["emitted 1"]
        assert "atrace: 1 records were never written: atrace was not configured" in done.stderr
