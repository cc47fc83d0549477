"""One sink's delivery lane: retries, its circuit breaker, and its spill of undelivered batches.

Each configured sink gets a lane of its own, so a dead collector never holds back PostgreSQL (or
the other way round). A batch handed to a lane ends in exactly one place: written, spilled to disk
(replayed later, in order), kept apart as rejected (a permanent error), or counted as dropped
(the spill was full or could not be written).

The lane keeps its sink's connection in an explicit state machine::

    CLOSED ──► OPENING ──► OPEN ──► CLOSING ──► CLOSED
                  │                   (a failed write, or close())
                  └──(open failed)──► CLOSED
    OPEN ──(abandon(): the loop it was opened on is gone)──► CLOSED

Writes that arrive while another write opens or closes the sink wait for it to finish, so that
concurrent writes (``concurrency`` > 1) never open one sink twice.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .._pipeline.metrics import LaneStats
from .._records import Batch
from ..errors import InternalError, redact
from ..sinks._base import Sink, SinkOptions
from .breaker import CircuitBreaker
from .retry import Outcome, Retry, RetryPolicy, RetryState

__all__ = ("LaneState", "SinkLane")

_log = logging.getLogger("atrace")
# How long closing a sink may take before the lane gives up on it.
_CLOSE_TIMEOUT = 5.0


class LaneState(enum.Enum):
    """Whether a lane's sink is open."""

    CLOSED = "closed"  # not open (at first, after a failed write, after close): a write opens it
    OPENING = "opening"  # open() is running; writes arriving meanwhile wait for it
    OPEN = "open"  # writes go straight to the sink
    CLOSING = "closing"  # close() is running; a write arriving meanwhile waits, then opens afresh


_MOVES: dict[LaneState, frozenset[LaneState]] = {
    LaneState.CLOSED: frozenset({LaneState.OPENING}),
    LaneState.OPENING: frozenset({LaneState.OPEN, LaneState.CLOSED}),
    LaneState.OPEN: frozenset({LaneState.CLOSING, LaneState.CLOSED}),
    LaneState.CLOSING: frozenset({LaneState.CLOSED}),
}
# The states a waiting write may go on from.
_SETTLED = frozenset({LaneState.OPEN, LaneState.CLOSED})


