"""ASGI middleware: one server span per HTTP request or WebSocket connection, W3C propagation.

Pure ASGI, no framework import: ``app.add_middleware(AtraceMiddleware)`` in Starlette and
FastAPI, or ``AtraceMiddleware(app)`` around any ASGI app.
"""

from __future__ import annotations

import logging

from .._emit.hot import Span, begin, get_current, reset_current, set_current
from .._emit.tracecontext import remote_parent, traceparent_of
from .._pipeline.state import ashutdown
from ._http import METHODS, SERVER, finish_server_span, method_attrs, skip_rule, split_host

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, MutableMapping
    from typing import Any

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ("AtraceMiddleware",)

# Header names as ASGI servers give them: lowercase bytes.
_TRACEPARENT = b"traceparent"
_TRACESTATE = b"tracestate"
_X_TRACE_ID = b"x-trace-id"
_USER_AGENT = b"user-agent"
_HOST = b"host"
# The messages that open a response, and so carry its headers.
_STARTS = frozenset(("http.response.start", "websocket.accept", "websocket.http.response.start"))
_MAX_HOSTS = 256
_hosts: dict[bytes, tuple[str, int | None]] = {}
_log = logging.getLogger("atrace")


class AtraceMiddleware:
    """Trace every HTTP request and WebSocket connection of an ASGI app.

    Each request gets one server span named ``"GET /items/{id}"`` when the framework exposes the
    matched route (Starlette and FastAPI do, in ``scope["route"]``), else ``"GET"`` alone, which
    keeps span names few (``url.path`` holds the path). A WebSocket connection is one span named
    ``"WEBSOCKET /ws"`` (or ``"WEBSOCKET"``). Attributes follow OpenTelemetry's HTTP semantic
    conventions. A valid ``traceparent`` (with ``tracestate``; else ``X-Trace-ID``) joins the
    caller's trace; the response carries ``traceparent`` and ``X-Trace-ID`` naming this span.
    An exception is recorded on the span and re-raised; a 5xx status fails the span, a 4xx
    does not.

    ``skip_paths``: paths with no span; each entry also covers the paths below it (``"/health"``
    skips ``/health/live``, not ``/healthz``). ``service`` names the service of these spans
    (default: the configured one). ``record_client=False`` leaves out ``client.address``.
    Other scopes pass through untouched.

    Lifespan messages reach the app unchanged; when the app reports its shutdown complete (or
    failed), atrace first writes what it holds and stops its flusher, within
    ``shutdown_timeout``, so that a server which ends the process right after its shutdown
    (uvicorn re-raises the SIGTERM it caught) loses nothing. An app without lifespan support
    (it fails or returns before reading a message) is answered by the middleware itself.
    """

    __slots__ = ("_skip", "app", "record_client", "service")

    def __init__(
        self,
        app: ASGIApp,
        *,
        skip_paths: Iterable[str] = (),
        service: str | None = None,
        record_client: bool = True,
    ) -> None:
        self.app = app
        self._skip = skip_rule(skip_paths)
        self.service = service
        self.record_client = record_client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            base = scope["method"]
            scheme = scope.get("scheme") or "http"
        elif kind == "websocket":
            base = "WEBSOCKET"
            scheme = scope.get("scheme") or "ws"
        elif kind == "lifespan":
            await _lifespan(self.app, scope, receive, send)
            return
        else:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self._skip is not None and self._skip(path):
            await self.app(scope, receive, send)
            return
        if kind != "http":
            attrs: dict[str, Any] = {"url.path": path, "url.scheme": scheme}
        elif base in METHODS:
            attrs = {"http.request.method": base, "url.path": path, "url.scheme": scheme}
        else:
            attrs = {"url.path": path, "url.scheme": scheme}
            base = method_attrs(base, attrs)
        headers = dict(scope["headers"])
        host = headers.get(_HOST)
        if host is not None:
            where = _hosts.get(host) or _parse_host(host)
            attrs["server.address"] = where[0]
            if where[1] is not None:
                attrs["server.port"] = where[1]
        else:
            server = scope.get("server")
            if server:
                attrs["server.address"] = server[0]
                if server[1] is not None:
                    attrs["server.port"] = server[1]
        if self.record_client:
            client = scope.get("client")
            if client:
                attrs["client.address"] = client[0]
        agent = headers.get(_USER_AGENT)
        if agent is not None:
            attrs["user_agent.original"] = agent.decode("latin-1")

        prev = get_current()
        sp = Span(base, attrs, None, self.service, SERVER)
        tp = headers.get(_TRACEPARENT)
        if tp is not None or _X_TRACE_ID in headers:
            state = None
            if tp is not None:
                # The dict kept one line of each header: a repeated traceparent is invalid and
                # repeated tracestate lines are joined, so both are read from the raw list.
                tp, state = _trace_lines(scope["headers"])
            remote = remote_parent(tp, state, headers.get(_X_TRACE_ID))
            # The span copies its parent's ids; holding on to the remote parent would only keep
            # one more garbage-collected object alive while the span waits in the ring.
            begin(sp, prev if remote is None else remote, keep_parent=False)
        else:
            begin(sp, prev)
        responder = _Responder()
        responder.send = send
        responder.span = sp
        responder.status = None
        root = scope.get("root_path")
        token = set_current(sp)
        try:
            await self.app(scope, receive, responder.send_message)
        except BaseException as exc:
            reset_current(token, prev)
            finish_server_span(sp, base, responder.status, _route_of(scope, root), exc)
            raise
        reset_current(token, prev)
        route = scope.get("route")
        finish_server_span(
            sp, base, responder.status, None if route is None else _route_of(scope, root), None
        )


