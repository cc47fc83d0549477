"""The pure-Python twin of the compiled record ring: the same API and behaviour, only slower."""

from __future__ import annotations

import operator
import sys
import threading
from collections import deque
from typing import Final

from .errors import ConfigError

__all__ = ("POLICIES", "Ring")

POLICIES: Final[tuple[str, str, str]] = ("drop_oldest", "drop_newest", "block")


class Ring:
    """A bounded FIFO of records for many producer threads and one draining consumer.

    While the lock is held nothing allocates a GC-tracked object or releases a record, so neither
    the cycle collector nor a record's ``__del__`` can run in the middle; an evicted record is let
    go only after the lock is released, because its ``__del__`` may push into this very ring.
    """

    __slots__ = (
        "_accepted",
        "_acquire",
        "_buf",
        "_capacity",
        "_drained",
        "_dropped",
        "_evict",
        "_high_water",
        "_lock",
        "_policy",
        "_popleft",
        "_release",
    )

    def __init__(self, capacity: int, policy: str = "drop_oldest") -> None:
        if (
            isinstance(capacity, bool)
            or not isinstance(capacity, int)
            or not 1 <= capacity <= sys.maxsize
        ):
            raise ConfigError("capacity", capacity, f"must be an int from 1 to {sys.maxsize}")
        if policy not in POLICIES:
            raise ConfigError("policy", policy, f"must be one of {', '.join(POLICIES)}")
        self._capacity = int(capacity)
        self._policy = POLICIES[POLICIES.index(policy)]
        self._evict = self._policy == "drop_oldest"
        self._buf: deque[object] = deque()
        # Bound once here: creating a bound method allocates, which must not happen under the lock.
        self._popleft = self._buf.popleft
        # Re-entrant so that a signal handler that logs mid-push cannot deadlock its own thread.
        self._lock = threading.RLock()
        # Bound once, like popleft; calling them is also cheaper than a with-block's lookups.
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self._accepted = 0
        self._dropped = 0
        self._drained = 0
        self._high_water = 0

    @property
    def capacity(self) -> int:
        """The most records the ring holds at once."""
        return self._capacity

    @property
    def policy(self) -> str:
        """What push does when the ring is full: one of :data:`POLICIES`."""
        return self._policy

    @property
    def accepted(self) -> int:
        """Records offered by push, plus those stored by try_push."""
        return self._accepted

    @property
    def dropped(self) -> int:
        """Records lost to the policy: evicted (drop_oldest) or refused (drop_newest, block)."""
        return self._dropped

    @property
    def drained(self) -> int:
        """Records handed out by drain."""
        return self._drained

    @property
    def high_water(self) -> int:
        """The largest size the ring has reached."""
        return self._high_water

    def push(self, record: object, /) -> bool:
        """Store ``record``; when full, apply the policy. Returns whether it was stored."""
        buf = self._buf
        self._acquire()
        try:
            self._accepted += 1
            if len(buf) < self._capacity:
                buf.append(record)
                size = len(buf)
                if size > self._high_water:
                    self._high_water = size
                return True
            self._dropped += 1
            # A synchronous emit cannot wait, so "block" refuses like "drop_newest"; waiting
            # belongs to try_push's caller.
            if not self._evict:
                return False
            evicted = self._popleft()
            buf.append(record)
        finally:
            self._release()
        del evicted
        return True

    def try_push(self, record: object, /) -> bool:
        """Store ``record`` if there is room; when full, change nothing and return False."""
        buf = self._buf
        self._acquire()
        try:
            if len(buf) >= self._capacity:
                return False
            self._accepted += 1
            buf.append(record)
            size = len(buf)
            if size > self._high_water:
                self._high_water = size
            return True
        finally:
            self._release()

    def drain(self, n: int, /) -> list[object]:
        """Remove and return up to ``n`` records, oldest first."""
        n = operator.index(n)
        out: list[object] = []
        if n <= 0:
            return out
        append = out.append
        popleft = self._popleft
        self._acquire()
        try:
            for _ in range(min(n, len(self._buf))):
                append(popleft())
            self._drained += len(out)
        finally:
            self._release()
        return out

    def __len__(self) -> int:
        return len(self._buf)

    def counters(self) -> dict[str, int]:
        """Return a consistent snapshot of the counters, the size and the capacity."""
        with self._lock:
            accepted = self._accepted
            dropped = self._dropped
            drained = self._drained
            high_water = self._high_water
            size = len(self._buf)
        return {
            "accepted": accepted,
            "dropped": dropped,
            "drained": drained,
            "high_water": high_water,
            "size": size,
            "capacity": self._capacity,
        }

    def __repr__(self) -> str:
        return (
            f"<Ring capacity={self._capacity} policy={self._policy!r} size={len(self._buf)} "
            f"accepted={self._accepted} dropped={self._dropped} drained={self._drained}>"
        )
