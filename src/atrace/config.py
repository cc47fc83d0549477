"""Settings: every environment variable atrace reads (ENV), the immutable Config, validation.

A Config is built from arguments, then ``ATRACE_*`` and ``OTEL_*`` variables, then defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ._records import Frozen
from .errors import ConfigError, InternalError, redact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = (
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BREAKER_RESET",
    "DEFAULT_BREAKER_THRESHOLD",
    "DEFAULT_CAPACITY",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_MESSAGE_LENGTH",
    "DEFAULT_MAX_VALUE_LENGTH",
    "DEFAULT_POLICY",
    "DEFAULT_RETRY_ATTEMPTS",
    "DEFAULT_RETRY_DEADLINE",
    "DEFAULT_SCHEMA",
    "DEFAULT_SERVICE",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_SPILL_MAX_BYTES",
    "ENV",
    "POLICIES",
    "Config",
    "check_int",
    "check_number",
    "check_schema",
    "env",
    "from_environment",
    "parse_resource_attributes",
    "purepython",
    "signals",
)

DEFAULT_SERVICE = "unknown_service:python"  # what OpenTelemetry SDKs report when unnamed
DEFAULT_BATCH_SIZE = 5_000
DEFAULT_FLUSH_INTERVAL = 1.0
DEFAULT_CAPACITY = 100_000
DEFAULT_POLICY = "drop_oldest"
DEFAULT_SCHEMA = "atrace"
DEFAULT_MAX_MESSAGE_LENGTH = 32_768
DEFAULT_MAX_VALUE_LENGTH = 8_192
DEFAULT_MAX_ATTRIBUTES = 128  # OpenTelemetry's default attribute count limit
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
DEFAULT_SPILL_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_RETRY_ATTEMPTS = 4
DEFAULT_RETRY_DEADLINE = 10.0
DEFAULT_BREAKER_THRESHOLD = 3
DEFAULT_BREAKER_RESET = 5.0
POLICIES = ("drop_oldest", "drop_newest", "block")


# ---- environment variables ----------------------------------------------------------------

# Every environment variable atrace reads, each with what it sets. No other module reads the
# environment: they ask env() here, which refuses a name missing from this table.
ENV: Final[Mapping[str, str]] = MappingProxyType(
    {
        # Config (configure(), atrace.config.from_environment)
        "ATRACE_SERVICE": "The service name; wins over OTEL_SERVICE_NAME.",
        "ATRACE_ENVIRONMENT": "The deployment environment, e.g. prod or staging.",
        "ATRACE_SINK": "Comma-separated sinks: PostgreSQL DSNs, collector URLs, console, otlp.",
        "ATRACE_BATCH_SIZE": "Records per batch handed to the sinks (an integer).",
        "ATRACE_FLUSH_INTERVAL": "Seconds a partial batch waits before it is sent.",
        "ATRACE_CAPACITY": "Records the ring holds before its policy applies (an integer).",
        "ATRACE_POLICY": "What a full ring does: drop_oldest, drop_newest or block.",
        "ATRACE_SCHEMA": "The PostgreSQL schema written and read (also the CLI's --schema).",
        "ATRACE_MAX_MESSAGE_LENGTH": "Characters of a message kept; the rest is cut.",
        "ATRACE_MAX_ATTRIBUTES": "Attributes a record keeps; the rest are dropped, counted.",
        "OTEL_ATTRIBUTE_COUNT_LIMIT": "Attributes a record keeps, when ATRACE_MAX_ATTRIBUTES "
        "is unset.",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "Characters of an attribute value kept.",
        "ATRACE_SHUTDOWN_TIMEOUT": "Seconds the flush at exit may take.",
        "ATRACE_SPILL_DIR": "Where undelivered batches go (default: spill/ in the data directory).",
        "ATRACE_SPILL_MAX_BYTES": "Bytes the spill may take on disk; past it, batches are dropped.",
        # The process, the embedded database, the CLI and the clients
        "ATRACE_PUREPYTHON": "1, true, yes or on: run the pure-Python twins of compiled modules.",
        "ATRACE_SIGNALS": "0, false, no or off: never flush on SIGTERM (default: on).",
        "ATRACE_DATA_DIR": "atrace's data directory: the embedded PostgreSQL and the spill.",
        "ATRACE_DSN": "The PostgreSQL DSN of the atrace command when --dsn is not given.",
        "ATRACE_URL": "The collector URL of the atrace views when --url is not given.",
        "ATRACE_API_KEY": "The collector API key of the HTTP sink, the client and the views.",
        # atrace serve: the collector's bounds (its --flags win)
        "ATRACE_QUERY_POOL_SIZE": "PostgreSQL connections of the collector's read API.",
        "ATRACE_MAX_INFLIGHT_QUERIES": "Queries the collector answers at once (503 past it).",
        "ATRACE_MAX_QUERIES_PER_KEY": "Queries one API key may have in flight (429 past it).",
        "ATRACE_MAX_INGEST_PER_KEY": "Ingest requests one API key may have in flight (429).",
        "ATRACE_INGEST_RATE": "Ingest requests per second per API key (429 past it).",
        "ATRACE_INGEST_BURST": "Ingest requests one API key may send at once (the bucket).",
        "ATRACE_QUERY_RATE": "Queries per second per API key (429 past it).",
        "ATRACE_QUERY_BURST": "Queries one API key may send at once (the bucket).",
        "ATRACE_MAX_INFLIGHT_BYTES": "Bytes of request bodies (inflated) held at once (503).",
        "ATRACE_MAX_ERROR_SCAN": "Most error rows one /v1/errors request may scan.",
        "ATRACE_MAX_RESPONSE_BYTES": "About the most bytes of records one query answer carries.",
        "ATRACE_HEADER_TIMEOUT": "Seconds a connection has to send a complete request head.",
        "ATRACE_BODY_TIMEOUT": "Seconds a client has to send a request body (408 after).",
        "ATRACE_MAX_CONNECTIONS": "Open connections to the collector (kept below the fd limit).",
        "ATRACE_MAX_CONNECTIONS_PER_ADDRESS": "Open connections from one client address.",
        "ATRACE_MAX_TAIL_SUBSCRIBERS": "Live-tail streams open at once (503 past it).",
        "ATRACE_MAX_TAIL_PER_KEY": "Live-tail streams one API key may hold (429 past it).",
        "ATRACE_TAIL_QUEUE_BYTES": "Bytes queued for one live-tail reader before it is dropped.",
        "ATRACE_TAIL_TOTAL_BYTES": "Bytes of events held for all live-tail readers at once.",
        "ATRACE_MAX_VALUE_BYTES": "Bytes of one ingested attribute value as JSON (then a marker).",
        "ATRACE_MAX_DEPTH": "Nesting of an ingested attribute value (deeper is cut).",
        "ATRACE_LATE_WINDOW": "Seconds an ingested record's time may lie in the past.",
        "ATRACE_EARLY_WINDOW": "Seconds an ingested record's time may lie in the future.",
        "ATRACE_SCRUB": "1 or 0: scrub secrets from records (default 0).",
        "ATRACE_RETENTION_DAYS": "Days before today the collector keeps records (0: all).",
        "ATRACE_RETENTION_MAX_SIZE": "Size on disk past which the oldest days go (e.g. 50GB).",
        "ATRACE_RETENTION_ERRORS_DAYS": "Days the collector keeps traces that mattered (0: off).",
        "ATRACE_RETENTION_SLOW_MS": "A span this slow makes its trace matter (0: off).",
        "ATRACE_RETENTION_KEEP_RATE": "Share of the other traces retention keeps too (0 to 1).",
        # OpenTelemetry's own, honoured where they apply
        "OTEL_SERVICE_NAME": "The service name when ATRACE_SERVICE is unset.",
        "OTEL_RESOURCE_ATTRIBUTES": "key=value,... resource attributes (service.name included).",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "The OTLP sink's base URL; /v1/traces, /v1/logs appended.",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "The OTLP sink's URL for spans, used as given.",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "The OTLP sink's URL for logs, used as given.",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf (the default) or http/json.",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "OTEL_EXPORTER_OTLP_PROTOCOL for spans only.",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "OTEL_EXPORTER_OTLP_PROTOCOL for logs only.",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip or none (the default).",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "OTEL_EXPORTER_OTLP_COMPRESSION for spans only.",
        "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "OTEL_EXPORTER_OTLP_COMPRESSION for logs only.",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "Milliseconds an export request may take (default 10000).",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "OTEL_EXPORTER_OTLP_TIMEOUT for spans only.",
        "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": "OTEL_EXPORTER_OTLP_TIMEOUT for logs only.",
        "OTEL_EXPORTER_OTLP_HEADERS": "key=value,... headers sent with every export request.",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "OTEL_EXPORTER_OTLP_HEADERS for spans only.",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "OTEL_EXPORTER_OTLP_HEADERS for logs only.",
    }
)


# ---- validation -----------------------------------------------------------------------------


def check_int(field: str, value: object, lo: int, hi: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) from ``lo`` to ``hi`` (no bound if None).

    Raises :class:`~atrace.errors.ConfigError` naming ``field`` and ``value`` otherwise.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < lo
        or (hi is not None and value > hi)
    ):
        bounds = f">= {lo}" if hi is None else f"from {lo} to {hi}"
        raise ConfigError(field, value, f"expected an integer {bounds}")
    return value


def check_number(field: str, value: object, lo: float, hi: float | None = None) -> float:
    """``value`` as a float if it is a number (not a bool) from ``lo`` to ``hi`` (no bound if
    None). Raises :class:`~atrace.errors.ConfigError` naming ``field`` and ``value`` otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value >= lo  # written so that NaN fails too
        or (hi is not None and not value <= hi)
    ):
        bounds = f">= {lo}" if hi is None else f"from {lo} to {hi}"
        raise ConfigError(field, value, f"expected a number {bounds}")
    return float(value)


