"""atrace's exceptions, one tree.

::

    AtraceError
    ├── ConfigError (also ValueError)         misuse: a setting or argument atrace cannot accept
    ├── MissingExtraError (also ImportError)  an optional dependency is not installed
    ├── SinkError                             a sink could not take a batch (sink, batch size)
    │   ├── SinkClosedError                   the sink was used while closed (retried: reopened)
    │   └── SinkHTTPError                     an HTTP destination refused or did not answer
    │                                         (sinks.http.HttpSinkError, sinks.otlp.OtlpExportError
    │                                         are this class under the names users catch)
    ├── CollectorError                        (client) the collector answered an error, or none
    │   ├── BadRequestError (also ValueError)     400: a parameter the collector cannot accept
    │   ├── AuthenticationError                   401: no key, or an unknown or revoked one
    │   ├── PermissionDeniedError                 403
    │   ├── NotFoundError (also LookupError)      404: e.g. a trace the project does not have
    │   ├── ServerError                           5xx: the collector or its database failed
    │   └── TransportError (also OSError)         no answer at all (refused, reset, timed out)
    ├── WireError (also ValueError)           (collector) a request body it cannot decode:
    │                                         400 malformed, 413 too large, 415 unsupported
    ├── QueryError (also ValueError)          (collector) a read-API parameter it cannot accept: 400
    ├── AuthError                             (collector-internal) no usable API key: 401
    ├── RateLimited                           (collector-internal) too much from one key: 429
    ├── Unavailable                           (collector-internal) cannot take it now: 503
    ├── TailClosed                            (collector-internal) the live tail stopped
    └── InternalError                         a bug in atrace itself: please report it

Emit calls never raise these at the caller except ``ConfigError`` for misuse; sink and internal
errors stay inside the flusher and show up in :func:`atrace.metrics`. The collector-internal
classes never leave the collector: it answers each with the HTTP status drawn above, and a
client sees that answer as the matching :class:`CollectorError`.

Errors of atrace's dependencies (asyncpg, aiohttp, the OS) are not wrapped here; one table
(``atrace._delivery.classify``) says which of them are worth retrying.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re

__all__ = (
    "AtraceError",
    "AuthError",
    "AuthenticationError",
    "BadRequestError",
    "CollectorError",
    "ConfigError",
    "InternalError",
    "MissingExtraError",
    "NotFoundError",
    "PermissionDeniedError",
    "QueryError",
    "RateLimited",
    "ServerError",
    "SinkClosedError",
    "SinkError",
    "SinkHTTPError",
    "TailClosed",
    "TransportError",
    "Unavailable",
    "WireError",
    "redact",
)


# Lower-case words whose presence means a text may hold a secret; without any, redact() returns
# the text as it is, without a regular expression.
_HINTS = ("@", "password", "atk_", "bearer", "authorization", "api-key", "api_key")
_patterns: list[tuple[re.Pattern[str], str]] = []


def _compiled() -> list[tuple[re.Pattern[str], str]]:
    # Compiled on first use: the error paths need them, `import atrace` does not.
    if not _patterns:
        import re

        _patterns.extend(
            (re.compile(pattern), replacement)
            for pattern, replacement in (
                # scheme://user:password@host: everything up to the last '@' before the path, so
                # that a password holding '@' is masked whole.
                (r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*):[^/\s]*@", r"\1:***@"),
                # password=secret, password='se cret' (libpq keyword DSNs), password: secret.
                (
                    r"(?i)\b(password['\"]?\s*[=:]\s*)(?:'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^&\s'\",;]+)",
                    r"\1***",
                ),
                # An atrace API key, atk_<key_id>_<secret>: the key id is public, the rest never.
                (r"atk_([0-9a-f]{16})_[A-Za-z0-9_-]+", r"atk_\1_***"),
                (r"atk_(?![0-9a-f]{16}_\*)[A-Za-z0-9_-]+", r"atk_***"),
                # Credentials in headers: Authorization: Bearer x / Basic x, X-API-Key: x.
                (r"(?i)\b(bearer\s+)(?!\*\*\*)[^\s'\",;]+", r"\1***"),
                (
                    r"(?i)\b(authorization['\"]?\s*[:=]\s*['\"]?)(?!bearer\b)(?:([a-z]+)\s+)?"
                    r"(?!\*\*\*)[^\s'\",;]+",
                    r"\1\2 ***",
                ),
                (r"(?i)\b(x-api-key['\"]?\s*[:=]\s*['\"]?)(?!\*\*\*)[^\s'\",;]+", r"\1***"),
            )
        )
    return _patterns


def redact(text: str) -> str:
    """``text`` with every secret atrace knows the shape of replaced by ``***``: the password of a
    URL or DSN (``postgresql://app:***@db/app``, ``...?password=***``, ``password='***'``), an
    atrace API key past its public id (``atk_0123456789abcdef_***``), and the credentials of an
    ``Authorization`` or ``X-API-Key`` header: for messages, reprs and logs."""
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS):
        return text
    for pattern, replacement in _compiled():
        text = pattern.sub(replacement, text)
    return text


class AtraceError(Exception):
    """Root of every exception atrace raises."""


class ConfigError(AtraceError, ValueError):
    """A setting or argument has a value atrace cannot accept; the message names both."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        # The value as given, but never a password inside it (a DSN, a collector URL).
        super().__init__(redact(f"{field}={value!r}: {reason}"))


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
        super().__init__(redact(f"{sink}: {message} (batch of {batch_size})"))


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


class CollectorError(AtraceError):
    """The collector answered with an error; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0, url: str = "") -> None:
        self.status = status
        self.message = message
        self.url = url
        # The URL and the answer as given, but never a password or a key inside them.
        text = f"{status} {message} ({url})" if status else f"{message} ({url})"
        super().__init__(redact(text))


class BadRequestError(CollectorError, ValueError):
    """400: the collector refused a parameter; the message names it."""


class AuthenticationError(CollectorError):
    """401: the API key is missing, unknown or revoked."""


class PermissionDeniedError(CollectorError):
    """403: the key may not do this."""


class NotFoundError(CollectorError, LookupError):
    """404: no such trace (for this key's project) or no such endpoint."""


class ServerError(CollectorError):
    """5xx: the collector or its database failed; worth retrying later."""


class TransportError(CollectorError, OSError):
    """No answer: the connection was refused, reset or timed out."""


class WireError(AtraceError, ValueError):
    """A batch or OTLP body cannot be decoded; ``status`` is the HTTP status to answer with
    (400 malformed, 413 too large, 415 unsupported content type), the message says what and
    where; ``bound`` names the collector limit a 413 met (``"max_body"``, ...)."""

    def __init__(self, message: str, *, status: int = 400, bound: str | None = None) -> None:
        self.status = status
        self.bound = bound
        super().__init__(message)


class QueryError(AtraceError, ValueError):
    """A query parameter of the read API has a value the collector cannot accept (answered 400
    with ``field``); the message names the parameter and the value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class AuthError(AtraceError):
    """A request without a usable API key (missing, malformed, unknown or revoked): 401.

    The message never contains the key.
    """


class Unavailable(AtraceError):
    """The collector cannot take the request now: 503 with ``Retry-After``.

    ``reason`` is ``"overloaded"`` (the in-flight bound is reached) or ``"database"``
    (PostgreSQL is unreachable, failing, or has no free connection within ``pool_wait``);
    ``bound`` names the collector limit that was met (``"max_inflight_bytes"``, ...), if one was.
    """

    def __init__(self, message: str, *, reason: str, bound: str | None = None) -> None:
        self.reason = reason
        self.bound = bound
        super().__init__(message)


class RateLimited(AtraceError):
    """(collector-internal) A request refused for its API key's sake: 429 with ``Retry-After``.

    ``reason`` is ``"rate"`` (the key's token bucket is empty), ``"concurrency"`` (its requests
    in flight are at their cap) or ``"fair_share"`` (other keys wait, and this one holds its
    share of the ingest pool); ``bound`` names the collector limit that was met
    (``"ingest_rate"``, ``"max_queries_per_key"``, ...).
    """

    def __init__(
        self, message: str, retry_after: int, reason: str, *, bound: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason
        self.bound = bound


class TailClosed(AtraceError):
    """The live tail stopped: a subscription ends, and a new one is refused (503)."""


class InternalError(AtraceError):
    """A bug in atrace; the message says what invariant broke."""
