"""The collector's limits: body and record bounds, the in-flight bounds, per-key rates and
concurrency, pools, connections and time-outs."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..config import check_int, check_number
from ..errors import ConfigError, RateLimited, Unavailable

__all__ = (
    "DEFAULT_LIMITS",
    "Admission",
    "Held",
    "KeyGate",
    "Limits",
    "RateLimited",
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

    Fairness between tenants and against abuse:

    - ``max_inflight_bytes``: bytes of request bodies held at once, counted inflated as they are
      read; past it, 503 with ``Retry-After``. It must hold one whole request
      (``max_body`` and ``max_inflated``).
    - ``query_pool_size``: PostgreSQL connections of the read API, apart from the ingest pool
      (``pool_size``, which also checks API keys): no amount of querying takes an ingest's
      connection. ``max_inflight_queries``: queries being answered at once (503 past it).
    - ``max_ingest_per_key`` / ``max_queries_per_key``: ingest requests and queries one API key
      may have in flight at once (429 past it), so that one key cannot hold every slot.
    - ``ingest_rate`` / ``ingest_burst`` and ``query_rate`` / ``query_burst``: a token bucket per
      API key, requests per second and the burst it may spend at once (429 with
      ``Retry-After``).
    - ``max_error_scan``: the most error rows ``/v1/errors?scan=`` may read (400 past it).
    - ``max_response_bytes``: about the most bytes of records one answer carries: a search page
      stops early with a cursor to the rest, a trace is cut and says so (``truncated``).
    - ``header_timeout``: seconds a connection has to deliver a complete request head, from its
      opening or from the end of the previous answer (an idle keep-alive connection is closed
      then too).
    - ``max_connections``: open connections (further ones are closed at accept; the collector
      lowers it below the process's descriptor limit); ``max_connections_per_address``: open
      connections from one client address.
    - For the live tail: ``max_tail_subscribers``, ``max_tail_per_key`` and
      ``tail_queue_bytes`` (bytes a subscriber's queue may hold), ``tail_total_bytes`` (bytes
      of events held for all subscribers: past it, a reader holding more than its equal share
      is dropped).
    - For decoding: ``max_value_bytes`` (bytes of one value), ``max_depth`` (nesting of
      attributes), ``late_window`` / ``early_window`` (seconds a record's timestamp may lie
      before / after the collector's clock).
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
    max_inflight_bytes: int = 256 * MiB
    query_pool_size: int = 4
    max_inflight_queries: int = 16
    max_ingest_per_key: int = 16
    max_queries_per_key: int = 8
    ingest_rate: float = 200.0
    ingest_burst: int = 400
    query_rate: float = 50.0
    query_burst: int = 100
    max_error_scan: int = 10_000
    max_response_bytes: int = 16 * MiB
    header_timeout: float = 20.0
    max_connections: int = 4096
    max_connections_per_address: int = 256
    max_tail_subscribers: int = 1000
    max_tail_per_key: int = 20
    tail_queue_bytes: int = 4 * MiB
    tail_total_bytes: int = 256 * MiB
    max_value_bytes: int = 32 * 1024
    max_depth: int = 16
    late_window: float = 7 * 86_400.0
    early_window: float = 86_400.0
    retention_days: int = 0
    retention_max_size: int = 0
    retention_interval: float = 3600.0
    retention_errors_days: int = 0
    retention_slow_ms: float = 0.0
    retention_keep_rate: float = 0.0

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
        check_int("max_inflight_bytes", self.max_inflight_bytes, 1024, 1 << 40)
        check_int("query_pool_size", self.query_pool_size, 1, 1000)
        check_int("max_inflight_queries", self.max_inflight_queries, 1, 100_000)
        check_int("max_ingest_per_key", self.max_ingest_per_key, 1, 100_000)
        check_int("max_queries_per_key", self.max_queries_per_key, 1, 100_000)
        put(self, "ingest_rate", check_number("ingest_rate", self.ingest_rate, 0.001, 1e9))
        check_int("ingest_burst", self.ingest_burst, 1, 1 << 40)
        put(self, "query_rate", check_number("query_rate", self.query_rate, 0.001, 1e9))
        check_int("query_burst", self.query_burst, 1, 1 << 40)
        check_int("max_error_scan", self.max_error_scan, 1, 10_000_000)
        check_int("max_response_bytes", self.max_response_bytes, 1024, 1 << 34)
        put(
            self,
            "header_timeout",
            check_number("header_timeout", self.header_timeout, 0.1, 3600.0),
        )
        check_int("max_connections", self.max_connections, 1, 10_000_000)
        check_int("max_connections_per_address", self.max_connections_per_address, 1, 10_000_000)
        check_int("max_tail_subscribers", self.max_tail_subscribers, 0, 1_000_000)
        check_int("max_tail_per_key", self.max_tail_per_key, 0, 1_000_000)
        check_int("tail_queue_bytes", self.tail_queue_bytes, 1024, 1 << 34)
        check_int("tail_total_bytes", self.tail_total_bytes, 1024, 1 << 40)
        check_int("max_value_bytes", self.max_value_bytes, 64, 1 << 30)
        check_int("max_depth", self.max_depth, 1, 1000)
        put(self, "late_window", check_number("late_window", self.late_window, 1.0, 1e10))
        # Partitions are made ahead to cover it: a week at most keeps that bounded.
        put(self, "early_window", check_number("early_window", self.early_window, 1.0, 7 * 86_400))
        check_int("retention_days", self.retention_days, 0, 100_000)
        check_int("retention_max_size", self.retention_max_size, 0, 1 << 60)
        put(
            self,
            "retention_interval",
            check_number("retention_interval", self.retention_interval, 0.01, 7 * 86_400.0),
        )
        check_int("retention_errors_days", self.retention_errors_days, 0, 100_000)
        put(
            self,
            "retention_slow_ms",
            check_number("retention_slow_ms", self.retention_slow_ms, 0.0, 1e12),
        )
        put(
            self,
            "retention_keep_rate",
            check_number("retention_keep_rate", self.retention_keep_rate, 0.0, 1.0),
        )
        if self.retention_errors_days and self.retention_errors_days <= self.retention_days:
            raise ConfigError(
                "retention_errors_days",
                self.retention_errors_days,
                f"must exceed retention_days ({self.retention_days})",
            )
        if self.retention_days and self.retention_days * 86_400 < self.late_window:
            # Records the window accepts would be dropped by the next run.
            raise ConfigError(
                "retention_days",
                self.retention_days,
                f"must keep at least the late window ({self.late_window / 86_400:g} days)",
            )
        for name in ("max_body", "max_inflated"):
            if getattr(self, name) > self.max_inflight_bytes:
                raise ConfigError(
                    name,
                    getattr(self, name),
                    f"must not exceed max_inflight_bytes ({self.max_inflight_bytes})",
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
    """The bound on ingest work in flight: requests being handled, records not yet committed and
    bytes of bodies held (inflated).

    Nothing queues: a request past the bound is refused at once (the client retries after the
    ``Retry-After`` it is given), so memory held by the collector for bodies is bounded by
    ``max_inflight_bytes`` plus the decoded records.
    """

    __slots__ = ("_limits", "bytes", "records", "requests")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.requests = 0
        self.records = 0
        self.bytes = 0

    def enter(self) -> None:
        """Take a request slot, or raise :class:`Unavailable`."""
        if self.requests >= self._limits.max_inflight_requests:
            raise Unavailable(
                f"{self.requests} ingest requests in flight",
                reason="overloaded",
                bound="max_inflight_requests",
            )
        self.requests += 1

    def leave(self) -> None:
        """Give a request slot back."""
        self.requests -= 1

    def take(self, n: int) -> None:
        """Hold ``n`` decoded records until :meth:`give`, or raise :class:`Unavailable`.

        A request alone may always proceed: ``max_records`` never exceeds the bound.
        """
        if self.records and self.records + n > self._limits.max_inflight_records:
            raise Unavailable(
                f"{self.records} records in flight",
                reason="overloaded",
                bound="max_inflight_records",
            )
        self.records += n

    def give(self, n: int) -> None:
        """Release records taken with :meth:`take`."""
        self.records -= n

    def held(self) -> Held:
        """A new, empty reservation of body bytes for one request."""
        return Held(self)


class Held:
    """The body bytes one request holds: grown as they are read (inflated), released once.

    A request alone may always grow to its own limits (``max_body`` and ``max_inflated`` never
    exceed ``max_inflight_bytes``); with others holding bytes, growing past the bound raises
    :class:`Unavailable` (503 with ``Retry-After``).
    """

    __slots__ = ("_admission", "n")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.n = 0

    def grow(self, n: int) -> None:
        """Hold ``n`` bytes more, or raise :class:`Unavailable`."""
        a = self._admission
        limit = a._limits.max_inflight_bytes
        if a.bytes > self.n and a.bytes + n > limit:
            raise Unavailable(
                f"{a.bytes} bytes of request bodies in flight (limit {limit})",
                reason="memory",
                bound="max_inflight_bytes",
            )
        a.bytes += n
        self.n += n

    def release(self) -> None:
        """Give every byte held back (safe to repeat)."""
        self._admission.bytes -= self.n
        self.n = 0


class _Bucket:
    __slots__ = ("inflight", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.inflight = 0


class KeyGate:
    """Per API key: a token bucket (``rate`` per second, at most ``burst`` at once) and a cap on
    requests in flight (``concurrency``); plus ``total``, the cap on requests in flight of all
    keys (503 past it, since no key is at fault).

    The table of keys is bounded: the least recently seen idle key is forgotten first (it comes
    back with a full bucket). ``names`` are the limits' names for ``rate``, ``concurrency`` and
    ``total``, carried by the errors raised (``bound``) so that refusals are counted by cause.
    """

    __slots__ = (
        "_active",
        "_buckets",
        "_clock",
        "_max_keys",
        "_names",
        "_share",
        "_total",
        "burst",
        "concurrency",
        "inflight",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        burst: int,
        concurrency: int,
        total: int | None = None,
        *,
        share: int | None = None,
        names: tuple[str, str, str] = ("rate", "concurrency", "total"),
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.concurrency = concurrency
        self._total = total
        self._names = names
        # Fair sharing: with several keys in flight at once, each may hold at most an equal
        # part of ``share`` slots (at least one); a key alone may use up to ``concurrency``.
        self._share = share
        self._active = 0  # keys with a request in flight
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.inflight = 0

    def enter(self, key: str, what: str) -> None:
        """Take a token and a slot for ``key``, or raise :class:`RateLimited` (429) or
        :class:`Unavailable` (503, every slot taken); give the slot back with :meth:`leave`."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            self._forget()
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) / self.rate)
            raise RateLimited(
                f"{what} rate of this API key exceeds {self.rate:g} per second",
                max(1, wait),
                "rate",
                bound=self._names[0],
            )
        if bucket.inflight >= self.concurrency:
            raise RateLimited(
                f"{bucket.inflight} {what} requests of this API key in flight "
                f"(limit {self.concurrency})",
                1,
                "concurrency",
                bound=self._names[1],
            )
        if self._share is not None and bucket.inflight:
            others = self._active - 1  # this key is active already
            fair = max(1, -(-self._share // (others + 1)))
            if others and bucket.inflight >= fair:
                raise RateLimited(
                    f"{bucket.inflight} {what} requests of this API key in flight while"
                    f" {others} other keys wait (fair share {fair})",
                    1,
                    "fair_share",
                    bound="fair_share",
                )
        if self._total is not None and self.inflight >= self._total:
            raise Unavailable(
                f"{self.inflight} {what} requests in flight",
                reason="overloaded",
                bound=self._names[2],
            )
        bucket.tokens -= 1.0
        if not bucket.inflight:
            self._active += 1
        bucket.inflight += 1
        self.inflight += 1

    def leave(self, key: str) -> None:
        """Give back the slot :meth:`enter` took for ``key``."""
        self.inflight -= 1
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.inflight -= 1
            if not bucket.inflight:
                self._active -= 1

    def _forget(self) -> None:
        if len(self._buckets) <= self._max_keys:
            return
        for key, bucket in self._buckets.items():
            if bucket.inflight == 0:
                del self._buckets[key]
                return
