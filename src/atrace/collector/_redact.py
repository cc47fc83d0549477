"""No secret in the collector's logs or in aiohttp's own answers.

Two places outside atrace's code see a request's raw bytes and would repeat them:

- aiohttp logs a request it cannot parse at ERROR with a traceback whose message quotes the
  offending header line (``Authorization: Bearer atk_...``). :class:`SecretFilter`, put on the
  ``aiohttp.*`` and ``atrace*`` loggers by :func:`install_filters`, masks what
  :func:`atrace.errors.redact` recognises (API keys, bearer tokens, ``X-API-Key`` values, URL and
  DSN passwords) in every record's message, arguments, traceback and stack.
- aiohttp answers such a request with a 400 whose plain-text body quotes the same line.
  :class:`CollectorRunner` is an ``AppRunner`` whose connections answer a request they cannot
  parse with the collector's JSON error shape, naming the fault (``malformed request header``)
  but never the bytes, and log one line without them.
"""

from __future__ import annotations

import logging

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from ..errors import redact

__all__ = ("LOGGERS", "CollectorRunner", "SecretFilter", "install_filters", "parse_error_text")

# Loggers given the filter even before they exist: aiohttp's (aiohttp/log.py) and atrace's. A
# logger's filters see only the records logged on it, not those its children pass up, so each
# one is named; install_filters() adds any other aiohttp.* or atrace.* logger that exists.
LOGGERS = (
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
    "atrace",
    "atrace.collector",
    "atrace.collector.tail",
    "atrace.schema",
    "atrace.sinks.otlp",
)

_log = logging.getLogger("atrace.collector")
_traceback = logging.Formatter()


class SecretFilter(logging.Filter):
    """Masks secrets (see :func:`atrace.errors.redact`) in a record's message, traceback and
    stack; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted: shown as logging shows it
            message = None
        if message is not None:
            masked = redact(message)
            if masked != message:
                record.msg = masked
                record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = record.exc_text or _traceback.formatException(record.exc_info)
            masked = redact(text)
            # Formatters show exc_text when set; the exception itself, whose message holds the
            # secret, goes no further.
            record.exc_text = masked
            if masked != text:
                record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_filters(names: tuple[str, ...] = LOGGERS) -> SecretFilter:
    """Put one :class:`SecretFilter` on each logger of ``names`` and on every existing
    ``aiohttp.*`` or ``atrace.*`` logger; idempotent. Returns the filter."""
    manager = logging.Logger.manager
    found = [
        name for name in list(manager.loggerDict) if name.split(".", 1)[0] in ("aiohttp", "atrace")
    ]
    installed: SecretFilter | None = None
    for name in dict.fromkeys((*names, *found)):
        logger = logging.getLogger(name)
        present = next((f for f in logger.filters if isinstance(f, SecretFilter)), None)
        if present is None:
            present = installed or SecretFilter()
            logger.addFilter(present)
        installed = installed or present
    return installed or SecretFilter()


# What a request aiohttp cannot parse is told, by the parser's exception class (most specific
# first). The parser's own message quotes the request's bytes; these never do.
_FAULTS: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.LineTooLong, "request line or header too long"),
    (http_exceptions.BadHttpMethod, "malformed request method"),
    (http_exceptions.BadStatusLine, "malformed request line"),
    (http_exceptions.InvalidHeader, "malformed request header"),
    (http_exceptions.ContentLengthError, "malformed request body"),
    (http_exceptions.TransferEncodingError, "malformed request body"),
)


def parse_error_text(exc: BaseException | None) -> str:
    """The answer to a request aiohttp could not parse: what is wrong, never the bytes."""
    for cls, text in _FAULTS:
        if isinstance(exc, cls):
            return text
    if isinstance(exc, http_exceptions.BadHttpMessage):
        message = str(getattr(exc, "message", "") or "").lower()
        return "malformed request header" if "header" in message else "malformed HTTP request"
    return "malformed HTTP request"


class _RequestHandler(RequestHandler):
    """aiohttp's connection handler, answering a parse error without echoing the request."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        text = parse_error_text(exc)
        # A scanner's garbage is routine: one line, no traceback (which would quote the bytes).
        level = logging.DEBUG if isinstance(exc, http_exceptions.BadHttpMethod) else logging.INFO
        _log.log(level, "atrace collector: %s from %s: %s", text, request.remote, status)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: cannot answer the parse error")
        response = web.json_response({"error": text}, status=status)
        response.force_close()
        return response


class _Server(Server):
    def __call__(self) -> RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class CollectorRunner(web.AppRunner):
    """``web.AppRunner`` (same arguments) whose connections answer a request aiohttp cannot
    parse with ``{"error": "malformed request header"}`` (or the like) instead of aiohttp's
    plain-text 400 quoting the offending line."""

    __slots__ = ()

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        safe = _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        return safe
