"""Settings: one immutable Config, built from arguments, ATRACE_* and OTEL_* variables, defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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
    "POLICIES",
    "Config",
    "from_environment",
    "parse_resource_attributes",
)

DEFAULT_SERVICE = "unknown_service:python"  # what OpenTelemetry SDKs report when unnamed
DEFAULT_BATCH_SIZE = 5_000
DEFAULT_FLUSH_INTERVAL = 1.0
DEFAULT_CAPACITY = 100_000
DEFAULT_POLICY = "drop_oldest"
DEFAULT_SCHEMA = "atrace"
DEFAULT_MAX_MESSAGE_LENGTH = 32_768
DEFAULT_MAX_VALUE_LENGTH = 8_192
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
DEFAULT_SPILL_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_RETRY_ATTEMPTS = 4
DEFAULT_RETRY_DEADLINE = 10.0
DEFAULT_BREAKER_THRESHOLD = 3
DEFAULT_BREAKER_RESET = 5.0
POLICIES = ("drop_oldest", "drop_newest", "block")


class Config:
    """Immutable pipeline settings; every field is validated here, errors name field and value."""

    __slots__ = (
        "attributes",
        "batch_size",
        "breaker_reset",
        "breaker_threshold",
        "capacity",
        "environment",
        "flush_interval",
        "host",
        "max_message_length",
        "max_value_length",
        "pid",
        "policy",
        "retry_attempts",
        "retry_deadline",
        "schema",
        "service",
        "shutdown_timeout",
        "sinks",
        "spill_dir",
        "spill_max_bytes",
    )

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
    shutdown_timeout: float
    spill_dir: str | None
    spill_max_bytes: int
    retry_attempts: int
    retry_deadline: float
    breaker_threshold: int
    breaker_reset: float
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
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        spill_dir: str | None = None,
        spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES,
        retry_attempts: int = DEFAULT_RETRY_ATTEMPTS,
        retry_deadline: float = DEFAULT_RETRY_DEADLINE,
        breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
        breaker_reset: float = DEFAULT_BREAKER_RESET,
    ) -> None:
        _check_str("service", service)
        if environment is not None:
            _check_str("environment", environment)
        if isinstance(sinks, (str, bytes)) or not isinstance(sinks, Sequence):
            raise ConfigError("sinks", sinks, "expected a sequence of sink URLs or sink objects")
        _check_int("batch_size", batch_size, 1, 1_000_000)
        _check_number("flush_interval", flush_interval, 0.001, 3600.0)
        _check_int("capacity", capacity, 1, 100_000_000)
        if policy not in POLICIES:
            raise ConfigError("policy", policy, f"expected one of {', '.join(POLICIES)}")
        if attributes is not None and not isinstance(attributes, Mapping):
            raise ConfigError("attributes", attributes, "expected a mapping")
        if not _is_identifier(schema):
            raise ConfigError(
                "schema",
                schema,
                "expected a lowercase SQL identifier ([a-z_][a-z0-9_]*, at most 63)",
            )
        _check_int("max_message_length", max_message_length, 64, 100_000_000)
        _check_int("max_value_length", max_value_length, 64, 100_000_000)
        _check_number("shutdown_timeout", shutdown_timeout, 0.0, 3600.0)
        if spill_dir is not None and (
            not isinstance(spill_dir, (str, os.PathLike)) or not str(spill_dir)
        ):
            raise ConfigError("spill_dir", spill_dir, "expected a directory path")
        _check_int("spill_max_bytes", spill_max_bytes, 0, 1 << 50)
        _check_int("retry_attempts", retry_attempts, 1, 1000)
        _check_number("retry_deadline", retry_deadline, 0.0, 86400.0)
        _check_int("breaker_threshold", breaker_threshold, 1, 1_000_000)
        _check_number("breaker_reset", breaker_reset, 0.0, 86400.0)
        if batch_size > capacity:
            batch_size = capacity
        s = object.__setattr__
        s(self, "service", service)
        s(self, "environment", environment)
        s(self, "sinks", tuple(sinks))
        s(self, "batch_size", batch_size)
        s(self, "flush_interval", float(flush_interval))
        s(self, "capacity", capacity)
        s(self, "policy", policy)
        s(self, "attributes", MappingProxyType(dict(attributes or {})))
        s(self, "schema", schema)
        s(self, "max_message_length", max_message_length)
        s(self, "max_value_length", max_value_length)
        s(self, "shutdown_timeout", float(shutdown_timeout))
        s(self, "spill_dir", None if spill_dir is None else os.fspath(spill_dir))
        s(self, "spill_max_bytes", spill_max_bytes)
        s(self, "retry_attempts", retry_attempts)
        s(self, "retry_deadline", float(retry_deadline))
        s(self, "breaker_threshold", breaker_threshold)
        s(self, "breaker_reset", float(breaker_reset))
        s(self, "host", _hostname())
        s(self, "pid", os.getpid())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Config is immutable; use atrace.configure({name}=...)")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in _PUBLIC)
        return f"Config({fields})"

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        kwargs = {k: getattr(self, k) for k in _PUBLIC}
        kwargs.update(changes)
        return Config(**kwargs)


_PUBLIC = (
    "service",
    "environment",
    "sinks",
    "batch_size",
    "flush_interval",
    "capacity",
    "policy",
    "attributes",
    "schema",
    "max_message_length",
    "max_value_length",
    "shutdown_timeout",
    "spill_dir",
    "spill_max_bytes",
    "retry_attempts",
    "retry_deadline",
    "breaker_threshold",
    "breaker_reset",
)


def _is_identifier(value: object) -> bool:
    return (
        isinstance(value, str)
        and value.isascii()
        and value.isidentifier()
        and len(value) <= 63
        and value == value.lower()
    )


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _check_str(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, value, "expected a non-empty string")


def _check_int(field: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(field, value, f"expected an integer from {lo} to {hi}")


def _check_number(field: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(field, value, f"expected a number from {lo} to {hi}")


# ---- environment -----------------------------------------------------------------------------


def _env(name: str, environ: Mapping[str, str]) -> str | None:
    value = environ.get(name)
    return value if value else None  # an empty value means unset


def _env_int(name: str, environ: Mapping[str, str]) -> int | None:
    raw = _env(name, environ)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, raw, "expected an integer") from None


def _env_float(name: str, environ: Mapping[str, str]) -> float | None:
    raw = _env(name, environ)
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
    """Config keyword arguments found in the environment (``ATRACE_*`` over ``OTEL_*``)."""
    env = os.environ if environ is None else environ
    kwargs: dict[str, Any] = {}
    resource = parse_resource_attributes(_env("OTEL_RESOURCE_ATTRIBUTES", env) or "")
    service = (
        _env("ATRACE_SERVICE", env)
        or _env("OTEL_SERVICE_NAME", env)
        or resource.pop("service.name", None)
    )
    resource.pop("service.name", None)
    if service:
        kwargs["service"] = service
    environment = (
        _env("ATRACE_ENVIRONMENT", env)
        or resource.pop("deployment.environment.name", None)
        or resource.pop("deployment.environment", None)
    )
    resource.pop("deployment.environment.name", None)
    resource.pop("deployment.environment", None)
    if environment:
        kwargs["environment"] = environment
    if resource:
        kwargs["attributes"] = resource
    sink = _env("ATRACE_SINK", env)
    if sink:
        kwargs["sinks"] = tuple(s.strip() for s in sink.split(",") if s.strip())
    for key, name in (("batch_size", "ATRACE_BATCH_SIZE"), ("capacity", "ATRACE_CAPACITY")):
        value = _env_int(name, env)
        if value is not None:
            kwargs[key] = value
    for key, name in (
        ("flush_interval", "ATRACE_FLUSH_INTERVAL"),
        ("shutdown_timeout", "ATRACE_SHUTDOWN_TIMEOUT"),
    ):
        fvalue = _env_float(name, env)
        if fvalue is not None:
            kwargs[key] = fvalue
    policy = _env("ATRACE_POLICY", env)
    if policy:
        kwargs["policy"] = policy
    schema = _env("ATRACE_SCHEMA", env)
    if schema:
        kwargs["schema"] = schema
    spill_dir = _env("ATRACE_SPILL_DIR", env)
    if spill_dir:
        kwargs["spill_dir"] = spill_dir
    spill_max = _env_int("ATRACE_SPILL_MAX_BYTES", env)
    if spill_max is not None:
        kwargs["spill_max_bytes"] = spill_max
    max_len = _env_int("ATRACE_MAX_MESSAGE_LENGTH", env)
    if max_len is not None:
        kwargs["max_message_length"] = max_len
    return kwargs
