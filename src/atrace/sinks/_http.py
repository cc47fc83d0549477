"""The HTTP half of the HTTP and OTLP sinks: the session, gzip, encoding off the event loop, and
one POST under one deadline whose failures become :class:`~atrace.errors.SinkHTTPError`.

The two sinks differ only where their peers do: the retryable statuses (an atrace collector's
408 is a time-out worth retrying; the OTLP specification forbids retrying it), redirects (the
collector never redirects; OTLP endpoints behind proxies may, and OpenTelemetry's exporters
follow them), and how an error answer's message is written (handled here for both).
"""

from __future__ import annotations

import asyncio
import gzip
import importlib
import sys
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson

from .._delivery.classify import classify
from .._delivery.retry import parse_retry_after
from .._version import __version__
from ..errors import MissingExtraError, SinkHTTPError

__all__ = (
    "GZIP_LEVEL",
    "MAX_ANSWER_BODY",
    "MAX_ERROR_BODY",
    "MAX_ERROR_TEXT",
    "USER_AGENT",
    "Answer",
    "error_text",
    "gzip_body",
    "import_aiohttp",
    "open_session",
    "post",
    "read_some",
)

T = TypeVar("T")

# Level 1 keeps about 95% of level 6's savings on atrace batches and OTLP bodies alike, at under
# half the CPU time.
GZIP_LEVEL = 1
# Bytes of an error answer read: a collector's {"error": ...} or an OTLP google.rpc.Status fits
# easily; a proxy's error page of any size is not read past this.
MAX_ERROR_BODY = 4096
# Bytes of a success answer read: an OTLP partial success, or nothing at all from a collector.
# A 2xx means the batch was taken; a longer body (a hostile or broken endpoint) is not read past
# this, and its connection is closed rather than drained.
MAX_ANSWER_BODY = 1024 * 1024
# Characters of an error answer's message shown in the exception (and so in log lines).
MAX_ERROR_TEXT = 500
USER_AGENT = f"atrace/{__version__}"


def import_aiohttp(extra: str) -> Any:
    """The aiohttp module, or :class:`MissingExtraError` naming the extra that installs it."""
    try:
        return importlib.import_module("aiohttp")
    except ImportError:
        raise MissingExtraError("aiohttp", extra) from None


def open_session(extra: str, *, headers: Mapping[str, str], connections: int) -> Any:
    """A keep-alive ``aiohttp.ClientSession`` sending ``headers`` with every request."""
    aiohttp = import_aiohttp(extra)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        headers={"User-Agent": USER_AGENT, **headers},
        # Each request has its own deadline (see post), the session none of its own.
        timeout=aiohttp.ClientTimeout(total=None),
        # The bodies are atrace's own: nothing to gain from aiohttp reading proxies from env.
        trust_env=False,
    )


def gzip_body(body: bytes) -> bytes:
    """``body`` gzipped at :data:`GZIP_LEVEL`, with no timestamp (the same batch, same bytes)."""
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)


async def read_some(resp: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes of a response body: an error page may be anything, of any size."""
    data = bytearray()
    while len(data) < limit:
        chunk = await resp.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def error_text(content_type: str, body: bytes) -> str:
    """The message of an error answer: a collector's ``{"error": ...}``, a ``google.rpc.Status``
    (protobuf or JSON), or else the start of the body as text; on one line, cut short."""
    text: str | None = None
    if "protobuf" in content_type:
        try:
            from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]

            text = Status.FromString(body).message or None
        except Exception:  # not a Status, or googleapis-common-protos is not installed
            text = None
    else:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if isinstance(document, dict):
            text = next(
                (v for v in (document.get("error"), document.get("message")) if isinstance(v, str)),
                None,
            )
    if text is None:
        text = body.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:MAX_ERROR_TEXT] + ("…" if len(text) > MAX_ERROR_TEXT else "")


class Answer:
    """A success answer: its status, ``Content-Type`` and body."""

    __slots__ = ("body", "content_type", "status")

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body


async def post(
    session: Any,
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str] | None,
    timeout: float,
    sink: str,
    batch_size: int,
    retryable_statuses: frozenset[int],
    follow_redirects: bool = False,
    max_answer: int = MAX_ANSWER_BODY,
) -> Answer:
    """POST ``body`` to ``url`` and return the 2xx answer; anything else raises
    :class:`SinkHTTPError`.

    ``timeout`` bounds the whole exchange: connecting, sending and reading the answer. An error
    status is retryable when in ``retryable_statuses`` (then with the server's ``Retry-After``);
    a lost connection or no answer in time is retryable; what else the table of
    ``classify`` says of a transport failure stands. At most ``max_answer`` bytes of a success
    answer are read (the rest is left unread, the connection closed).
    """
    aiohttp = sys.modules["aiohttp"]  # the session exists, so aiohttp is imported

    def failure(message: str, **kwargs: Any) -> SinkHTTPError:
        return SinkHTTPError(f"POST {url}: {message}", sink=sink, batch_size=batch_size, **kwargs)

    async def exchange() -> tuple[int, str, bytes, str | None, str]:
        async with session.post(
            url, data=body, headers=headers, allow_redirects=follow_redirects
        ) as resp:
            ok = 200 <= resp.status < 300
            # A success answer is small (an OTLP partial success at most): read whole up to
            # max_answer, and then a drained connection goes back to the pool.
            limit = max_answer if ok else MAX_ERROR_BODY
            payload = await read_some(resp, limit + 1)
            if len(payload) > limit:
                payload = payload[:limit]
                resp.close()
            return (
                resp.status,
                resp.headers.get("Content-Type", ""),
                payload,
                resp.headers.get("Retry-After"),
                resp.reason or "",
            )

    try:
        status, content_type, payload, retry_after, reason = await asyncio.wait_for(
            exchange(), timeout
        )
    except (asyncio.TimeoutError, TimeoutError):
        raise failure(f"no answer within {timeout:g} s", retryable=True) from None
    except (aiohttp.ClientError, OSError) as exc:
        verdict = classify(exc)
        # SinkError masks credentials of the URL (aiohttp's message may quote it).
        raise failure(f"{type(exc).__name__}: {exc}", retryable=verdict.retryable) from exc
    if 200 <= status < 300:
        return Answer(status, content_type, payload)
    text = error_text(content_type, payload) or reason
    retryable = status in retryable_statuses
    raise failure(
        f"HTTP {status}: {text}" if text else f"HTTP {status}",
        status=status,
        retryable=retryable,
        retry_after=parse_retry_after(retry_after) if retryable else None,
    )
