"""HTTP sink: batches POSTed to an atrace collector (``/v1/ingest``) in atrace's wire format."""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .._delivery.classify import Verdict, classify
from .._formats.resources import named_by
from .._formats.wire import CONTENT_TYPES, encode_batch
from .._records import Batch
from ..config import env
from ..errors import ConfigError, SinkClosedError, SinkHTTPError, redact
from ._base import off_loop
from ._http import GZIP_LEVEL, gzip_body, open_session, post

__all__ = (
    "API_KEY_ENV",
    "DEFAULT_GZIP_MIN_BYTES",
    "DEFAULT_TIMEOUT",
    "GZIP_LEVEL",
    "INGEST_PATH",
    "OFFLOAD_ROWS",
    "RETRYABLE_STATUSES",
    "HttpSink",
    "HttpSinkError",
)

INGEST_PATH = "/v1/ingest"
API_KEY_ENV = "ATRACE_API_KEY"
DEFAULT_TIMEOUT = 10.0
# A body that fits in TCP's initial congestion window (10 segments, about 14 KB) arrives in one
# round trip whether compressed or not, so compressing it only costs CPU in the application.
# Above that, gzip (about 5x on atrace batches) saves round trips and bandwidth; 12 KiB leaves
# room for the request's headers inside that window.
DEFAULT_GZIP_MIN_BYTES = 12 * 1024
# Batches of at least this many rows are encoded and compressed in a worker thread: about a
# millisecond of work that would otherwise hold up the application's event loop.
OFFLOAD_ROWS = 256
# Worth another try: the server is overloaded, restarting, or a proxy could not reach it.
# 408 too, unlike OTLP (whose specification forbids it): an atrace collector answers 408 when the
# body did not arrive within its body_timeout, a time-out like any other. Every other status is
# final: the same request would get the same answer (500 included, as in OTLP: a batch that
# crashes the collector must not be resent forever).
RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
_DEFAULT_PORTS = {"http": 80, "https": 443}


# What a POST that did not store the batch raises (an error status, a lost connection or a
# time-out): the one class :class:`~atrace.errors.SinkHTTPError` (its ``status``, ``retryable``
# and ``retry_after`` say how), under the name this module has always given it.
HttpSinkError = SinkHTTPError


def _endpoint(url: str) -> tuple[str, str]:
    """The ingest URL for a collector's base URL, and the sink's ``host:port``."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("url", url, "expected the collector's URL, like http://host:4319")
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError("url", url, "expected an http:// or https:// URL with a host")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ConfigError("url", url, "the port is not a number from 0 to 65535") from None
    path = parts.path.rstrip("/")
    if not path.endswith(INGEST_PATH):
        path += INGEST_PATH
    host = parts.hostname
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, parts.query, "")), where


class HttpSink:
    """Posts batches to an atrace collector over one keep-alive aiohttp session.

    ``url`` is the collector's base URL (``http://host:4319``); the sink posts to its
    ``/v1/ingest`` (a URL already ending in ``/v1/ingest`` is used as given). The batch id travels
    in the body, so a retried POST is stored once. ``api_key`` (default: ``ATRACE_API_KEY``) is
    sent as ``Authorization: Bearer KEY``; ``format`` is ``"msgpack"`` or ``"json"``; bodies of at
    least ``gzip_min_bytes`` are gzipped (None: never); ``timeout`` bounds each request, from
    connecting to the last byte of the answer; ``headers`` are added to every request.
    """

    # Two requests in flight: one encodes while the other waits for the collector.
    concurrency = 2

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        format: str = "msgpack",
        gzip_min_bytes: int | None = DEFAULT_GZIP_MIN_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url, where = _endpoint(url)
        if format not in CONTENT_TYPES:
            raise ConfigError("format", format, f"expected one of {sorted(CONTENT_TYPES)}")
        if gzip_min_bytes is not None and (
            isinstance(gzip_min_bytes, bool)
            or not isinstance(gzip_min_bytes, int)
            or gzip_min_bytes < 0
        ):
            raise ConfigError("gzip_min_bytes", gzip_min_bytes, "expected an integer >= 0 or None")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError("timeout", timeout, "expected a number of seconds > 0")
        if api_key is None:
            api_key = env(API_KEY_ENV)
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ConfigError("api_key", "***", "expected a non-empty string")
        self.name = f"http:{where}"
        self.format = format
        self.gzip_min_bytes = gzip_min_bytes
        self.timeout = float(timeout)
        base = {str(k): str(v) for k, v in (headers or {}).items()}
        if api_key is not None:
            base["Authorization"] = f"Bearer {api_key.strip()}"
        base["Content-Type"] = CONTENT_TYPES[format]
        self._headers = base
        # Names this destination's spill directory, the same in every process posting here.
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:12]
        self.spill_key = f"http-{where}-{digest}"
        self._session: Any = None

    def __repr__(self) -> str:
        return f"HttpSink({redact(self.url)!r}, format={self.format!r})"

    def classify(self, exc: BaseException) -> Verdict:
        """Retry 408/429/502/503/504 (after ``Retry-After``), lost connections and time-outs."""
        return classify(exc)

    async def open(self) -> None:
        """Start the keep-alive session; a sink closed before can be opened again."""
        if self._session is not None and not self._session.closed:
            return
        self._session = open_session(
            "http", headers=self._headers, connections=self.concurrency * 2
        )

    def _body(self, batch: Batch) -> tuple[bytes, bool]:
        body = encode_batch(batch, self.format, _resources_of(batch.rows))
        limit = self.gzip_min_bytes
        if limit is not None and len(body) >= limit:
            return gzip_body(body), True
        return body, False

    async def write(self, batch: Batch) -> None:
        """POST the batch; raise :class:`HttpSinkError` unless the collector answered 2xx."""
        if self._session is None or self._session.closed:
            raise SinkClosedError("not open", sink=self.name, batch_size=len(batch))
        if not batch.rows:
            return
        body, gzipped = await off_loop(self._body, batch, offload=len(batch) >= OFFLOAD_ROWS)
        # Looked up again: while this batch was encoded, a failed write running beside it may
        # have closed the session (the lane reopens it). That is worth a retry, not a RuntimeError.
        session = self._session
        if session is None or session.closed:
            raise SinkClosedError("closed while encoding", sink=self.name, batch_size=len(batch))
        await post(
            session,
            self.url,
            body,
            headers={"Content-Encoding": "gzip"} if gzipped else None,
            timeout=self.timeout,
            sink=self.name,
            batch_size=len(batch),
            retryable_statuses=RETRYABLE_STATUSES,
        )

    async def close(self) -> None:
        """Close the session and its connections; the sink can be opened again."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _resources_of(rows: list[Any]) -> dict[int, bytes] | None:
    # This process's resource documents that the rows name (sent along with them: the
    # collector stores each once).
    return named_by(rows) or None
