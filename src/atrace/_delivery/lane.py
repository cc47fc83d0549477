"""One sink's delivery lane: retries, its circuit breaker, and its spill of undelivered batches.

Each configured sink gets a lane of its own, so a dead collector never holds back PostgreSQL (or
the other way round). A batch handed to a lane ends in exactly one place: written, spilled to disk
(replayed later, in order), kept apart as rejected (a permanent error), or counted as dropped
(the spill was full or could not be written).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ..sinks import Batch, Sink
from .breaker import CircuitBreaker
from .retry import Outcome, Retry, RetryPolicy, RetryState, Verdict, classify_default

__all__ = ("LaneStats", "SinkLane")

_log = logging.getLogger("atrace")
# A sink failing for minutes would otherwise log every batch.
_WARN_EVERY = 10.0


class LaneStats:
    """A frozen snapshot of one lane's counters (records unless said otherwise)."""

    __slots__ = (
        "breaker_state",
        "breaker_trips",
        "dropped_permanent",
        "dropped_spill",
        "errors",
        "name",
        "replayed",
        "retries",
        "spilled",
        "spilled_pending",
        "written",
    )

    def __init__(self, **values: Any) -> None:
        for key in self.__slots__:
            object.__setattr__(self, key, values[key])

    name: str
    written: int  # stored by the sink, directly or by replay of this process's spill
    spilled: int  # appended to the spill by this process
    spilled_pending: int  # of those, not replayed yet
    replayed: int  # replayed from the spill (this process's or an earlier one's)
    dropped_spill: int  # could not be spilled: the spill was full or not writable
    dropped_permanent: int  # refused by the sink with a permanent error (kept apart on disk)
    retries: int  # extra attempts (batches)
    errors: int  # failed attempts (batches)
    breaker_state: str
    breaker_trips: int

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("LaneStats is a snapshot")

    def __repr__(self) -> str:
        return "LaneStats(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


class SinkLane:
    """Delivers batches to one sink; what it cannot deliver goes to its spill."""

    def __init__(
        self,
        sink: Sink,
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
        classify = getattr(sink, "classify", None)
        self.classify: Callable[[BaseException], Verdict] = (
            classify if callable(classify) else classify_default
        )
        self.is_open = False
        self.written = 0
        self.spilled = 0
        self.replayed = 0
        self.dropped_spill = 0
        self.dropped_permanent = 0
        self.retries = 0
        self.errors = 0
        # Batches this process spilled and has not replayed yet: id -> records.
        self._own_pending: dict[uuid.UUID, int] = {}
        self._last_warning = -1e18
        self._replaying = False

    @property
    def name(self) -> str:
        return str(getattr(self.sink, "name", type(self.sink).__name__))

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

    async def _attempt(self, batch: Batch) -> None:
        if not self.is_open:
            await asyncio.wait_for(self.sink.open(), self.write_timeout)
            self.is_open = True
        try:
            await asyncio.wait_for(self.sink.write(batch), self.write_timeout)
        except Exception:
            # The connection may be broken: open afresh on the next attempt.
            self.is_open = False
            try:
                await asyncio.wait_for(self.sink.close(), 5.0)
            except Exception:
                pass
            raise

    async def close(self) -> None:
        if self.spill is not None:
            # Seal the segment being written, so that another process (or the next pipeline
            # here) may replay it.
            self.spill.close()
        if self.is_open:
            self.is_open = False
            try:
                await asyncio.wait_for(self.sink.close(), 5.0)
            except Exception as exc:
                _log.warning("atrace: sink %s did not close cleanly: %r", self.name, exc)

    def _warn(self, message: str, *args: Any) -> None:
        now = self._clock()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            _log.warning(message, *args)

    # ---- delivery -----------------------------------------------------------------------------

    def has_backlog(self) -> bool:
        """Whether the spill holds batches waiting to be replayed."""
        return self.spill is not None and self.spill.stats().pending_batches > 0

    async def _send(self, batch: Batch) -> Outcome:
        """Write with retries, and tell the breaker and the counters how it went."""
        outcome = await Retry(self.policy, clock=self._clock, sleep=self._sleep).run(
            functools.partial(self._attempt, batch), self.classify
        )
        self.retries += outcome.attempts - 1
        self.errors += outcome.attempts - (1 if outcome.delivered else 0)
        if outcome.delivered:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()
            reason = f"{type(outcome.error).__name__}: {outcome.error}"
            if outcome.state is RetryState.REJECTED:
                # Rare and final: always said, with its cause.
                _log.warning(
                    "atrace: sink %s refused a batch of %d for good: %s",
                    self.name,
                    len(batch),
                    reason,
                )
            else:
                self._warn(
                    "atrace: sink %s could not take a batch of %d: %s",
                    self.name,
                    len(batch),
                    reason,
                )
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
        reason = f"{type(outcome.error).__name__}: {outcome.error}"
        self.put_aside(batch, reason, permanent=outcome.state is RetryState.REJECTED)
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

    async def replay(self) -> int:
        """Send spilled batches, oldest first, while the sink takes them; returns records sent.

        Stops at the first retryable failure (the batch stays spilled); a batch the sink refuses
        for good moves to the rejected area. Yields to the loop after each batch.
        """
        if self.spill is None or self._replaying:
            return 0
        self._replaying = True
        sent = 0
        try:
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
                    self.spill.append(
                        batch.id, batch.rows, reason="rejected on replay", permanent=True
                    )
                    if own:  # an earlier process's records were never accepted here
                        self.dropped_permanent += n
                await asyncio.sleep(0)
        finally:
            self._replaying = False
        return sent
