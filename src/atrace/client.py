"""Clients of a collector's read API: :class:`Client` (blocking, standard library only) and
:class:`AsyncClient` (aiohttp).

Both speak to ``/v1/search``, ``/v1/traces/{id}``, ``/v1/stats``, ``/v1/errors`` and
``/v1/tail`` with an API key, and raise one exception per kind of refusal (defined in
:mod:`atrace.errors`, importable from here too)::

    CollectorError (AtraceError)   any answer that is not a success; ``.status``, ``.message``
    ├── BadRequestError (also ValueError)   400: a parameter the collector cannot accept
    ├── AuthenticationError                 401: no key, or an unknown or revoked one
    ├── PermissionDeniedError               403
    ├── NotFoundError (also LookupError)    404: e.g. a trace the project does not have
    ├── ServerError                         5xx: the collector or its database failed
    └── TransportError (also OSError)       no answer at all (refused, reset, timed out)

Filters are keyword arguments: ``service``, ``level`` (name or number), ``kind``
(``log``/``span``), ``since``/``until`` (ISO 8601 text, relative like ``"15m"``, a datetime or
integer ns), ``q``, ``trace_id``, ``attrs`` and ``limit``. Times in answers are integer
nanoseconds since the epoch.

- ``q``: records holding every word of it, in any of the name, the message, the error type,
  the error message and the attribute values (strings, numbers and booleans, not the keys).
- ``attrs``: ``{"KEY": VALUE}``, each attribute equal to its value (``attr.KEY=VALUE`` in the
  API, the value as JSON). A number or boolean also matches its JSON text stored as a string,
  and that text matches the number or boolean: ``{"user": 42}`` and ``{"user": "42"}`` both
  find records with ``user=42`` and with ``user="42"`` (and ``42.0``); ``True`` and ``"true"``
  find ``true`` and ``"true"``, never ``1``. Other text matches exactly (``"042"`` only
  ``"042"``); a list or dict matches as containment.
- ``limit``: for ``search_page``, the records in one page (1 to 1000, default 100);
  ``search`` pages through every match, ``limit`` being only the page size; for ``spans`` the
  (service, name) rows; for ``errors`` the groups returned (``group_count`` says how many
  there were). A tail ignores it.

An answer is read up to ``max_response`` bytes (default :data:`DEFAULT_MAX_RESPONSE`, 64 MiB);
a longer one is not read further and raises :class:`CollectorError` saying it was too large.
An error answer is read up to 64 KiB.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any

from .config import env
from .errors import (
    AuthenticationError,
    BadRequestError,
    CollectorError,
    MissingExtraError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    TransportError,
)

# Importing atrace stays light: urllib.request (with ssl and http.client), asyncio and aiohttp
# are imported when a client first needs them.

__all__ = (
    "DEFAULT_MAX_RESPONSE",
    "AsyncClient",
    "AsyncTailStream",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "CollectorError",
    "NotFoundError",
    "PermissionDeniedError",
    "ServerError",
    "TailStream",
    "TransportError",
)

DEFAULT_TIMEOUT = 30.0
# A tail hears a heartbeat every ~15 s: silence this long means the connection is gone.
DEFAULT_TAIL_TIMEOUT = 60.0
_MAX_EVENT = 64 * 1024 * 1024
# The largest answer a client reads (a page of search results is far smaller): an endpoint that
# is not a collector, or a hostile one, cannot make a client hold more than this.
DEFAULT_MAX_RESPONSE = 64 * 1024 * 1024
# An error answer is a collector's {"error": ...}: its message is all a client keeps of it.
_MAX_ERROR_BODY = 64 * 1024
_CHUNK = 1024 * 1024


def _too_large(status: int, limit: int, url: str) -> CollectorError:
    return CollectorError(
        f"answer larger than max_response ({limit} bytes): not read", status=status, url=url
    )


def _reason(exc: BaseException) -> str:
    """Why a request got no answer, in a few words: the OS's reason for a refused connection
    (aiohttp's own text repeats the address and adds its SSL setting)."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError):
        return os_error.strerror or str(os_error) or type(os_error).__name__
    return str(exc) or type(exc).__name__


def _declared_too_large(headers: Any, limit: int) -> bool:
    try:
        return int(headers.get("Content-Length") or 0) > limit
    except ValueError:
        return False


_BY_STATUS: dict[int, type[CollectorError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
}


def _error_for(status: int, body: bytes, url: str) -> CollectorError:
    message = body.decode("utf-8", "replace").strip()[:1000]
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            message = data["error"]
    except ValueError:
        pass
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else CollectorError)
    return cls(message or f"HTTP {status}", status=status, url=url)


def _time(value: Any) -> str:
    if isinstance(value, dt.datetime):
        when: dt.datetime = value
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when.isoformat()
    return str(value)


def _params(filters: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Query parameters from keyword filters (``attrs`` becomes ``attr.KEY`` pairs)."""
    out: list[tuple[str, str]] = []
    for key, value in filters.items():
        if value is None:
            continue
        if key == "attrs":
            for name, v in dict(value).items():
                # Always JSON, so that a value arrives with its type (text stays text); the
                # collector then matches 42 and "42" alike (see the module's docstring).
                out.append((f"attr.{name}", _json_text(v)))
        elif key.startswith("attr."):
            out.append((key, _json_text(value)))
        elif isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        elif key in ("since", "until"):
            out.append((key, _time(value)))
        else:
            out.append((key, str(value)))
    return out


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _SSE:
    """Server-sent events from byte chunks: ``data`` payloads, and drop notices counted."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event = b""  # the event's type; none for a record
        self.dropped = 0
        self.started = False

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        self._buffer += chunk
        if len(self._buffer) > _MAX_EVENT:
            raise CollectorError("a server-sent event larger than 64 MiB")
        events: list[dict[str, Any]] = []
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    payload = json.loads(b"\n".join(self._data))
                    if self._event == b"error":
                        # The collector's last word on this stream: why it ends (a reader too
                        # slow, a key revoked, the server shutting down).
                        reason = payload.get("error") if isinstance(payload, dict) else payload
                        raise CollectorError(f"the live tail ended: {reason}")
                    events.append(payload)
                self._data = []
                self._event = b""
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
            elif line.startswith(b":"):
                self._comment(line[1:].strip())
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events

    def _comment(self, text: bytes) -> None:
        if text == b"tail started":
            self.started = True
        elif text.startswith(b"dropped "):
            parts = text.split()
            if len(parts) >= 4 and parts[3].isdigit():
                self.dropped = int(parts[3])


class _Base:
    def __init__(self, url: str, api_key: str | None, timeout: float, max_response: int) -> None:
        if not isinstance(max_response, int) or max_response < 1:
            from .errors import ConfigError

            raise ConfigError("max_response", max_response, "expected a positive integer")
        self.max_response = max_response
        # Credentials in the URL (``http://user:pass@host``, for a proxy in front of the
        # collector) go into an Authorization header of their own, never into request lines;
        # with an API key, the key is what the collector needs, and it takes the header.
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        user, password = parts.username, parts.password
        if user is not None or password is not None:
            netloc = parts.hostname or ""
            if ":" in netloc:
                netloc = f"[{netloc}]"
            if parts.port is not None:
                netloc += f":{parts.port}"
            parts = parts._replace(netloc=netloc)
        self.url = urllib.parse.urlunsplit(parts)
        key = api_key if api_key is not None else env("ATRACE_API_KEY")
        self.headers = {"Accept": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        elif user is not None:
            import base64

            pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self.timeout = timeout

    def _url(self, path: str, params: list[tuple[str, str]] | None = None) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"{self.url}{path}{query}"

    @staticmethod
    def _trace_path(trace_id: str) -> str:
        return f"/v1/traces/{urllib.parse.quote(str(trace_id), safe='')}"


class Client(_Base):
    """A blocking client of a collector: ``Client("http://127.0.0.1:4319", api_key)``.

    ``api_key`` defaults to ``ATRACE_API_KEY``; ``max_response`` bounds the bytes of one
    answer. Standard library only; safe to share between threads (each call opens its own
    connection).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_response: int = DEFAULT_MAX_RESPONSE,
    ) -> None:
        super().__init__(url, api_key, timeout, max_response)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Nothing held between calls; here for symmetry with :class:`AsyncClient`."""

    def _open(self, url: str, timeout: float | None, accept: str | None = None) -> Any:
        import urllib.error
        import urllib.request

        headers = dict(self.headers)
        if accept is not None:
            headers["Accept"] = accept
        request = urllib.request.Request(url, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                raise _error_for(exc.code, exc.read(_MAX_ERROR_BODY), url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransportError(str(reason), url=url) from exc

    def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        url = self._url(path, params)
        limit = self.max_response
        with self._open(url, self.timeout) as response:
            if _declared_too_large(response.headers, limit):
                raise _too_large(response.status, limit, url)
            body = bytearray()
            try:
                while len(body) <= limit:
                    chunk = response.read(min(_CHUNK, limit + 1 - len(body)))
                    if not chunk:
                        break
                    body += chunk
            except OSError as exc:
                raise TransportError(str(exc), url=url) from exc
            if len(body) > limit:
                raise _too_large(response.status, limit, url)
        return json.loads(body)

    def search_page(self, *, cursor: str | None = None, **filters: Any) -> dict[str, Any]:
        """One page, newest first, of at most ``limit`` records (default 100):
        ``{"records": [...], "next_cursor": str | None}``."""
        return self._get("/v1/search", _params({**filters, "cursor": cursor}))  # type: ignore[no-any-return]

    def search(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching record, newest first, fetching pages of ``limit`` records as the
        iteration goes (``limit`` is the page size, not a total: stop iterating, or use
        :meth:`search_page`, to read fewer)."""
        cursor: str | None = None
        while True:
            page = self.search_page(cursor=cursor, **filters)
            yield from page["records"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def trace(self, trace_id: str) -> dict[str, Any]:
        """One trace as a tree; :class:`NotFoundError` when the project has no such trace."""
        return self._get(self._trace_path(trace_id))  # type: ignore[no-any-return]

    def stats(self, **params: Any) -> dict[str, Any]:
        """Counts per ``interval`` (1m, 5m, 15m, 1h, 1d) by service and level; ``since``,
        ``until``, ``service``, ``durations=True`` for span p50/p95 per name."""
        return self._get("/v1/stats", _params(params))  # type: ignore[no-any-return]

    def spans(self, **params: Any) -> dict[str, Any]:
        """Ended spans per service and name: count, errors, last seen, p50/p95; ``since``,
        ``until``, ``service``, ``slow_ms``, ``errors=True``, ``limit`` (at most that many
        service and name rows, default 100)."""
        return self._get("/v1/spans", _params(params))  # type: ignore[no-any-return]

    def errors(self, **params: Any) -> dict[str, Any]:
        """Error groups by fingerprint, most occurrences first; ``since``, ``until``,
        ``service``, ``limit`` (at most that many groups, default 50), ``scan`` (how many of
        the newest error records are read, default 10 000).

        A group's ``count`` is occurrences: one exception counts once, however many spans and
        logs recorded it (``linked`` counts those further records). Each group has a
        ``label``: ``"ValueError: card declined"``, or for a span failed on its HTTP status
        without an exception ``"HTTP 502 GET /order/{order_id}"`` (with ``http``: status,
        method, route).
        """
        return self._get("/v1/errors", _params(params))  # type: ignore[no-any-return]

    def tail(self, *, timeout: float = DEFAULT_TAIL_TIMEOUT, **filters: Any) -> TailStream:
        """Records as they are committed, for as long as the iteration goes on."""
        return TailStream(self, self._url("/v1/tail", _params(filters)), timeout)


class TailStream:
    """A blocking live tail: iterate for records; ``dropped`` counts what the collector had to
    drop because this reader fell behind. ``open()`` returns once the collector subscribed."""

    def __init__(self, client: Client, url: str, timeout: float) -> None:
        self._client = client
        self._url = url
        self._timeout = timeout
        self._response: Any = None
        self._sse = _SSE()
        self._ready: list[dict[str, Any]] = []
        self._done = False

    @property
    def dropped(self) -> int:
        """Records the collector dropped for this reader so far."""
        return self._sse.dropped

    def open(self) -> TailStream:
        """Connect and wait until the collector has subscribed this stream."""
        if self._response is None:
            self._response = self._client._open(self._url, self._timeout, "text/event-stream")
            while not self._sse.started and self._read():
                pass
        return self

    def _read(self) -> bool:
        try:
            chunk = self._response.read1(65536)
        except OSError as exc:
            raise TransportError(str(exc), url=self._url) from exc
        if not chunk:
            return False
        self._ready.extend(self._sse.feed(chunk))
        return True

    def __iter__(self) -> TailStream:
        return self

    def __next__(self) -> dict[str, Any]:
        self.open()
        while not self._ready:
            if self._done or not self._read():
                self._done = True
                self.close()
                raise StopIteration
        return self._ready.pop(0)

    def close(self) -> None:
        """Disconnect."""
        response, self._response = self._response, None
        self._done = True
        if response is not None:
            response.close()

    def __enter__(self) -> TailStream:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """An asyncio client of a collector (needs aiohttp: ``pip install 'atrace[http]'``).

    Use it as ``async with AsyncClient(url, api_key) as client:`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_response: int = DEFAULT_MAX_RESPONSE,
    ) -> None:
        super().__init__(url, api_key, timeout, max_response)
        try:
            import aiohttp
        except ImportError:
            raise MissingExtraError("aiohttp", "http") from None
        import asyncio

        self._aiohttp = aiohttp
        # asyncio.TimeoutError is not the builtin TimeoutError before Python 3.11.
        self._failures = (aiohttp.ClientError, OSError, asyncio.TimeoutError)
        self._session: Any = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session (and with it any open tail)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _http(self) -> Any:
        if self._session is None:
            self._session = self._aiohttp.ClientSession(headers=self.headers)
        return self._session

    async def _open(self, url: str, timeout: Any, accept: str | None = None) -> Any:
        headers = {"Accept": accept} if accept else None
        try:
            response = await self._http().get(url, headers=headers, timeout=timeout)
        except self._failures as exc:
            raise TransportError(_reason(exc), url=url) from exc
        if response.status >= 400:
            try:
                body = await self._read(response, _MAX_ERROR_BODY, url, cut=True)
            finally:
                response.close()
            raise _error_for(response.status, body, url)
        return response

    async def _read(self, response: Any, limit: int, url: str, *, cut: bool = False) -> Any:
        """The body, up to ``limit`` bytes; past it, cut there (``cut``) or CollectorError."""
        if not cut and _declared_too_large(response.headers, limit):
            raise _too_large(response.status, limit, url)
        body = bytearray()
        try:
            while len(body) <= limit:
                chunk = await response.content.read(min(_CHUNK, limit + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
        except self._failures as exc:
            raise TransportError(_reason(exc), url=url) from exc
        if len(body) > limit:
            if not cut:
                raise _too_large(response.status, limit, url)
            del body[limit:]
        return body

    async def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        url = self._url(path, params)
        timeout = self._aiohttp.ClientTimeout(total=self.timeout)
        response = await self._open(url, timeout)
        try:
            body = await self._read(response, self.max_response, url)
        except BaseException:
            # Not drained: the connection is closed, not handed back to the pool.
            response.close()
            raise
        response.release()
        return json.loads(body)

    async def search_page(self, *, cursor: str | None = None, **filters: Any) -> dict[str, Any]:
        """One page of at most ``limit`` records (see :meth:`Client.search_page`)."""
        return await self._get("/v1/search", _params({**filters, "cursor": cursor}))  # type: ignore[no-any-return]

    async def search(self, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """Every matching record, newest first, fetching pages of ``limit`` records as the
        iteration goes (``limit`` is the page size, not a total)."""
        cursor: str | None = None
        while True:
            page = await self.search_page(cursor=cursor, **filters)
            for record in page["records"]:
                yield record
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def trace(self, trace_id: str) -> dict[str, Any]:
        """One trace as a tree; :class:`NotFoundError` when the project has no such trace."""
        return await self._get(self._trace_path(trace_id))  # type: ignore[no-any-return]

    async def stats(self, **params: Any) -> dict[str, Any]:
        """Counts per interval by service and level (see :meth:`Client.stats`)."""
        return await self._get("/v1/stats", _params(params))  # type: ignore[no-any-return]

    async def spans(self, **params: Any) -> dict[str, Any]:
        """Ended spans per service and name (see :meth:`Client.spans`)."""
        return await self._get("/v1/spans", _params(params))  # type: ignore[no-any-return]

    async def errors(self, **params: Any) -> dict[str, Any]:
        """Error groups, counted in occurrences (see :meth:`Client.errors`)."""
        return await self._get("/v1/errors", _params(params))  # type: ignore[no-any-return]

    def tail(self, *, timeout: float = DEFAULT_TAIL_TIMEOUT, **filters: Any) -> AsyncTailStream:
        """Records as they are committed: ``async for record in client.tail(service="api")``."""
        return AsyncTailStream(self, self._url("/v1/tail", _params(filters)), timeout)


class AsyncTailStream:
    """An asyncio live tail: ``async for`` records; ``dropped`` counts what the collector had
    to drop because this reader fell behind. ``await open()`` returns once subscribed."""

    def __init__(self, client: AsyncClient, url: str, timeout: float) -> None:
        self._client = client
        self._url = url
        self._timeout = timeout
        self._response: Any = None
        self._sse = _SSE()
        self._ready: list[dict[str, Any]] = []
        self._done = False

    @property
    def dropped(self) -> int:
        """Records the collector dropped for this reader so far."""
        return self._sse.dropped

    async def open(self) -> AsyncTailStream:
        """Connect and wait until the collector has subscribed this stream."""
        if self._response is None:
            aiohttp = self._client._aiohttp
            # No total limit (a tail runs for ever); silence past the timeout is a dead link.
            timeout = aiohttp.ClientTimeout(total=None, sock_read=self._timeout)
            self._response = await self._client._open(self._url, timeout, "text/event-stream")
            while not self._sse.started and await self._read():
                pass
        return self

    async def _read(self) -> bool:
        try:
            chunk = await self._response.content.readany()
        except self._client._failures as exc:
            raise TransportError(str(exc) or type(exc).__name__, url=self._url) from exc
        if not chunk:
            return False
        self._ready.extend(self._sse.feed(chunk))
        return True

    def __aiter__(self) -> AsyncTailStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        await self.open()
        while not self._ready:
            if self._done or not await self._read():
                await self.aclose()
                raise StopAsyncIteration
        return self._ready.pop(0)

    async def aclose(self) -> None:
        """Disconnect."""
        response, self._response = self._response, None
        self._done = True
        if response is not None:
            response.close()

    async def __aenter__(self) -> AsyncTailStream:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
