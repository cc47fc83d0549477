"""The collector's limits: body and record bounds, the in-flight bound, pool and time-outs."""

from __future__ import annotations

from ..errors import ConfigError

__all__ = (
    "DEFAULT_LIMITS",
    "Admission",
    "Limits",
    "Unavailable",
)

MiB = 1024 * 1024


def _check_int(field: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(field, value, f"expected an integer from {low} to {high}")
    return value


def _check_number(field: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(field, value, f"expected a number from {low} to {high}")
    return float(value)


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

    __slots__ = (
        "body_timeout",
        "command_timeout",
        "connect_timeout",
        "key_cache_ttl",
        "max_attrs_bytes",
        "max_body",
        "max_inflated",
        "max_inflight_records",
        "max_inflight_requests",
        "max_records",
        "pool_size",
        "pool_wait",
        "retry_after",
    )

    max_body: int
    max_inflated: int
    max_records: int
    max_attrs_bytes: int
    max_inflight_requests: int
    max_inflight_records: int
    pool_size: int
    pool_wait: float
    retry_after: int
    key_cache_ttl: float
    body_timeout: float
    connect_timeout: float
    command_timeout: float

    def __init__(
        self,
        *,
        max_body: int = 16 * MiB,
        max_inflated: int = 64 * MiB,
        max_records: int = 50_000,
        max_attrs_bytes: int = 64 * 1024,
        max_inflight_requests: int = 64,
        max_inflight_records: int = 400_000,
        pool_size: int = 8,
        pool_wait: float = 2.0,
        retry_after: int = 1,
        key_cache_ttl: float = 5.0,
        body_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> None:
        s = object.__setattr__
        s(self, "max_body", _check_int("max_body", max_body, 1024, 1 << 34))
        s(self, "max_inflated", _check_int("max_inflated", max_inflated, 1024, 1 << 34))
        s(self, "max_records", _check_int("max_records", max_records, 1, 10_000_000))
        s(self, "max_attrs_bytes", _check_int("max_attrs_bytes", max_attrs_bytes, 64, 1 << 30))
        s(
            self,
            "max_inflight_requests",
            _check_int("max_inflight_requests", max_inflight_requests, 1, 100_000),
        )
        s(
            self,
            "max_inflight_records",
            _check_int("max_inflight_records", max_inflight_records, 1, 1 << 40),
        )
        s(self, "pool_size", _check_int("pool_size", pool_size, 1, 1000))
        s(self, "pool_wait", _check_number("pool_wait", pool_wait, 0.01, 3600.0))
        s(self, "retry_after", _check_int("retry_after", retry_after, 1, 3600))
        s(self, "key_cache_ttl", _check_number("key_cache_ttl", key_cache_ttl, 0.0, 3600.0))
        s(self, "body_timeout", _check_number("body_timeout", body_timeout, 0.1, 3600.0))
        s(self, "connect_timeout", _check_number("connect_timeout", connect_timeout, 0.1, 3600.0))
        s(self, "command_timeout", _check_number("command_timeout", command_timeout, 0.1, 86400.0))
        if max_records > max_inflight_records:
            raise ConfigError(
                "max_records",
                max_records,
                f"must not exceed max_inflight_records ({max_inflight_records})",
            )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Limits is immutable; use replace()")

    def replace(self, **changes: object) -> Limits:
        """A copy with some fields changed (validated again)."""
        kwargs: dict[str, object] = {k: getattr(self, k) for k in self.__slots__}
        kwargs.update(changes)
        return Limits(**kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Limits({fields})"


DEFAULT_LIMITS = Limits()


class Unavailable(Exception):
    """The collector cannot take the request now: answer 503 with ``Retry-After``.

    ``reason`` is ``"overloaded"`` (the in-flight bound is reached) or ``"database"``
    (PostgreSQL is unreachable, failing, or has no free connection within ``pool_wait``).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


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
