"""Identifiers: W3C-valid, time-ordered trace ids; random non-zero span ids; fresh after fork."""

from __future__ import annotations

import os
import time

import pytest

from atrace._emit.ids import (
    format_span_id,
    new_span_id,
    new_trace_id,
    parse_span_id,
    parse_trace_id,
    trace_id_time_ms,
)


class TestTraceId:
    def test_shape(self) -> None:
        """A trace id is 32 lowercase hex digits and never all zero."""
        for _ in range(1000):
            tid = new_trace_id()
            assert len(tid) == 32
            assert int(tid, 16) != 0
            assert tid == tid.lower()
            assert parse_trace_id(tid) == tid

    def test_time_ordered(self) -> None:
        """The first 48 bits are the creation time in milliseconds, so ids sort by time."""
        before = time.time_ns() // 1_000_000
        tid = new_trace_id()
        after = time.time_ns() // 1_000_000
        assert before <= trace_id_time_ms(tid) <= after
        time.sleep(0.002)
        assert new_trace_id()[:12] > tid[:12]

    def test_unique(self) -> None:
        """Ids made in the same millisecond still differ (80 random bits)."""
        ids = {new_trace_id() for _ in range(50_000)}
        assert len(ids) == 50_000

    def test_parse_rejects_invalid(self) -> None:
        """Parsing refuses the all-zero id, wrong lengths and non-hex, and accepts UUID dashes."""
        assert parse_trace_id("0" * 32) is None
        assert parse_trace_id("abc") is None
        assert parse_trace_id("g" * 32) is None
        assert (
            parse_trace_id("4bf92f35-77b3-4da6-a3ce-929d0e0e4736")
            == "4bf92f3577b34da6a3ce929d0e0e4736"
        )


class TestSpanId:
    def test_range_and_nonzero(self) -> None:
        """Span ids are non-zero signed 64-bit integers covering both signs."""
        ids = [new_span_id() for _ in range(10_000)]
        assert all(i != 0 and -(1 << 63) <= i < (1 << 63) for i in ids)
        assert any(i < 0 for i in ids) and any(i > 0 for i in ids)

    def test_hex_round_trip(self) -> None:
        """The 16-hex W3C form round-trips to the same signed integer."""
        for sid in (1, -1, (1 << 63) - 1, -(1 << 63), new_span_id()):
            text = format_span_id(sid)
            assert len(text) == 16
            assert parse_span_id(text) == sid

    def test_parse_rejects_zero(self) -> None:
        """The all-zero span id is invalid in W3C trace context."""
        assert parse_span_id("0" * 16) is None
        assert parse_span_id("xyz") is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
class TestFork:
    def test_child_gets_fresh_random_state(self) -> None:
        """A forked child draws different span ids from its parent's next ones."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.write(write, format_span_id(new_span_id()).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child = os.read(read, 64).decode()
        parent = format_span_id(new_span_id())
        assert child != parent
