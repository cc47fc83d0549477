"""Retry state machine: backoff, jitter, deadline, attempts, permanent errors, Retry-After."""

from __future__ import annotations

import email.utils
import random

import pytest

from atrace._delivery.retry import (
    Retry,
    RetryPolicy,
    RetryState,
    Verdict,
    classify_default,
    parse_retry_after,
)
from atrace.errors import ConfigError, InternalError

SEED = 1234


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky:
    """An attempt that fails ``failures`` times with ``exc``, then succeeds."""

    def __init__(self, failures: int, exc: Exception | None = None) -> None:
        self.failures = failures
        self.exc = exc or ConnectionResetError("reset")
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc


def make(policy: RetryPolicy, t: FakeTime) -> Retry:
    print(f"seed {SEED}")
    return Retry(policy, clock=t.clock, sleep=t.sleep, rng=random.Random(SEED))


class TestRetry:
    async def test_succeeds_after_retryable_failures(self) -> None:
        """Retryable failures are retried with growing pauses until the write succeeds."""
        t = FakeTime()
        r = make(RetryPolicy(max_attempts=5, base_delay=1, multiplier=2, jitter=0, deadline=100), t)
        out = await r.run(Flaky(3))
        assert out.delivered and out.attempts == 4
        assert t.sleeps == [1.0, 2.0, 4.0]
        assert r.history == [
            RetryState.IDLE,
            RetryState.ATTEMPTING,
            RetryState.BACKING_OFF,
            RetryState.ATTEMPTING,
            RetryState.BACKING_OFF,
            RetryState.ATTEMPTING,
            RetryState.BACKING_OFF,
            RetryState.ATTEMPTING,
            RetryState.SUCCEEDED,
        ]

    async def test_max_delay_caps_backoff(self) -> None:
        """The pause never exceeds max_delay."""
        t = FakeTime()
        r = make(RetryPolicy(max_attempts=6, base_delay=1, max_delay=3, jitter=0, deadline=100), t)
        await r.run(Flaky(5))
        assert t.sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]

    async def test_jitter_stays_within_bounds(self) -> None:
        """With jitter j, each pause lies in [(1-j)·d, d] and pauses differ."""
        t = FakeTime()
        r = make(
            RetryPolicy(max_attempts=20, base_delay=1, max_delay=1, jitter=0.5, deadline=1e9), t
        )
        await r.run(Flaky(19))
        assert all(0.5 <= s <= 1.0 for s in t.sleeps)
        assert len(set(t.sleeps)) > 1

    async def test_attempts_exhausted(self) -> None:
        """After max_attempts retryable failures the batch is EXHAUSTED with the last error."""
        t = FakeTime()
        attempt = Flaky(99)
        out = await make(RetryPolicy(max_attempts=3, jitter=0, deadline=100), t).run(attempt)
        assert out.state is RetryState.EXHAUSTED and out.attempts == 3 == attempt.calls
        assert isinstance(out.error, ConnectionResetError)

    async def test_deadline_exhausts_before_sleeping_past_it(self) -> None:
        """A pause that would end after the batch's deadline is not taken."""
        t = FakeTime()
        policy = RetryPolicy(max_attempts=50, base_delay=1, multiplier=2, jitter=0, deadline=5)
        out = await make(policy, t).run(Flaky(99))
        assert out.state is RetryState.EXHAUSTED
        assert t.sleeps == [1.0, 2.0] and t.now <= 5

    async def test_permanent_error_never_retried(self) -> None:
        """A permanent error ends in REJECTED after exactly one attempt."""
        t = FakeTime()
        attempt = Flaky(99, ValueError("bad row"))
        out = await make(RetryPolicy(), t).run(attempt)
        assert out.state is RetryState.REJECTED and attempt.calls == 1 and t.sleeps == []
        assert out.verdict is not None and not out.verdict.retryable

    async def test_retry_after_is_honoured(self) -> None:
        """A verdict carrying retry_after sets the pause instead of the backoff."""
        t = FakeTime()
        out = await make(RetryPolicy(jitter=0, deadline=100), t).run(
            Flaky(2), lambda exc: Verdict(True, retry_after=7.0)
        )
        assert out.delivered and t.sleeps == [7.0, 7.0]

    async def test_illegal_move_names_both_states(self) -> None:
        """Driving the machine out of order raises an error naming both states."""
        r = Retry()
        with pytest.raises(InternalError, match="IDLE to SUCCEEDED"):
            r._set_state(RetryState.SUCCEEDED)

    def test_policy_validation(self) -> None:
        """Invalid policy values raise ConfigError naming the field."""
        for kwargs, field in (
            ({"max_attempts": 0}, "max_attempts"),
            ({"jitter": 2}, "jitter"),
            ({"multiplier": 0.5}, "multiplier"),
            ({"deadline": -1}, "deadline"),
        ):
            with pytest.raises(ConfigError, match=field):
                RetryPolicy(**kwargs)


class TestClassification:
    def test_default_classifier(self) -> None:
        """Connection errors and time-outs are retryable; other errors are permanent."""
        assert classify_default(ConnectionRefusedError()).retryable
        assert classify_default(TimeoutError()).retryable
        assert classify_default(OSError("net down")).retryable
        assert not classify_default(ValueError()).retryable
        assert not classify_default(KeyError()).retryable


class TestRetryAfter:
    def test_seconds(self) -> None:
        """Delta-seconds parse as seconds."""
        assert parse_retry_after("120") == 120.0
        assert parse_retry_after(" 0 ") == 0.0

    def test_http_date(self) -> None:
        """An HTTP-date gives the seconds from now until then (never negative)."""
        now = 1_700_000_000.0
        header = email.utils.formatdate(now + 30, usegmt=True)
        assert parse_retry_after(header, now=now) == pytest.approx(30.0)
        past = email.utils.formatdate(now - 30, usegmt=True)
        assert parse_retry_after(past, now=now) == 0.0

    def test_garbage(self) -> None:
        """Missing or malformed values give None."""
        assert parse_retry_after(None) is None
        assert parse_retry_after("") is None
        assert parse_retry_after("soon") is None
        assert parse_retry_after("-5") is None
