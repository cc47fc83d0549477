"""The circuit breaker: stop calling a sink that keeps failing, probe it now and then.

::

    CLOSED ──(threshold consecutive failed batches)──► OPEN
    OPEN ──(reset_timeout elapsed: one probe allowed)──► HALF_OPEN
    HALF_OPEN ──(probe succeeded)──► CLOSED
    HALF_OPEN ──(probe failed)──► OPEN

While OPEN the sink is not called at all (no connection attempt); its batches go to the spill.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import check_int, check_number
from ..errors import InternalError

__all__ = ("BreakerState", "BreakerStats", "CircuitBreaker")


class BreakerState(enum.Enum):
    """Whether a sink is being called."""

    CLOSED = "closed"  # healthy: every batch is sent
    OPEN = "open"  # failing: nothing is sent until the reset timeout has passed
    HALF_OPEN = "half_open"  # one probe batch is sent; its outcome decides


_MOVES: dict[BreakerState, frozenset[BreakerState]] = {
    BreakerState.CLOSED: frozenset({BreakerState.OPEN}),
    BreakerState.OPEN: frozenset({BreakerState.HALF_OPEN}),
    BreakerState.HALF_OPEN: frozenset({BreakerState.CLOSED, BreakerState.OPEN}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStats:
    """A frozen snapshot of a breaker.

    :ivar state: whether the sink is being called.
    :ivar consecutive_failures: failed batches since the last one that went through.
    :ivar trips: times the breaker opened.
    """

    state: BreakerState
    consecutive_failures: int
    trips: int


class CircuitBreaker:
    """Counts consecutive failed batches of one sink and decides whether to call it."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = check_int("failure_threshold", failure_threshold, 1)
        self.reset_timeout = check_number("reset_timeout", reset_timeout, 0)
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.trips = 0

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN turns into HALF_OPEN only through ``allow``)."""
        return self._state

    def _set_state(self, new: BreakerState) -> None:
        if new not in _MOVES[self._state]:
            raise InternalError(f"breaker cannot move from {self._state.name} to {new.name}")
        self._state = new
        if new is BreakerState.OPEN:
            self.trips += 1
            self._opened_at = self._clock()
            self._probing = False
        elif new is BreakerState.CLOSED:
            self._failures = 0
            self._probing = False

    def allow(self) -> bool:
        """Whether the next batch may be sent (in HALF_OPEN: only the one probe)."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.reset_timeout:
                return False
            self._set_state(BreakerState.HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def probe_now(self) -> None:
        """Allow one probe at once, however recently the breaker opened (the last chance at
        shutdown: no later moment will come to wait for)."""
        if self._state is BreakerState.OPEN:
            self._set_state(BreakerState.HALF_OPEN)
            self._probing = False

    def record_success(self) -> None:
        """A batch went through."""
        if self._state is BreakerState.HALF_OPEN:
            self._set_state(BreakerState.CLOSED)
        else:
            self._failures = 0

    def record_failure(self) -> None:
        """A batch could not be delivered (after its retries)."""
        self._failures += 1
        if self._state is BreakerState.OPEN:
            return  # a batch sent before the trip, failing late: already accounted for
        probe_failed = self._state is BreakerState.HALF_OPEN
        if probe_failed or self._failures >= self.failure_threshold:
            self._set_state(BreakerState.OPEN)

    def statistics(self) -> BreakerStats:
        """A frozen snapshot: state, consecutive failures, trips."""
        return BreakerStats(
            state=self._state, consecutive_failures=self._failures, trips=self.trips
        )
