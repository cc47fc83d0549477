"""A sink's delivery lane: its open/close state machine, concurrent writes, abandoning a sink."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from atrace._delivery.breaker import CircuitBreaker
from atrace._delivery.lane import LaneState, SinkLane
from atrace._delivery.retry import RetryPolicy
from atrace._records import Batch
from atrace.errors import InternalError
from atrace.sinks._base import SinkOptions
from atrace.testing import MemorySink

CLOSED, OPENING, OPEN, CLOSING = (
    LaneState.CLOSED,
    LaneState.OPENING,
    LaneState.OPEN,
    LaneState.CLOSING,
)
# Every move a lane may make, and no other.
ALLOWED = {
    (CLOSED, OPENING),
    (OPENING, OPEN),
    (OPENING, CLOSED),
    (OPEN, CLOSING),
    (OPEN, CLOSED),
    (CLOSING, CLOSED),
}
PATHS = {CLOSED: [], OPENING: [OPENING], OPEN: [OPENING, OPEN], CLOSING: [OPENING, OPEN, CLOSING]}


def lane_for(sink: MemorySink, attempts: int = 1) -> SinkLane:
    return SinkLane(
        sink,
        SinkOptions.of(sink),
        policy=RetryPolicy(max_attempts=attempts),
        breaker=CircuitBreaker(),
        spill=None,
        write_timeout=10.0,
    )


def batch(n: int = 1) -> Batch:
    return Batch([(i,) for i in range(n)])


class TestStateMachine:
    @pytest.mark.parametrize(("old", "new"), sorted(ALLOWED, key=lambda m: (m[0].name, m[1].name)))
    def test_allowed_move(self, old: LaneState, new: LaneState) -> None:
        """Each move of the table is taken."""
        lane = lane_for(MemorySink())
        for step in PATHS[old]:
            lane._set_state(step)
        lane._set_state(new)
        assert lane.state is new

    @pytest.mark.parametrize(
        ("old", "new"),
        [m for m in itertools.product(LaneState, repeat=2) if m not in ALLOWED],
        ids=lambda s: s.name,
    )
    def test_refused_move_names_both_states(self, old: LaneState, new: LaneState) -> None:
        """Any move outside the table raises InternalError naming both states."""
        lane = lane_for(MemorySink())
        for step in PATHS[old]:
            lane._set_state(step)
        with pytest.raises(InternalError, match=f"from {old.name} to {new.name}"):
            lane._set_state(new)
        assert lane.state is old


class TestOpening:
    async def test_first_write_opens_and_close_closes(self) -> None:
        """The first write opens the sink; close() closes it and leaves the lane CLOSED."""
        sink = MemorySink()
        lane = lane_for(sink)
        assert await lane.deliver(batch())
        assert (lane.state, sink.opened) == (OPEN, 1)
        await lane.close()
        assert (lane.state, sink.closed) == (CLOSED, 1)

    async def test_concurrent_writes_open_once(self) -> None:
        """Writes arriving while the sink is being opened wait for that open instead of opening
        it again."""
        gate = asyncio.Event()

        class SlowOpen(MemorySink):
            async def open(self) -> None:
                await gate.wait()
                await super().open()

        sink = SlowOpen()
        lane = lane_for(sink)
        writes = [asyncio.ensure_future(lane.deliver(batch())) for _ in range(3)]
        await asyncio.sleep(0)
        assert lane.state is OPENING
        gate.set()
        assert await asyncio.gather(*writes) == [True, True, True]
        assert (sink.opened, len(sink.rows)) == (1, 3)

    async def test_failed_open_lets_a_waiting_write_try_again(self) -> None:
        """When the open under way fails, a write that waited for it opens the sink itself."""
        gate = asyncio.Event()

        class FlakyOpen(MemorySink):
            async def open(self) -> None:
                await gate.wait()
                await super().open()
                if self.opened == 1:
                    raise ConnectionRefusedError("not yet")

        sink = FlakyOpen()
        lane = lane_for(sink)
        first = asyncio.ensure_future(lane.deliver(batch()))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(lane.deliver(batch()))
        await asyncio.sleep(0)
        gate.set()
        assert await asyncio.gather(first, second) == [False, True]
        assert (sink.opened, lane.state) == (2, OPEN)

    async def test_failed_write_closes_and_the_next_reopens(self) -> None:
        """A failed write closes the sink (the connection may be broken); the next write opens
        it afresh."""

        class FailsOnce(MemorySink):
            async def write(self, batch: Batch) -> None:
                if not self.closed:
                    raise ConnectionResetError("reset")
                await super().write(batch)

        sink = FailsOnce()
        lane = lane_for(sink)
        assert not await lane.deliver(batch())
        assert (lane.state, sink.closed) == (CLOSED, 1)
        assert await lane.deliver(batch())
        assert (lane.state, sink.opened, len(sink.rows)) == (OPEN, 2, 1)

    async def test_abandon_forgets_without_closing(self) -> None:
        """abandon() leaves the lane CLOSED without calling the sink's close(); the next write
        opens it again."""
        sink = MemorySink()
        lane = lane_for(sink)
        assert await lane.deliver(batch())
        lane.abandon()
        assert (lane.state, sink.closed) == (CLOSED, 0)
        lane.abandon()  # nothing left to forget
        assert await lane.deliver(batch())
        assert sink.opened == 2
