"""Circuit breaker state machine: trips, reset timeout, one probe, statistics."""

from __future__ import annotations

import pytest

from atrace._delivery.breaker import BreakerState, CircuitBreaker
from atrace.errors import ConfigError, InternalError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(threshold: int = 3, reset: float = 10.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(failure_threshold=threshold, reset_timeout=reset, clock=clock), clock


class TestBreaker:
    def test_opens_after_threshold_consecutive_failures(self) -> None:
        """N consecutive failed batches open the breaker; a success in between resets the count."""
        b, _ = breaker(3)
        b.record_failure()
        b.record_failure()
        b.record_success()
        b.record_failure()
        b.record_failure()
        assert b.state is BreakerState.CLOSED and b.allow()
        b.record_failure()
        assert b.state is BreakerState.OPEN
        assert b.statistics().trips == 1

    def test_open_refuses_until_reset_then_one_probe(self) -> None:
        """While OPEN nothing is allowed; after the reset time exactly one probe is."""
        b, clock = breaker(1, reset=10)
        b.record_failure()
        assert not b.allow()
        clock.now = 9.9
        assert not b.allow()
        clock.now = 10.0
        assert b.allow()
        assert b.state is BreakerState.HALF_OPEN
        assert not b.allow()  # only one probe in flight

    def test_probe_success_closes(self) -> None:
        """A successful probe closes the breaker and clears the failure count."""
        b, clock = breaker(2, reset=1)
        b.record_failure()
        b.record_failure()
        clock.now = 1
        assert b.allow()
        b.record_success()
        assert b.state is BreakerState.CLOSED
        assert b.statistics().consecutive_failures == 0 and b.allow()

    def test_probe_failure_reopens_and_counts_a_trip(self) -> None:
        """A failed probe reopens the breaker for another reset period."""
        b, clock = breaker(1, reset=5)
        b.record_failure()
        clock.now = 5
        assert b.allow()
        b.record_failure()
        assert b.state is BreakerState.OPEN and b.trips == 2
        clock.now = 9
        assert not b.allow()
        clock.now = 10
        assert b.allow()

    def test_late_failure_while_open_is_harmless(self) -> None:
        """A failure reported while already OPEN neither raises nor counts another trip."""
        b, _ = breaker(1)
        b.record_failure()
        b.record_failure()
        assert b.state is BreakerState.OPEN and b.trips == 1

    def test_snapshot_is_frozen(self) -> None:
        """statistics() is an immutable snapshot."""
        b, _ = breaker()
        snap = b.statistics()
        b.record_failure()
        assert snap.consecutive_failures == 0
        with pytest.raises(AttributeError):
            snap.trips = 5  # type: ignore[misc]

    def test_illegal_move(self) -> None:
        """An illegal transition raises an error naming both states."""
        b, _ = breaker()
        with pytest.raises(InternalError, match="CLOSED to HALF_OPEN"):
            b._set_state(BreakerState.HALF_OPEN)

    def test_validation(self) -> None:
        """Bad settings raise ConfigError naming the field."""
        with pytest.raises(ConfigError, match="failure_threshold"):
            CircuitBreaker(failure_threshold=0)
        with pytest.raises(ConfigError, match="reset_timeout"):
            CircuitBreaker(reset_timeout=-1)
