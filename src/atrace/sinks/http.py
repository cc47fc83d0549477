"""HTTP sink: batches POSTed to an atrace collector (``/v1/ingest``) in atrace's wire format."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

import orjson

from .._delivery.retry import Verdict, parse_retry_after
from .._formats.wire import CONTENT_TYPES, encode_batch
from ..errors import ConfigError, MissingExtraError, SinkClosedError, SinkHTTPError
from . import Batch

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
# Level 1 keeps about 95% of level 6's savings on atrace batches at under half the CPU time.
GZIP_LEVEL = 1
# Batches of at least this many rows are encoded and compressed in a worker thread: about a
# millisecond of work that would otherwise hold up the application's event loop.
OFFLOAD_ROWS = 256
# Worth another try: the server is overloaded, restarting, or a proxy could not reach it.
# 408 is the server giving up waiting for the request, a time-out like any other. Every other
# status is final: the same request would get the same answer (500 included, as in OTLP: a
# batch that crashes the collector must not be resent forever).
RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
# An error body longer than this is not a collector's {"error": ...}; only its start is kept.
_MAX_ERROR_BODY = 4096
_DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpSinkError(SinkHTTPError):
    """A POST that did not store the batch: an error status, a lost connection or a time-out.

    ``status`` is the HTTP status (None when no answer came), ``retryable`` whether sending the
    same batch again may succeed, ``retry_after`` the server's ``Retry-After`` in seconds.
    """


def _import_aiohttp() -> Any:
    try:
        return importlib.import_module("aiohttp")
    except ImportError:
        raise MissingExtraError("aiohttp", "http") from None


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


async def _read_some(resp: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes of a response body: an error page may be anything, of any size."""
    data = b""
    while len(data) < limit:
        chunk = await resp.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _error_text(body: bytes) -> str:
    """The collector's ``{"error": "..."}`` message, or the start of whatever the body is."""
    body = body[:_MAX_ERROR_BODY]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])[:1024]
    return body.decode("utf-8", "replace").strip()[:1024]


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
            api_key = os.environ.get(API_KEY_ENV) or None  # an empty value means unset
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
        self._aiohttp: Any = None

    def __repr__(self) -> str:
        return f"HttpSink({self.url!r}, format={self.format!r})"

    def classify(self, exc: BaseException) -> Verdict:
        """Retry 408/429/502/503/504 (after ``Retry-After``), lost connections and time-outs."""
        if isinstance(exc, HttpSinkError):
            reason = f"HTTP {exc.status}" if exc.status is not None else "no answer"
            return Verdict(exc.retryable, exc.retry_after, reason)
        if isinstance(exc, SinkClosedError):
            return Verdict(True, reason="closed")  # the lane opens the sink again
        if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError)):
            return Verdict(True, reason=type(exc).__name__)
        aiohttp = self._aiohttp
        if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
            # Connection and payload trouble; not a bad URL or a redirect loop.
            retry = isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))
            return Verdict(retry, reason=type(exc).__name__)
        # An encoding failure (a row with a value the format cannot hold) fails every time.
        return Verdict(False, reason=type(exc).__name__)

    async def open(self) -> None:
        """Start the keep-alive session; a sink closed before can be opened again."""
        if self._session is not None and not self._session.closed:
            return
        aiohttp = self._aiohttp = _import_aiohttp()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency * 2),
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            # The body is atrace's own: nothing to gain from aiohttp reading proxies from env.
            trust_env=False,
        )

    def _body(self, batch: Batch) -> tuple[bytes, bool]:
        body = encode_batch(batch, self.format)
        limit = self.gzip_min_bytes
        if limit is not None and len(body) >= limit:
            return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0), True
        return body, False

    async def _prepare(self, batch: Batch) -> tuple[bytes, bool]:
        if len(batch) < OFFLOAD_ROWS:
            return self._body(batch)
        try:
            return await asyncio.to_thread(self._body, batch)
        except RuntimeError:
            # At interpreter exit the default executor takes no new work: encode here instead.
            return self._body(batch)

    async def write(self, batch: Batch) -> None:
        """POST the batch; raise :class:`HttpSinkError` unless the collector answered 2xx."""
        if self._session is None or self._session.closed:
            raise SinkClosedError("not open", sink=self.name, batch_size=len(batch))
        if not batch.rows:
            return
        body, gzipped = await self._prepare(batch)
        # Looked up again: while this batch was encoded, a failed write running beside it may
        # have closed the session (the lane reopens it). That is worth a retry, not a RuntimeError.
        session = self._session
        if session is None or session.closed:
            raise SinkClosedError("closed while encoding", sink=self.name, batch_size=len(batch))
        headers = {"Content-Encoding": "gzip"} if gzipped else None
        aiohttp = self._aiohttp
        try:
            async with session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    await resp.read()  # drained, so the connection goes back to the pool
                    return
                text = _error_text(await _read_some(resp, _MAX_ERROR_BODY))
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (asyncio.TimeoutError, TimeoutError):
            raise HttpSinkError(
                f"no answer from {self.url} within {self.timeout:g}s",
                sink=self.name,
                batch_size=len(batch),
                retryable=True,
            ) from None
        except aiohttp.ClientError as exc:
            raise HttpSinkError(
                f"POST {self.url} failed: {type(exc).__name__}: {exc}",
                sink=self.name,
                batch_size=len(batch),
                retryable=self.classify(exc).retryable,
            ) from exc
        retryable = status in RETRYABLE_STATUSES
        raise HttpSinkError(
            f"HTTP {status} from {self.url}: {text or resp.reason or 'no details'}",
            sink=self.name,
            batch_size=len(batch),
            status=status,
            retryable=retryable,
            retry_after=retry_after if retryable else None,
        )

    async def close(self) -> None:
        """Close the session and its connections; the sink can be opened again."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
