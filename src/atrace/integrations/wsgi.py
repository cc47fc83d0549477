"""WSGI middleware: one server span per request of any WSGI app (Flask, Django...)."""

from __future__ import annotations

from .._emit.hot import Span, begin, get_current, reset_current, set_current
from .._emit.tracecontext import remote_parent, traceparent_of
from ._http import SERVER, finish_server_span, method_attrs, skip_rule, split_host

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ("AtraceWSGIMiddleware",)


class AtraceWSGIMiddleware:
    """Trace every request of a WSGI app: ``app.wsgi_app = AtraceWSGIMiddleware(app.wsgi_app)``.

    One server span per request, named ``"GET"`` or, when the app names its route (the
    ``http.route`` attribute on the current span), ``"GET /items/<id>"``. It joins the caller's
    trace from ``traceparent`` and ``tracestate`` (else ``X-Trace-ID``), adds ``traceparent`` and
    ``X-Trace-ID`` to the response, records an exception and re-raises it, fails on a 5xx
    status, and ends when the server closes the response iterable. The span is current while
    the app runs and while each body chunk is made. ``skip_paths``, ``service`` and
    ``record_client`` as for the ASGI middleware.
    """

    __slots__ = ("_skip", "app", "record_client", "service")

    def __init__(
        self,
        app: WSGIApplication,
        *,
        skip_paths: Iterable[str] = (),
        service: str | None = None,
        record_client: bool = True,
    ) -> None:
        self.app = app
        self._skip = skip_rule(skip_paths)
        self.service = service
        self.record_client = record_client

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if not path.isascii():
            # PEP 3333 hands the raw bytes over as latin-1 text; most clients send UTF-8.
            path = path.encode("latin-1").decode("utf-8", "replace")
        path = path or "/"
        if self._skip is not None and self._skip(path):
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        attrs: dict[str, Any] = {}
        base = method_attrs(method, attrs)
        attrs["url.path"] = path
        attrs["url.scheme"] = environ.get("wsgi.url_scheme", "http")
        host = environ.get("HTTP_HOST")
        if host:
            address, port = split_host(host)
        else:
            address = environ.get("SERVER_NAME", "")
            port_text = environ.get("SERVER_PORT", "")
            port = int(port_text) if port_text.isdigit() else None
        if address:
            attrs["server.address"] = address
        if port is not None:
            attrs["server.port"] = port
        if self.record_client and environ.get("REMOTE_ADDR"):
            attrs["client.address"] = environ["REMOTE_ADDR"]
        agent = environ.get("HTTP_USER_AGENT")
        if agent is not None:
            attrs["user_agent.original"] = agent

        prev = get_current()
        # The server joins a repeated header's lines with commas (PEP 3333, as CGI): a repeated
        # traceparent then holds a comma and is refused, tracestate lines are joined already.
        tp = environ.get("HTTP_TRACEPARENT")
        remote = remote_parent(
            tp, environ.get("HTTP_TRACESTATE") if tp else None, environ.get("HTTP_X_TRACE_ID")
        )
        sp = Span(base, attrs, None, self.service, SERVER)
        begin(sp, prev if remote is None else remote)
        call = _Call(sp, base, start_response, prev)
        token = set_current(sp)
        try:
            result = self.app(environ, call.start_response)
        except BaseException as exc:
            reset_current(token, prev)
            call.finish(exc)
            raise
        reset_current(token, prev)
        if isinstance(result, (list, tuple)):
            return _SizedBody(result, call)
        return _Body(result, call)


class _Call:
    """One request's span, its ``start_response`` and its end."""

    __slots__ = ("base", "prev", "span", "status", "upstream")

    def __init__(self, span: Span, base: str, upstream: StartResponse, prev: Any) -> None:
        self.span = span
        self.base = base
        self.upstream = upstream
        self.prev = prev
        self.status: int | None = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Any:
        code = status[:3]
        self.status = int(code) if code.isdigit() else None
        sp = self.span
        headers = [*headers, ("traceparent", traceparent_of(sp)), ("X-Trace-ID", sp.trace_id)]
        if exc_info is None:
            return self.upstream(status, headers)
        return self.upstream(status, headers, exc_info)

    def finish(self, exc: BaseException | None) -> None:
        if not self.span.end_ns:  # once: an error while iterating, then close()
            finish_server_span(self.span, self.base, self.status, None, exc)


class _Body:
    """The app's response iterable, with the span current while each chunk is made.

    The span ends at ``close()``, which PEP 3333 servers call once the response is sent (or
    abandoned); an exception while iterating or closing is recorded on the span and re-raised.
    """

    __slots__ = ("_call", "_iter", "_result")

    def __init__(self, result: Iterable[bytes], call: _Call) -> None:
        self._result = result
        self._call = call
        self._iter: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        call = self._call
        token = set_current(call.span)
        try:
            if self._iter is None:
                self._iter = iter(self._result)
            return next(self._iter)
        except StopIteration:
            raise
        except BaseException as exc:
            call.finish(exc)
            raise
        finally:
            reset_current(token, call.prev)

    def close(self) -> None:
        call = self._call
        close = getattr(self._result, "close", None)
        try:
            if close is not None:
                token = set_current(call.span)
                try:
                    close()
                finally:
                    reset_current(token, call.prev)
        except BaseException as exc:
            call.finish(exc)
            raise
        call.finish(None)


class _SizedBody(_Body):
    """A list or tuple body keeps its length, which servers use to set Content-Length."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]
