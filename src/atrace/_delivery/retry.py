"""Delivery of one batch with retries: an explicit state machine, exponential backoff, jitter.

::

    IDLE ──► ATTEMPTING ──► SUCCEEDED
                │  ▲
      retryable │  │ delay over
                ▼  │
             BACKING_OFF ──► EXHAUSTED   (attempts or the batch's deadline used up)
    ATTEMPTING ──► REJECTED               (a permanent error: never retried)

Time is injected (``clock`` and ``sleep``), so tests drive it without waiting.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ConfigError, InternalError

__all__ = (
    "DEFAULT_POLICY",
    "Outcome",
    "Retry",
    "RetryPolicy",
    "RetryState",
    "Verdict",
    "classify_default",
    "parse_retry_after",
)


class RetryState(enum.Enum):
    """Where one batch's delivery stands."""

    IDLE = "idle"  # created, no attempt made yet
    ATTEMPTING = "attempting"  # a write is running
    BACKING_OFF = "backing_off"  # a write failed with a retryable error; waiting to try again
    SUCCEEDED = "succeeded"  # the sink took the batch (final)
    EXHAUSTED = "exhausted"  # retryable failures used up the attempts or the deadline (final)
    REJECTED = "rejected"  # a permanent error: retrying cannot help (final)


_MOVES: dict[RetryState, frozenset[RetryState]] = {
    RetryState.IDLE: frozenset({RetryState.ATTEMPTING}),
    RetryState.ATTEMPTING: frozenset(
        {RetryState.SUCCEEDED, RetryState.BACKING_OFF, RetryState.EXHAUSTED, RetryState.REJECTED}
    ),
    RetryState.BACKING_OFF: frozenset({RetryState.ATTEMPTING, RetryState.EXHAUSTED}),
    RetryState.SUCCEEDED: frozenset(),
    RetryState.EXHAUSTED: frozenset(),
    RetryState.REJECTED: frozenset(),
}


class Verdict:
    """A sink's judgement of an error: retry it (maybe after a server-given delay) or not."""

    __slots__ = ("reason", "retry_after", "retryable")

    def __init__(self, retryable: bool, retry_after: float | None = None, reason: str = "") -> None:
        self.retryable = retryable
        self.retry_after = retry_after
        self.reason = reason

    def __repr__(self) -> str:
        kind = "retryable" if self.retryable else "permanent"
        return f"Verdict({kind}, retry_after={self.retry_after!r}, reason={self.reason!r})"


def classify_default(exc: BaseException) -> Verdict:
    """For sinks without a classifier: network trouble and time-outs are retryable, the rest not."""
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError, OSError)):
        return Verdict(True, reason=type(exc).__name__)
    return Verdict(False, reason=type(exc).__name__)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value: delta-seconds or an HTTP-date."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class RetryPolicy:
    """How a batch is retried: attempts, capped exponential backoff, jitter, a deadline."""

    __slots__ = ("base_delay", "deadline", "jitter", "max_attempts", "max_delay", "multiplier")

    def __init__(
        self,
        *,
        max_attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        deadline: float = 30.0,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigError("max_attempts", max_attempts, "expected an integer >= 1")
        for field, value in (
            ("base_delay", base_delay),
            ("max_delay", max_delay),
            ("deadline", deadline),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(field, value, "expected a number >= 0")
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, (int, float))
            or multiplier < 1
        ):
            raise ConfigError("multiplier", multiplier, "expected a number >= 1")
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise ConfigError("jitter", jitter, "expected a number from 0 to 1")
        self.max_attempts = max_attempts
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.multiplier = float(multiplier)
        self.jitter = float(jitter)
        self.deadline = float(deadline)

    def delay(self, failures: int, rng: random.Random) -> float:
        """The pause after the ``failures``-th failure; ``jitter`` of it is randomised downwards."""
        raw = min(self.max_delay, self.base_delay * self.multiplier ** (failures - 1))
        # Jitter spreads the retries of many processes hit by the same outage.
        return raw * (1.0 - self.jitter * rng.random())

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"RetryPolicy({fields})"


DEFAULT_POLICY = RetryPolicy()


class Outcome:
    """How a delivery ended: final state, attempts made, the last error and its verdict."""

    __slots__ = ("attempts", "error", "state", "verdict")

    def __init__(
        self,
        state: RetryState,
        attempts: int,
        error: BaseException | None,
        verdict: Verdict | None,
    ) -> None:
        self.state = state
        self.attempts = attempts
        self.error = error
        self.verdict = verdict

    @property
    def delivered(self) -> bool:
        """Whether the sink took the batch."""
        return self.state is RetryState.SUCCEEDED

    def __repr__(self) -> str:
        return f"Outcome({self.state.name}, attempts={self.attempts}, error={self.error!r})"


class Retry:
    """The retry state machine for one batch; ``run`` drives it to a final state."""

    def __init__(
        self,
        policy: RetryPolicy = DEFAULT_POLICY,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.state = RetryState.IDLE
        self.attempts = 0
        self.history: list[RetryState] = [RetryState.IDLE]

    def _set_state(self, new: RetryState) -> None:
        if new not in _MOVES[self.state]:
            raise InternalError(f"retry cannot move from {self.state.name} to {new.name}")
        self.state = new
        self.history.append(new)

    async def run(
        self,
        attempt: Callable[[], Awaitable[Any]],
        classify: Callable[[BaseException], Verdict] = classify_default,
    ) -> Outcome:
        """Call ``attempt`` until it succeeds, fails permanently, or attempts/deadline run out."""
        started = self._clock()
        deadline = started + self.policy.deadline
        while True:
            self._set_state(RetryState.ATTEMPTING)
            self.attempts += 1
            try:
                await attempt()
            except Exception as exc:
                verdict = classify(exc)
                if not verdict.retryable:
                    self._set_state(RetryState.REJECTED)
                    return Outcome(self.state, self.attempts, exc, verdict)
                if self.attempts >= self.policy.max_attempts:
                    self._set_state(RetryState.EXHAUSTED)
                    return Outcome(self.state, self.attempts, exc, verdict)
                pause = (
                    verdict.retry_after
                    if verdict.retry_after is not None
                    else self.policy.delay(self.attempts, self._rng)
                )
                if self._clock() + pause > deadline:
                    self._set_state(RetryState.EXHAUSTED)
                    return Outcome(self.state, self.attempts, exc, verdict)
                self._set_state(RetryState.BACKING_OFF)
                await self._sleep(pause)
                continue
            self._set_state(RetryState.SUCCEEDED)
            return Outcome(self.state, self.attempts, None, None)
