"""aiohttp: a server middleware and a client ``TraceConfig``, one span per request each.

Server: ``web.Application(middlewares=[middleware])``, or ``setup(app)``, which also puts the trace
headers on responses a handler prepares itself (streaming). Client:
``aiohttp.ClientSession(trace_configs=[trace_config()])``.
"""

from __future__ import annotations

import contextvars

from .._emit.hot import Span, begin, get_current, reset_current, set_current
from .._emit.tracecontext import remote_parent, traceparent_of
from ..errors import MissingExtraError
from ._http import (
    SERVER,
    finish_client_span,
    finish_server_span,
    method_attrs,
    skip_rule,
    split_host,
    start_client_span,
)

try:
    from aiohttp import TraceConfig, web
except ImportError:  # pragma: no cover - depends on the environment
    raise MissingExtraError("aiohttp", "http") from None

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, MutableMapping
    from types import SimpleNamespace
    from typing import Any

    from aiohttp import (
        ClientSession,
        TraceRequestEndParams,
        TraceRequestExceptionParams,
        TraceRequestStartParams,
    )
    from aiohttp.typedefs import Handler, Middleware

__all__ = ("create_middleware", "middleware", "setup", "trace_config")

# The server span of the request being handled, for headers of responses prepared in a handler.
_serving: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "atrace_aiohttp_server_span", default=None
)


def create_middleware(
    *, skip_paths: Iterable[str] = (), service: str | None = None, record_client: bool = True
) -> Middleware:
    """A server middleware with options; ``middleware`` is the one with the defaults.

    One server span per request, named ``"GET /items/{id}"`` from the matched resource's
    canonical path (``"GET"`` when nothing matched), with OpenTelemetry's attribute names. It joins
    the caller's trace from ``traceparent`` and ``tracestate`` (else ``X-Trace-ID``), adds
    ``traceparent`` and ``X-Trace-ID`` to the response (raised ``HTTPException`` responses
    included), records an exception and re-raises it; a 5xx fails the span, a 4xx does not.
    ``skip_paths``: paths with no span, each entry also covering the paths below it.
    """
    skip = skip_rule(skip_paths)

    @web.middleware
    async def atrace_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if skip is not None and skip(path):
            return await handler(request)
        attrs: dict[str, Any] = {}
        base = method_attrs(request.method, attrs)
        attrs["url.path"] = path
        attrs["url.scheme"] = request.scheme
        address, port = split_host(request.host)
        attrs["server.address"] = address
        if port is not None:
            attrs["server.port"] = port
        if record_client and request.remote:
            attrs["client.address"] = request.remote
        headers = request.headers
        agent = headers.get("User-Agent")
        if agent is not None:
            attrs["user_agent.original"] = agent
        prev = get_current()
        # Every line of each header: a repeated traceparent is invalid, tracestate lines join.
        tp = headers.getall("traceparent", None)
        remote = remote_parent(
            tp, headers.getall("tracestate", None) if tp else None, headers.get("X-Trace-ID")
        )
        sp = Span(base, attrs, None, service, SERVER)
        begin(sp, prev if remote is None else remote)
        token = set_current(sp)
        serving = _serving.set(sp)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # a response raised: its status decides
            _serving.reset(serving)
            reset_current(token, prev)
            _add_headers(exc.headers, sp)
            failed = exc if exc.status >= 500 else None
            finish_server_span(sp, base, exc.status, _route_of(request), failed)
            raise
        except BaseException as exc:
            _serving.reset(serving)
            reset_current(token, prev)
            finish_server_span(sp, base, None, _route_of(request), exc)
            raise
        _serving.reset(serving)
        reset_current(token, prev)
        if not response.prepared:
            _add_headers(response.headers, sp)
        finish_server_span(sp, base, response.status, _route_of(request), None)
        return response

    return atrace_middleware


middleware = create_middleware()


def setup(
    app: web.Application,
    *,
    skip_paths: Iterable[str] = (),
    service: str | None = None,
    record_client: bool = True,
) -> None:
    """Trace ``app``: the middleware first in line, and trace headers on every response.

    A handler that prepares its response itself (streaming) sends the headers before the
    middleware sees the response; the ``on_response_prepare`` hook added here covers those.
    """
    app.middlewares.insert(
        0, create_middleware(skip_paths=skip_paths, service=service, record_client=record_client)
    )
    app.on_response_prepare.append(_on_response_prepare)


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    sp = _serving.get()
    if sp is not None:
        _add_headers(response.headers, sp)


def _add_headers(headers: MutableMapping[str, str], sp: Span) -> None:
    headers["traceparent"] = traceparent_of(sp)
    headers["X-Trace-ID"] = sp.trace_id


def _route_of(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


# ---- client ------------------------------------------------------------------------------------


def trace_config() -> TraceConfig:
    """A ``TraceConfig`` for ``ClientSession(trace_configs=[...])``: one client span per request.

    The span (``"HTTP GET"``, with ``http.request.method``, ``url.full``, ``server.address``,
    ``server.port`` and ``http.response.status_code``) is a child of the current span, covers the
    request up to the response headers, redirects included, and fails on an exception or a 4xx or
    5xx status. ``traceparent`` naming it (with its flags) is added to the outgoing headers,
    and the trace's ``tracestate`` when it has one.
    """
    config = TraceConfig()
    config.on_request_start.append(_on_request_start)
    config.on_request_end.append(_on_request_end)
    config.on_request_exception.append(_on_request_exception)
    return config


async def _on_request_start(
    session: ClientSession, ctx: SimpleNamespace, params: TraceRequestStartParams
) -> None:
    url = params.url
    if url.user is not None or url.password is not None:
        url = url.with_user(None)  # credentials never go into a record
    sp = start_client_span(params.method, str(url), url.host, url.port)
    headers = params.headers
    headers["traceparent"] = traceparent_of(sp)
    state = sp.trace_state
    if state:
        headers["tracestate"] = state
    ctx.atrace_span = sp


async def _on_request_end(
    session: ClientSession, ctx: SimpleNamespace, params: TraceRequestEndParams
) -> None:
    sp = getattr(ctx, "atrace_span", None)
    if sp is not None:
        ctx.atrace_span = None
        finish_client_span(sp, params.response.status, None)


async def _on_request_exception(
    session: ClientSession, ctx: SimpleNamespace, params: TraceRequestExceptionParams
) -> None:
    sp = getattr(ctx, "atrace_span", None)
    if sp is not None:
        ctx.atrace_span = None
        finish_client_span(sp, None, params.exception)
