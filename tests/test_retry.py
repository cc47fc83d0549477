"""Retry state machine: backoff, jitter, deadline, attempts, permanent errors, Retry-After."""

from __future__ import annotations

import dataclasses
import email.utils
import random

import pytest

from atrace._delivery.classify import Verdict, classify
from atrace._delivery.retry import (
    Outcome,
    Retry,
    RetryPolicy,
    RetryState,
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
            Flaky(2), lambda exc: Verdict(retryable=True, retry_after=7.0)
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


class TestValues:
    def test_policy_messages_name_field_value_and_bound(self) -> None:
        """A refused policy value is named with its bound, in the words the checks always used."""
        for kwargs, message in (
            ({"max_attempts": 0}, "max_attempts=0: expected an integer >= 1"),
            ({"base_delay": -1}, "base_delay=-1: expected a number >= 0"),
            ({"multiplier": 0.5}, "multiplier=0.5: expected a number >= 1"),
            ({"jitter": 2}, "jitter=2: expected a number from 0 to 1"),
            ({"max_attempts": True}, "max_attempts=True: expected an integer >= 1"),
        ):
            with pytest.raises(ConfigError) as info:
                RetryPolicy(**kwargs)
            assert str(info.value) == message

    def test_policy_is_a_frozen_value(self) -> None:
        """A policy is immutable, keyword-only, equal by value, and holds its times as floats."""
        policy = RetryPolicy(max_attempts=3, base_delay=1, deadline=10)
        assert policy == RetryPolicy(max_attempts=3, base_delay=1.0, deadline=10.0)
        assert isinstance(policy.base_delay, float) and isinstance(policy.deadline, float)
        with pytest.raises(dataclasses.FrozenInstanceError):
            policy.max_attempts = 9  # type: ignore[misc]
        with pytest.raises(TypeError):
            RetryPolicy(3)  # type: ignore[misc]

    def test_verdict_and_outcome_are_keyword_only_frozen_values(self) -> None:
        """Verdict and Outcome are built by keyword, compare by value and cannot change."""
        verdict = Verdict(retryable=True, retry_after=2.0, reason="HTTP 503")
        assert verdict == Verdict(retryable=True, retry_after=2.0, reason="HTTP 503")
        assert (
            Verdict(retryable=False).reason == "" and Verdict(retryable=False).retry_after is None
        )
        with pytest.raises(TypeError):
            Verdict(True)  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            verdict.retryable = False  # type: ignore[misc]
        outcome = Outcome(state=RetryState.SUCCEEDED, attempts=1)
        assert outcome.delivered and outcome.error is None and outcome.verdict is None
        assert not Outcome(state=RetryState.REJECTED, attempts=1, verdict=verdict).delivered
        with pytest.raises(dataclasses.FrozenInstanceError):
            outcome.attempts = 2  # type: ignore[misc]

    async def test_run_reports_the_last_error_and_verdict(self) -> None:
        """An exhausted delivery's outcome carries the last error and the verdict on it."""
        t = FakeTime()
        error = ConnectionResetError("reset")
        out = await make(RetryPolicy(max_attempts=2, jitter=0, deadline=100), t).run(
            Flaky(5, error)
        )
        assert out.state is RetryState.EXHAUSTED and out.attempts == 2 and out.error is error
        assert out.verdict == Verdict(retryable=True, reason="ConnectionResetError")


class TestClassification:
    def test_default_classifier(self) -> None:
        """Connection errors and time-outs are retryable; other errors are permanent."""
        assert classify(ConnectionRefusedError()).retryable
        assert classify(TimeoutError()).retryable
        assert classify(OSError("net down")).retryable
        assert not classify(ValueError()).retryable
        assert not classify(KeyError()).retryable


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
