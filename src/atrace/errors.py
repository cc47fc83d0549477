"""atrace's exceptions, one tree.

::

    AtraceError
    ├── ConfigError (also ValueError)      misuse: a setting or argument atrace cannot accept
    ├── MissingExtraError (also ImportError)  an optional dependency is not installed
    ├── SinkError                          a sink could not take a batch (carries sink, batch size)
    │   ├── SinkClosedError                the sink was used after close()
    │   └── SinkHTTPError                  an HTTP destination refused or did not answer
    │       ├── HttpSinkError              (sinks.http) an atrace collector
    │       └── OtlpExportError            (sinks.otlp) an OTLP endpoint
    ├── WireError (also ValueError)        a request body atrace cannot decode (400/413/415)
    ├── CollectorError                     (client) a collector's query API answered an error
    │   ├── BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError,
    │   └── ServerError, TransportError
    └── InternalError                      a bug in atrace itself: please report it

Emit calls never raise these at the caller except ``ConfigError`` for misuse; sink and internal
errors stay inside the flusher and show up in :func:`atrace.metrics`.
"""

from __future__ import annotations

__all__ = (
    "AtraceError",
    "ConfigError",
    "InternalError",
    "MissingExtraError",
    "SinkClosedError",
    "SinkError",
    "SinkHTTPError",
    "WireError",
)


class AtraceError(Exception):
    """Root of every exception atrace raises."""


class ConfigError(AtraceError, ValueError):
    """A setting or argument has a value atrace cannot accept; the message names both."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class MissingExtraError(AtraceError, ImportError):
    """An optional dependency is missing; the message says what to install."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(f"{module} is not installed: pip install 'atrace[{extra}]'")


class SinkError(AtraceError):
    """A sink failed to take a batch."""

    def __init__(self, message: str, *, sink: str, batch_size: int) -> None:
        self.sink = sink
        self.batch_size = batch_size
        super().__init__(f"{sink}: {message} (batch of {batch_size})")


class SinkHTTPError(SinkError):
    """An HTTP destination did not take the batch: an error status, a lost connection or a
    time-out. ``status`` is the HTTP status (None when no answer came), ``retryable`` whether
    sending the same batch again may succeed, ``retry_after`` the server's ``Retry-After`` in
    seconds."""

    def __init__(
        self,
        message: str,
        *,
        sink: str,
        batch_size: int,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(message, sink=sink, batch_size=batch_size)


class SinkClosedError(SinkError):
    """A sink was written to after it was closed."""


class WireError(AtraceError, ValueError):
    """A batch or OTLP body cannot be decoded; ``status`` is the HTTP status to answer with
    (400 malformed, 413 too large, 415 unsupported content type), the message says what and
    where."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class InternalError(AtraceError):
    """A bug in atrace; the message says what invariant broke."""