def check_schema(value: object, field: str = "schema") -> str:
    """``value`` if it is a schema name atrace accepts: a lowercase SQL identifier.

    Raises :class:`~atrace.errors.ConfigError` naming ``field`` and ``value`` otherwise.
    """
    if (
        not isinstance(value, str)
        or not value.isascii()
        or not value.isidentifier()
        or len(value) > 63
        or value != value.lower()
    ):
        raise ConfigError(
            field, value, "expected a lowercase SQL identifier ([a-z_][a-z0-9_]*, at most 63)"
        )
    return value


def _check_str(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, value, "expected a non-empty string")


# ---- Config ---------------------------------------------------------------------------------


class Config(Frozen):
    """Immutable pipeline settings; every field is validated here, errors name field and value.

    :ivar service: the service name on every record.
    :ivar environment: the deployment environment, or None.
    :ivar sinks: where batches go (URLs, ``"console"``, sink objects); stored as a tuple, and
        none at all means the embedded PostgreSQL.
    :ivar batch_size: records per batch (never more than ``capacity``).
    :ivar flush_interval: seconds a partial batch waits before it is sent.
    :ivar capacity: records the ring holds.
    :ivar policy: what a full ring does, one of :data:`POLICIES`.
    :ivar attributes: resource attributes on every record (a read-only mapping).
    :ivar schema: the PostgreSQL schema.
    :ivar max_message_length: characters of a message kept.
    :ivar max_value_length: characters of an attribute value kept.
    :ivar max_attributes: attributes a record keeps (the first ones); the others are dropped
        and counted on the record (``otlp.dropped_attributes``) and in ``metrics()``.
    :ivar shutdown_timeout: seconds the flush at exit may take.
    :ivar spill_dir: where undelivered batches are spilled, or None for the default.
    :ivar spill_max_bytes: bytes the spill may take on disk.
    :ivar retry_attempts: attempts per batch and sink.
    :ivar retry_deadline: seconds a batch may spend being retried.
    :ivar breaker_threshold: consecutive failed batches that open a sink's circuit breaker.
    :ivar breaker_reset: seconds an open breaker waits before it lets a probe through.
    :ivar scrub: secrets scrubbed before records leave the process: True (the built-in rules),
        False (the default for now), a sequence of more sensitive key words, or
        ``keep(key, value) -> bool``, which may keep a value a key rule would scrub.
    :ivar host: this machine's name (not an argument).
    :ivar pid: the process the Config was made in (not an argument; a forked child makes its
        own with :meth:`replace`).
    """

    __slots__ = (
        "attributes",
        "batch_size",
        "breaker_reset",
        "breaker_threshold",
        "capacity",
        "environment",
        "flush_interval",
        "host",
        "max_attributes",
        "max_message_length",
        "max_value_length",
        "pid",
        "policy",
        "retry_attempts",
        "retry_deadline",
        "schema",
        "scrub",
        "service",
        "shutdown_timeout",
        "sinks",
        "spill_dir",
        "spill_max_bytes",
    )
    _hidden = frozenset({"host", "pid"})
    # A mapping has no hash; left out of it, a Config stays usable as a key.
    _unhashed = frozenset({"attributes"})

    service: str
    environment: str | None
    sinks: tuple[Any, ...]
    batch_size: int
    flush_interval: float
    capacity: int
    policy: str
    attributes: Mapping[str, Any]
    schema: str
    max_message_length: int
    max_value_length: int
    max_attributes: int
    shutdown_timeout: float
    spill_dir: str | None
    spill_max_bytes: int
    retry_attempts: int
    retry_deadline: float
    breaker_threshold: int
    breaker_reset: float
    scrub: Any
    host: str
    pid: int

    def __init__(
        self,
        *,
        service: str = DEFAULT_SERVICE,
        environment: str | None = None,
        sinks: Sequence[Any] = (),
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        capacity: int = DEFAULT_CAPACITY,
        policy: str = DEFAULT_POLICY,
        attributes: Mapping[str, Any] | None = None,
        schema: str = DEFAULT_SCHEMA,
        max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        max_value_length: int = DEFAULT_MAX_VALUE_LENGTH,
        max_attributes: int = DEFAULT_MAX_ATTRIBUTES,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        spill_dir: str | None = None,
        spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES,
        retry_attempts: int = DEFAULT_RETRY_ATTEMPTS,
        retry_deadline: float = DEFAULT_RETRY_DEADLINE,
        breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
        breaker_reset: float = DEFAULT_BREAKER_RESET,
        scrub: Any = False,
    ) -> None:
        # Frozen: the normalised values (tuples, floats, a read-only mapping) go in this way.
        put = object.__setattr__
        put(self, "service", service)
        put(self, "environment", environment)
        put(self, "batch_size", batch_size)
        put(self, "capacity", capacity)
        put(self, "policy", policy)
        put(self, "schema", schema)
        put(self, "max_message_length", max_message_length)
        put(self, "max_value_length", max_value_length)
        put(self, "max_attributes", max_attributes)
        put(self, "spill_dir", spill_dir)
        put(self, "spill_max_bytes", spill_max_bytes)
        put(self, "retry_attempts", retry_attempts)
        put(self, "breaker_threshold", breaker_threshold)
        _check_str("service", self.service)
        if self.environment is not None:
            _check_str("environment", self.environment)
        if isinstance(sinks, (str, bytes)) or not isinstance(sinks, Sequence):
            raise ConfigError("sinks", sinks, "expected a sequence of sink URLs or sink objects")
        put(self, "sinks", tuple(sinks))
        check_int("batch_size", self.batch_size, 1, 1_000_000)
        put(
            self,
            "flush_interval",
            check_number("flush_interval", flush_interval, 0.001, 3600.0),
        )
        check_int("capacity", self.capacity, 1, 100_000_000)
        if self.policy not in POLICIES:
            raise ConfigError("policy", self.policy, f"expected one of {', '.join(POLICIES)}")
        if attributes is not None and not isinstance(attributes, Mapping):
            raise ConfigError("attributes", attributes, "expected a mapping")
        put(self, "attributes", MappingProxyType(dict(attributes or {})))
        check_schema(self.schema)
        check_int("max_message_length", self.max_message_length, 64, 100_000_000)
        check_int("max_value_length", self.max_value_length, 64, 100_000_000)
        check_int("max_attributes", self.max_attributes, 1, 1_000_000)
        put(
            self,
            "shutdown_timeout",
            check_number("shutdown_timeout", shutdown_timeout, 0.0, 3600.0),
        )
        if spill_dir is not None:
            if not isinstance(spill_dir, (str, os.PathLike)) or not str(spill_dir):
                raise ConfigError("spill_dir", spill_dir, "expected a directory path")
            put(self, "spill_dir", os.fspath(spill_dir))
        check_int("spill_max_bytes", self.spill_max_bytes, 0, 1 << 50)
        check_int("retry_attempts", self.retry_attempts, 1, 1000)
        put(
            self,
            "retry_deadline",
            check_number("retry_deadline", retry_deadline, 0.0, 86400.0),
        )
        check_int("breaker_threshold", self.breaker_threshold, 1, 1_000_000)
        put(self, "breaker_reset", check_number("breaker_reset", breaker_reset, 0.0, 86400.0))
        if isinstance(scrub, (str, bytes)) or not (
            isinstance(scrub, (bool, tuple, list, frozenset)) or callable(scrub)
        ):
            raise ConfigError(
                "scrub", scrub, "expected True, False, a list of key words or keep(key, value)"
            )
        if isinstance(scrub, (list, frozenset)):
            scrub = tuple(scrub)
        if isinstance(scrub, tuple) and not all(isinstance(w, str) and w for w in scrub):
            raise ConfigError("scrub", scrub, "key words must be non-empty strings")
        put(self, "scrub", scrub)
        put(self, "batch_size", min(self.batch_size, self.capacity))
        put(self, "host", _hostname())
        put(self, "pid", os.getpid())

    def __repr__(self) -> str:
        # A sink given as a DSN or URL may carry a password: never shown.
        return redact(super().__repr__())

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again; ``host`` and ``pid`` are this
        process's)."""
        config: Config = super().replace(**changes)
        return config


