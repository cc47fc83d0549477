"""The collector's limits: body and record bounds, the in-flight bound, pool and time-outs."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import check_int, check_number
from ..errors import ConfigError, Unavailable

__all__ = (
    "DEFAULT_LIMITS",
    "Admission",
    "Limits",
)

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one collector process accepts, and how long it waits; immutable, validated.

    - ``max_body``: bytes of a request body as sent (compressed or not); more is refused (413)
      as soon as the Content-Length or the bytes read so far pass it.
    - ``max_inflated``: bytes a gzip body may inflate to; inflation stops there (413).
    - ``max_records``: records (or OTLP spans and log records) in one request (413).
    - ``max_attrs_bytes``: bytes of one record's attributes as JSON.
    - ``max_inflight_requests`` / ``max_inflight_records``: ingest requests being handled and
      records decoded but not yet committed; past either, 503 with ``Retry-After``.
    - ``pool_size``: PostgreSQL connections; ``pool_wait``: seconds an ingest waits for one
      before 503; ``retry_after``: the seconds a 503 tells the client to wait.
    - ``key_cache_ttl``: seconds a checked API key is trusted without asking PostgreSQL again,
      so a key revoked elsewhere stops working within this bound (at once in this process).
    - ``body_timeout``: seconds a client may take to send its body (408 after), so a slow
      sender cannot hold an in-flight slot for ever.
    - ``connect_timeout`` / ``command_timeout``: PostgreSQL connect and statement time-outs.
    """

    max_body: int = 16 * MiB
    max_inflated: int = 64 * MiB
    max_records: int = 50_000
    max_attrs_bytes: int = 64 * 1024
    max_inflight_requests: int = 64
    max_inflight_records: int = 400_000
    pool_size: int = 8
    pool_wait: float = 2.0
    retry_after: int = 1
    key_cache_ttl: float = 5.0
    body_timeout: float = 30.0
    connect_timeout: float = 5.0
    command_timeout: float = 30.0

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: the times are stored as floats this way
        check_int("max_body", self.max_body, 1024, 1 << 34)
        check_int("max_inflated", self.max_inflated, 1024, 1 << 34)
        check_int("max_records", self.max_records, 1, 10_000_000)
        check_int("max_attrs_bytes", self.max_attrs_bytes, 64, 1 << 30)
        check_int("max_inflight_requests", self.max_inflight_requests, 1, 100_000)
        check_int("max_inflight_records", self.max_inflight_records, 1, 1 << 40)
        check_int("pool_size", self.pool_size, 1, 1000)
        put(self, "pool_wait", check_number("pool_wait", self.pool_wait, 0.01, 3600.0))
        check_int("retry_after", self.retry_after, 1, 3600)
        put(self, "key_cache_ttl", check_number("key_cache_ttl", self.key_cache_ttl, 0.0, 3600.0))
        put(self, "body_timeout", check_number("body_timeout", self.body_timeout, 0.1, 3600.0))
        put(
            self,
            "connect_timeout",
            check_number("connect_timeout", self.connect_timeout, 0.1, 3600.0),
        )
        put(
            self,
            "command_timeout",
            check_number("command_timeout", self.command_timeout, 0.1, 86400.0),
        )
        if self.max_records > self.max_inflight_records:
            raise ConfigError(
                "max_records",
                self.max_records,
                f"must not exceed max_inflight_records ({self.max_inflight_records})",
            )

    def replace(self, **changes: Any) -> Limits:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


DEFAULT_LIMITS = Limits()


class Admission:
    """The bound on ingest work in flight: requests being handled and records not yet committed.

    Nothing queues: a request past the bound is refused at once (the client retries after the
    ``Retry-After`` it is given), so memory held by the collector is bounded by
    ``max_inflight_requests * max_body`` plus the decoded records.
    """

    __slots__ = ("_limits", "records", "requests")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.requests = 0
        self.records = 0

    def enter(self) -> None:
        """Take a request slot, or raise :class:`Unavailable`."""
        if self.requests >= self._limits.max_inflight_requests:
            raise Unavailable(f"{self.requests} ingest requests in flight", reason="overloaded")
        self.requests += 1

    def leave(self) -> None:
        """Give a request slot back."""
        self.requests -= 1

    def take(self, n: int) -> None:
        """Hold ``n`` decoded records until :meth:`give`, or raise :class:`Unavailable`.

        A request alone may always proceed: ``max_records`` never exceeds the bound.
        """
        if self.records and self.records + n > self._limits.max_inflight_records:
            raise Unavailable(f"{self.records} records in flight", reason="overloaded")
        self.records += n

    def give(self, n: int) -> None:
        """Release records taken with :meth:`take`."""
        self.records -= n
