"""Circuit breaker state machine: trips, reset timeout, one probe, statistics."""

from __future__ import annotations

import dataclasses

import pytest

from atrace._delivery.breaker import BreakerState, BreakerStats, CircuitBreaker
from atrace.errors import ConfigError, InternalError
from atrace.testing import FakeClock


def breaker(threshold: int = 3, reset: float = 10.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=threshold, reset_timeout=reset, clock=clock.monotonic)
    return b, clock


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
        clock.advance(9.9)
        assert not b.allow()
        clock.advance(0.1)
        assert b.allow()
        assert b.state is BreakerState.HALF_OPEN
        assert not b.allow()  # only one probe in flight

    def test_probe_success_closes(self) -> None:
        """A successful probe closes the breaker and clears the failure count."""
        b, clock = breaker(2, reset=1)
        b.record_failure()
        b.record_failure()
        clock.advance(1)
        assert b.allow()
        b.record_success()
        assert b.state is BreakerState.CLOSED
        assert b.statistics().consecutive_failures == 0 and b.allow()

    def test_probe_failure_reopens_and_counts_a_trip(self) -> None:
        """A failed probe reopens the breaker for another reset period."""
        b, clock = breaker(1, reset=5)
        b.record_failure()
        clock.advance(5)
        assert b.allow()
        b.record_failure()
        assert b.state is BreakerState.OPEN and b.trips == 2
        clock.advance(4)
        assert not b.allow()
        clock.advance(1)
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

    def test_snapshot_is_a_keyword_only_value(self) -> None:
        """statistics() gives a keyword-only dataclass equal to another of the same figures."""
        b, _ = breaker(1)
        b.record_failure()
        snap = b.statistics()
        assert snap == BreakerStats(state=BreakerState.OPEN, consecutive_failures=1, trips=1)
        assert dataclasses.is_dataclass(snap) and not hasattr(snap, "__dict__")
        with pytest.raises(TypeError):
            BreakerStats(BreakerState.OPEN, 1, 1)  # type: ignore[misc]

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
        with pytest.raises(
            ConfigError, match=r"^failure_threshold=True: expected an integer >= 1$"
        ):
            CircuitBreaker(failure_threshold=True)
        with pytest.raises(ConfigError, match=r"^reset_timeout='5': expected a number >= 0$"):
            CircuitBreaker(reset_timeout="5")  # type: ignore[arg-type]