# What the app sends when its shutdown is over: atrace writes what it holds before the server
# hears it, since the server may end the process as soon as it does.
_SHUTDOWN_OVER = frozenset(("lifespan.shutdown.complete", "lifespan.shutdown.failed"))


async def _lifespan(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run the app's lifespan, or answer it for an app without lifespan support; write what
    atrace holds once the shutdown is over."""
    received = False

    async def app_receive() -> Message:
        nonlocal received
        received = True
        return await receive()

    async def app_send(message: Message) -> None:
        if message["type"] in _SHUTDOWN_OVER:
            await _write_before_exit()
        await send(message)

    try:
        await app(scope, app_receive, app_send)
    except Exception as exc:
        if received:
            raise  # the app speaks lifespan, and failed: the server reports it
        _log.debug("atrace: the app does not support lifespan (%r); atrace answers it", exc)
    else:
        if received:
            return
    # The app never read a message: it has no lifespan support, so the middleware answers.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await _write_before_exit()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _write_before_exit() -> None:
    # Stopped rather than flushed: the sinks close on the loop that opened them, which the server
    # is about to shut down; the next record starts atrace again. Never fails the shutdown.
    try:
        if not await ashutdown():
            _log.warning("atrace: not everything was written before the server's shutdown")
    except Exception:
        _log.exception("atrace: writing at the server's shutdown failed")


class _Responder:
    """What the app's ``send`` goes through: reads the status and adds the trace headers.

    The app is handed the bound method ``send_message``, not the instance: calling a bound
    method is a fast path of the interpreter, calling an instance through ``__call__`` is not,
    and there are several sends per request.
    """

    __slots__ = ("send", "span", "status")

    send: Send
    span: Span
    status: int | None

    # Not a coroutine function: it hands back the server's own awaitable, one frame less per send.
    def send_message(self, message: Message) -> Awaitable[None]:
        kind = message["type"]
        if kind != "http.response.body" and kind in _STARTS:
            self.status = message.get("status")
            sp = self.span
            ours = [
                (_TRACEPARENT, traceparent_of(sp).encode()),
                (_X_TRACE_ID, sp.trace_id.encode()),
            ]
            headers = message.get("headers")
            # A copy: the app may reuse its message dicts, which must not collect our headers.
            message = dict(message)
            message["headers"] = [*headers, *ours] if headers else ours
        return self.send(message)


def _trace_lines(raw: Iterable[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes]]:
    """Every ``traceparent`` and every ``tracestate`` line of a request, in order (ASGI names
    are lowercase)."""
    parents: list[bytes] = []
    states: list[bytes] = []
    for name, value in raw:
        if name == _TRACEPARENT:
            parents.append(value)
        elif name == _TRACESTATE:
            states.append(value)
    return parents, states


def _parse_host(raw: bytes) -> tuple[str, int | None]:
    # Few distinct Host values reach one server: each is parsed once. The bound keeps a client
    # sending random ones from growing the cache.
    if len(_hosts) >= _MAX_HOSTS:
        _hosts.clear()
    where = _hosts[raw] = split_host(raw.decode("latin-1"))
    return where


def _route_of(scope: Scope, root: str | None) -> str | None:
    """The matched route template from ``scope["route"]`` (Starlette, FastAPI), or None."""
    route = scope.get("route")
    if route is None:
        return None
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    now = scope.get("root_path")
    if now and now != root and now.startswith(root or ""):
        # Routes of a mounted app are relative to the mount point, which the root path grew by.
        # A Mount matched as the route itself already holds its own path in its template.
        mounted = now[len(root or "") :]
        if hasattr(route, "routes"):  # a Starlette Mount
            own = getattr(route, "path", "")
            mounted = mounted[: len(mounted) - len(own)] if mounted.endswith(own) else ""
        template = mounted + template
    return template