def _hostname() -> str:
    import socket

    return socket.gethostname()


# ---- environment ----------------------------------------------------------------------------


def env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of the variable ``name`` (one of :data:`ENV`), stripped; None when it is unset,
    empty or blank, since an empty value means unset everywhere.

    ``environ`` defaults to the process environment.
    """
    if name not in ENV:
        raise InternalError(f"{name} is read but not listed in atrace.config.ENV")
    value = (os.environ if environ is None else environ).get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _env_int(name: str, environ: Mapping[str, str] | None) -> int | None:
    raw = env(name, environ)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, raw, "expected an integer") from None


def _env_float(name: str, environ: Mapping[str, str] | None) -> float | None:
    raw = env(name, environ)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(name, raw, "expected a number") from None


def parse_resource_attributes(raw: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES``: comma-separated ``key=value`` pairs, values percent-decoded."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("OTEL_RESOURCE_ATTRIBUTES", raw, f"bad pair {item!r}")
        out[key.strip()] = unquote(value.strip())
    return out


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Config keyword arguments found in the environment (``ATRACE_*`` over ``OTEL_*``).

    ``environ`` defaults to the process environment.
    """
    kwargs: dict[str, Any] = {}
    resource = parse_resource_attributes(env("OTEL_RESOURCE_ATTRIBUTES", environ) or "")
    service = (
        env("ATRACE_SERVICE", environ)
        or env("OTEL_SERVICE_NAME", environ)
        or resource.pop("service.name", None)
    )
    resource.pop("service.name", None)
    if service:
        kwargs["service"] = service
    environment = (
        env("ATRACE_ENVIRONMENT", environ)
        or resource.pop("deployment.environment.name", None)
        or resource.pop("deployment.environment", None)
    )
    resource.pop("deployment.environment.name", None)
    resource.pop("deployment.environment", None)
    if environment:
        kwargs["environment"] = environment
    if resource:
        kwargs["attributes"] = resource
    sink = env("ATRACE_SINK", environ)
    if sink:
        kwargs["sinks"] = tuple(s.strip() for s in sink.split(",") if s.strip())
    for key, name in (
        ("policy", "ATRACE_POLICY"),
        ("schema", "ATRACE_SCHEMA"),
        ("spill_dir", "ATRACE_SPILL_DIR"),
    ):
        text = env(name, environ)
        if text is not None:
            kwargs[key] = text
    for key, name in (
        ("batch_size", "ATRACE_BATCH_SIZE"),
        ("capacity", "ATRACE_CAPACITY"),
        ("spill_max_bytes", "ATRACE_SPILL_MAX_BYTES"),
        ("max_message_length", "ATRACE_MAX_MESSAGE_LENGTH"),
        ("max_attributes", "ATRACE_MAX_ATTRIBUTES"),
    ):
        number = _env_int(name, environ)
        if number is not None:
            kwargs[key] = number
    # OpenTelemetry's own limits, where atrace's are unset.
    for key, name in (
        ("max_attributes", "OTEL_ATTRIBUTE_COUNT_LIMIT"),
        ("max_value_length", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"),
    ):
        number = _env_int(name, environ)
        if number is not None:
            kwargs.setdefault(key, number)
    scrub = env("ATRACE_SCRUB", environ)
    if scrub is not None:
        flag = scrub.strip().lower()
        if flag not in ("0", "1", "true", "false", "on", "off"):
            raise ConfigError("ATRACE_SCRUB", scrub, "expected 1 or 0 (on or off)")
        kwargs["scrub"] = flag in ("1", "true", "on")
    for key, name in (
        ("flush_interval", "ATRACE_FLUSH_INTERVAL"),
        ("shutdown_timeout", "ATRACE_SHUTDOWN_TIMEOUT"),
    ):
        seconds = _env_float(name, environ)
        if seconds is not None:
            kwargs[key] = seconds
    return kwargs


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def purepython(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``ATRACE_PUREPYTHON`` forces the pure-Python twins of the compiled modules.

    ``1``, ``true``, ``yes`` or ``on`` (any case) force them; ``0``, ``false``, ``no``, ``off``,
    empty or unset do not. Any other value is a :class:`~atrace.errors.ConfigError`, so that a
    typo never leaves the wrong implementation running unnoticed.
    """
    return _switch(
        "ATRACE_PUREPYTHON",
        environ,
        False,
        "expected 1, true, yes or on (the pure-Python twins) or 0, false, no, off or empty",
    )


def signals(environ: Mapping[str, str] | None = None) -> bool:
    """Whether atrace may flush on SIGTERM (:mod:`atrace._pipeline.signals`): ``ATRACE_SIGNALS``.

    Unset, empty, ``1``, ``true``, ``yes`` or ``on`` (any case): yes; ``0``, ``false``, ``no`` or
    ``off``: no. Any other value is a :class:`~atrace.errors.ConfigError`.
    """
    return _switch(
        "ATRACE_SIGNALS",
        environ,
        True,
        "expected 1, true, yes or on (the default) or 0, false, no or off",
    )


def _switch(name: str, environ: Mapping[str, str] | None, default: bool, expected: str) -> bool:
    # An on/off variable: unset or empty is ``default``; anything unknown a ConfigError.
    raw = env(name, environ)
    if raw is None:
        return default
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, raw, expected)
