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
from dataclasses import dataclass
from typing import Any

from ..config import check_int, check_number
from ..errors import InternalError
from .classify import Verdict, classify

__all__ = (
    "DEFAULT_POLICY",
    "Outcome",
    "Retry",
    "RetryPolicy",
    "RetryState",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a batch is retried: attempts, capped exponential backoff, jitter, a deadline.

    :ivar max_attempts: attempts in all, the first included.
    :ivar base_delay: seconds of the pause after the first failure.
    :ivar max_delay: the longest pause, in seconds.
    :ivar multiplier: how much each pause grows over the one before.
    :ivar jitter: the share of each pause drawn at random (0: none, 1: all of it).
    :ivar deadline: seconds from the first attempt after which no pause is started.
    """

    max_attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    deadline: float = 30.0

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: the values are stored as floats this way
        check_int("max_attempts", self.max_attempts, 1)
        put(self, "base_delay", check_number("base_delay", self.base_delay, 0))
        put(self, "max_delay", check_number("max_delay", self.max_delay, 0))
        put(self, "deadline", check_number("deadline", self.deadline, 0))
        put(self, "multiplier", check_number("multiplier", self.multiplier, 1))
        put(self, "jitter", check_number("jitter", self.jitter, 0, 1))

    def delay(self, failures: int, rng: random.Random) -> float:
        """The pause after the ``failures``-th failure; ``jitter`` of it is randomised downwards."""
        raw = min(self.max_delay, self.base_delay * self.multiplier ** (failures - 1))
        # Jitter spreads the retries of many processes hit by the same outage.
        return raw * (1.0 - self.jitter * rng.random())


DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How a delivery ended.

    :ivar state: the final state: SUCCEEDED, EXHAUSTED or REJECTED.
    :ivar attempts: attempts made.
    :ivar error: the last attempt's error, or None if it succeeded.
    :ivar verdict: the classifier's verdict on that error, or None if it succeeded.
    """

    state: RetryState
    attempts: int
    error: BaseException | None = None
    verdict: Verdict | None = None

    @property
    def delivered(self) -> bool:
        """Whether the sink took the batch."""
        return self.state is RetryState.SUCCEEDED


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
        classify: Callable[[BaseException], Verdict] = classify,
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
                    return Outcome(
                        state=self.state, attempts=self.attempts, error=exc, verdict=verdict
                    )
                if self.attempts >= self.policy.max_attempts:
                    self._set_state(RetryState.EXHAUSTED)
                    return Outcome(
                        state=self.state, attempts=self.attempts, error=exc, verdict=verdict
                    )
                pause = (
                    verdict.retry_after
                    if verdict.retry_after is not None
                    else self.policy.delay(self.attempts, self._rng)
                )
                if self._clock() + pause > deadline:
                    self._set_state(RetryState.EXHAUSTED)
                    return Outcome(
                        state=self.state, attempts=self.attempts, error=exc, verdict=verdict
                    )
                self._set_state(RetryState.BACKING_OFF)
                await self._sleep(pause)
                continue
            self._set_state(RetryState.SUCCEEDED)
            return Outcome(state=self.state, attempts=self.attempts)
