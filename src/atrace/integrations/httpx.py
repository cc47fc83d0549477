"""httpx: client spans with the trace headers injected, by event hooks or by a wrapping transport.

``httpx.Client(event_hooks=event_hooks())`` and ``httpx.AsyncClient(event_hooks=
async_event_hooks())`` start a span when a request is sent and end it when its response arrives.
Hooks never hear of a request that fails without a response: use the transports
(``httpx.Client(transport=Transport())``, ``httpx.AsyncClient(transport=AsyncTransport())``)
to have connection errors and timeouts recorded on the span as well. Use one or the other.
"""

from __future__ import annotations

import httpx

from .._emit.tracecontext import traceparent_of
from ._http import finish_client_span, forget_open, start_client_span

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import Any

    from .._emit.hot import Span

__all__ = ("AsyncTransport", "Transport", "async_event_hooks", "event_hooks")

# Where the request hook leaves the span for the response hook.
_KEY = "atrace.span"


def event_hooks() -> dict[str, list[Callable[..., Any]]]:
    """Hooks for ``httpx.Client(event_hooks=...)``: one client span per request sent.

    The span (``"HTTP GET"``, with ``http.request.method``, ``url.full``, ``server.address``,
    ``server.port`` and ``http.response.status_code``) is a child of the current span and covers
    the request up to the response headers; a 4xx or 5xx status fails it. Each redirect hop is a
    request of its own. ``traceparent`` naming it (with its flags) is added to the request's
    headers, and the trace's ``tracestate`` when it has one.
    """
    return {"request": [_on_request], "response": [_on_response]}


def async_event_hooks() -> dict[str, list[Callable[..., Awaitable[Any]]]]:
    """The same hooks for ``httpx.AsyncClient(event_hooks=...)``."""
    return {"request": [_aon_request], "response": [_aon_response]}


def _start(request: httpx.Request) -> Span:
    url = request.url
    if url.userinfo:
        url = url.copy_with(username=None, password=None)  # credentials never go into a record
    sp = start_client_span(request.method, str(url), url.host or None, url.port)
    headers = request.headers
    headers["traceparent"] = traceparent_of(sp)
    state = sp.trace_state
    if state:
        headers["tracestate"] = state
    return sp


def _on_request(request: httpx.Request) -> None:
    sp = _start(request)
    # Nothing ends this span if no response comes: it must not stay referenced as open.
    forget_open(sp)
    request.extensions = {**request.extensions, _KEY: sp}


def _on_response(response: httpx.Response) -> None:
    request = response.request
    sp = request.extensions.get(_KEY)
    if sp is not None:
        request.extensions = {k: v for k, v in request.extensions.items() if k != _KEY}
        finish_client_span(sp, response.status_code, None)


async def _aon_request(request: httpx.Request) -> None:
    _on_request(request)


async def _aon_response(response: httpx.Response) -> None:
    _on_response(response)


class Transport(httpx.BaseTransport):
    """Wraps a transport (default ``httpx.HTTPTransport()``): a client span per request.

    Like :func:`event_hooks`, and a request that fails (connection refused, timeout...) ends
    its span failed with the exception, which is re-raised.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self.transport = httpx.HTTPTransport() if transport is None else transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sp = _start(request)
        try:
            response = self.transport.handle_request(request)
        except BaseException as exc:
            finish_client_span(sp, None, exc)
            raise
        finish_client_span(sp, response.status_code, None)
        return response

    def close(self) -> None:
        self.transport.close()


class AsyncTransport(httpx.AsyncBaseTransport):
    """Wraps an async transport (default ``httpx.AsyncHTTPTransport()``), as :class:`Transport`."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.transport = httpx.AsyncHTTPTransport() if transport is None else transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sp = _start(request)
        try:
            response = await self.transport.handle_async_request(request)
        except BaseException as exc:
            finish_client_span(sp, None, exc)
            raise
        finish_client_span(sp, response.status_code, None)
        return response

    async def aclose(self) -> None:
        await self.transport.aclose()