class SinkLane:
    """Delivers batches to one sink; what it cannot deliver goes to its spill."""

    def __init__(
        self,
        sink: Sink,
        options: SinkOptions,
        *,
        policy: RetryPolicy,
        breaker: CircuitBreaker,
        spill: Any,
        write_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.sink = sink
        self.policy = policy
        self.breaker = breaker
        self.spill = spill
        self.write_timeout = write_timeout
        self._clock = clock
        self._sleep = sleep
        self.options = options
        self._state = LaneState.CLOSED
        # Writes waiting for an open or a close under way to finish.
        self._waiters: list[asyncio.Future[None]] = []
        self.written = 0
        self.spilled = 0
        self.replayed = 0
        self.dropped_spill = 0
        self.dropped_permanent = 0
        self.handed_over = 0  # spilled records a later pipeline of this process took over
        self.retries = 0
        self.errors = 0
        # Batches this process spilled and has not replayed yet: id -> records.
        self._own_pending: dict[uuid.UUID, int] = {}
        self.last_error = ""  # the last failure, as "Type: message"
        self._replay: asyncio.Future[int] | None = None  # the replay of the spill under way

    @property
    def name(self) -> str:
        """The sink's name."""
        return self.options.name

    @property
    def state(self) -> LaneState:
        """Whether the sink is open, or being opened or closed."""
        return self._state

    def _set_state(self, new: LaneState) -> None:
        if new not in _MOVES[self._state]:
            raise InternalError(f"sink lane cannot move from {self._state.name} to {new.name}")
        self._state = new
        if new in _SETTLED and self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    @property
    def spill_location(self) -> str:
        """Where this lane's spill keeps batches (or that it has none)."""
        return str(self.spill.directory) if self.spill is not None else "nowhere (spill off)"

    @property
    def spilled_pending(self) -> int:
        return sum(self._own_pending.values())

    def stats(self) -> LaneStats:
        b = self.breaker.statistics()
        return LaneStats(
            name=self.name,
            written=self.written,
            spilled=self.spilled,
            spilled_pending=self.spilled_pending,
            replayed=self.replayed,
            dropped_spill=self.dropped_spill,
            dropped_permanent=self.dropped_permanent,
            retries=self.retries,
            errors=self.errors,
            breaker_state=b.state.value,
            breaker_trips=b.trips,
        )

    # ---- sink calls ---------------------------------------------------------------------------

    async def _open(self) -> None:
        while self._state is not LaneState.OPEN:
            if self._state is LaneState.CLOSED:
                self._set_state(LaneState.OPENING)
                try:
                    await asyncio.wait_for(self.sink.open(), self.write_timeout)
                except BaseException:
                    self._set_state(LaneState.CLOSED)
                    raise
                self._set_state(LaneState.OPEN)
            else:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter

    async def _close(self, *, quietly: bool) -> None:
        self._set_state(LaneState.CLOSING)
        try:
            await asyncio.wait_for(self.sink.close(), _CLOSE_TIMEOUT)
        except Exception as exc:
            if not quietly:
                _log.warning("atrace: sink %s did not close cleanly: %r", self.name, exc)
        finally:
            self._set_state(LaneState.CLOSED)

    async def _attempt(self, batch: Batch) -> None:
        await self._open()
        try:
            await asyncio.wait_for(self.sink.write(batch), self.write_timeout)
        except Exception:
            # The connection may be broken: close it, so that the next attempt opens afresh
            # (unless another write that failed is closing it already).
            if self._state is LaneState.OPEN:
                await self._close(quietly=True)
            raise

    async def close(self) -> None:
        """Seal the spill and close the sink (it is opened again by the next write)."""
        if self.spill is not None:
            # Seal the segment being written, so that another process (or the next pipeline
            # here) may replay it.
            self.spill.close()
        if self._state is LaneState.OPEN:
            await self._close(quietly=False)

    def abandon(self) -> None:
        """Forget the open sink without closing it: the loop it was opened on is gone, and its
        connection with it. The next write opens it afresh."""
        self._waiters.clear()  # futures of the dead loop: nobody is left to wake
        self._replay = None  # a task of the dead loop
        if self._state is not LaneState.CLOSED:
            self._set_state(LaneState.CLOSED)

    # ---- delivery -----------------------------------------------------------------------------

    def has_backlog(self) -> bool:
        """Whether the spill holds batches waiting to be replayed."""
        return self.spill is not None and self.spill.stats().pending_batches > 0

    async def _send(self, batch: Batch) -> Outcome:
        """Write with retries, and tell the breaker and the counters how it went.

        Failures are not logged here: the pipeline's reporter says the first of each kind at
        once and sums up the rest (see :mod:`atrace._pipeline.report`).
        """
        outcome = await Retry(self.policy, clock=self._clock, sleep=self._sleep).run(
            functools.partial(self._attempt, batch), self.options.classify
        )
        self.retries += outcome.attempts - 1
        if outcome.delivered:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()
            # Said in log lines and spilled with the batch: no credential of a URL or DSN.
            self.last_error = redact(f"{type(outcome.error).__name__}: {outcome.error}")
        self.errors += outcome.attempts - (1 if outcome.delivered else 0)
        return outcome

    async def deliver(self, batch: Batch) -> bool:
        """Write a batch (with retries); spill it if that fails. True when the sink took it."""
        if not self.breaker.allow():
            self.put_aside(batch, "sink unavailable (circuit open)")
            return False
        outcome = await self._send(batch)
        if outcome.delivered:
            self.written += len(batch)
            return True
        self.put_aside(batch, self.last_error, permanent=outcome.state is RetryState.REJECTED)
        return False

    def put_aside(self, batch: Batch, reason: str, *, permanent: bool = False) -> None:
        """Spill a batch (or keep it apart as rejected); count it dropped if that fails too."""
        n = len(batch)
        stored = self.spill is not None and self.spill.append(
            batch.id, batch.rows, reason=reason, permanent=permanent
        )
        if permanent:
            self.dropped_permanent += n
        elif stored:
            self.spilled += n
            self._own_pending[batch.id] = n
        else:
            self.dropped_spill += n

    def start_replay(self) -> None:
        """Send the spilled batches in the background, unless none wait or a replay runs."""
        if self._replay is None and self.has_backlog():
            self._replay = asyncio.ensure_future(self._replay_spill())
            self._replay.add_done_callback(self._replay_ended)

    def stop_replay(self) -> None:
        """Cancel the replay under way, if any; what it has not sent stays spilled."""
        if self._replay is not None:
            self._replay.cancel()

    async def last_chance(self) -> None:
        """At shutdown: probe an open breaker now (its reset timer is for a running program),
        then send what the spill holds while the sink takes it."""
        replay = self._replay
        if replay is not None:
            replay.cancel()
            await asyncio.wait({replay})
        if self.spill is None or not self.has_backlog():
            return
        self.breaker.probe_now()
        await self._replay_spill()

    def hand_over(self) -> dict[uuid.UUID, int]:
        """Give up this process's spilled batches not replayed yet (a later pipeline of this
        process, spilling to the same place, counts them from now on)."""
        pending, self._own_pending = self._own_pending, {}
        self.handed_over += sum(pending.values())
        return pending

    def adopt(self, pending: dict[uuid.UUID, int]) -> None:
        """Count spilled batches an earlier pipeline of this process handed over as this
        lane's own: written once replayed, dropped if lost."""
        self._own_pending.update(pending)

    def _count_lost(self) -> None:
        # Batches this process spilled that the spill found damaged or gone: dropped, and said.
        for batch_id, records in self.spill.take_lost():
            if self._own_pending.pop(batch_id, None) is not None:
                self.dropped_spill += records

    def _replay_ended(self, task: asyncio.Future[int]) -> None:
        if self._replay is task:
            self._replay = None
        if not task.cancelled() and task.exception() is not None:
            _log.error("atrace: replay of sink %s failed", self.name, exc_info=task.exception())

    async def _replay_spill(self) -> int:
        """Send spilled batches, oldest first, while the sink takes them; returns records sent.

        Stops at the first retryable failure (the batch stays spilled); a batch the sink refuses
        for good moves to the rejected area. Yields to the loop after each batch.
        """
        if self.spill is None:
            return 0
        sent = 0
        for spilled in self.spill.replay():
            # No new batch may come for a while: a spilled batch can be the breaker's probe.
            if not self.breaker.allow():
                break
            batch = Batch(list(spilled.rows), spilled.batch_id)
            n = len(batch)
            outcome = await self._send(batch)
            if not outcome.delivered and outcome.state is not RetryState.REJECTED:
                break
            self.spill.ack(spilled)
            own = self._own_pending.pop(batch.id, None) is not None
            if outcome.delivered:
                self.replayed += n
                sent += n
                if own:
                    self.written += n
            else:
                self.spill.append(batch.id, batch.rows, reason="rejected on replay", permanent=True)
                if own:  # an earlier process's records were never accepted here
                    self.dropped_permanent += n
            await asyncio.sleep(0)
        self._count_lost()
        return sent
