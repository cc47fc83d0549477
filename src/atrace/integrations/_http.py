"""What the HTTP integrations share: server and client spans, skip rules, host parsing.

The trace headers themselves are read and written by ``atrace._emit.tracecontext``.
"""

from __future__ import annotations

from .._emit.hot import Span, begin, end, get_current
from .._emit.runtime import runtime
from ..errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = (
    "CLIENT",
    "METHODS",
    "SERVER",
    "finish_client_span",
    "finish_server_span",
    "forget_open",
    "method_attrs",
    "skip_rule",
    "split_host",
    "start_client_span",
)

# The methods of RFC 9110 and PATCH (RFC 5789), as OpenTelemetry's semantic conventions list them;
# any other method is recorded as "_OTHER" so that a client cannot mint span names at will.
METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE")
)
# Span kinds (the stored numbers of atrace.SpanKind): server spans answer, client spans call.
SERVER = 2
CLIENT = 3
# Attribute names of OpenTelemetry's HTTP semantic conventions.
ROUTE = "http.route"
STATUS = "http.response.status_code"


def method_attrs(method: str, attrs: dict[str, Any]) -> str:
    """Record ``method`` in ``attrs``; return the span name's first word (``"HTTP"`` if unknown)."""
    if method in METHODS:
        attrs["http.request.method"] = method
        return method
    attrs["http.request.method"] = "_OTHER"
    attrs["http.request.method_original"] = method
    return "HTTP"


def skip_rule(skip_paths: Iterable[str] | str) -> Callable[[str], bool] | None:
    """A test for the paths that get no span, or None when every path gets one.

    Each entry matches that path exactly and every path below it: ``"/health"`` skips
    ``/health`` and ``/health/live`` but not ``/healthz``.
    """
    entries = (skip_paths,) if isinstance(skip_paths, str) else tuple(skip_paths)
    for entry in entries:
        if not isinstance(entry, str) or not entry.startswith("/"):
            raise ConfigError("skip_paths", skip_paths, "expected paths starting with '/'")
    if not entries:
        return None
    exact = frozenset(e.rstrip("/") or "/" for e in entries)
    prefixes = tuple((e.rstrip("/") or "") + "/" for e in entries)

    def skip(path: str) -> bool:
        return path in exact or path.startswith(prefixes)

    return skip


def split_host(host: str) -> tuple[str, int | None]:
    """``("example.com", 8080)`` from a Host header value; IPv6 brackets are removed."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, None
        addr, rest = host[1:end], host[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        addr, sep, port = host.rpartition(":")
        if not sep:
            return host, None
    return addr, int(port) if port.isdigit() and len(port) <= 5 else None


def finish_server_span(
    sp: Span, base: str, status: int | None, route: str | None, exc: BaseException | None
) -> None:
    """End a server span: status code, route template and name, failure on 5xx or exception."""
    attrs = sp.attrs
    assert attrs is not None
    if status is not None:
        attrs[STATUS] = status
        if status >= 500 and sp.status != 2:
            # OpenTelemetry's rule for server spans: 5xx is a failure, 4xx is the client's.
            sp.status = 2
            if sp.status_message is None:
                sp.status_message = f"HTTP {status}"
    chosen = attrs.get(ROUTE)  # a route the handler set itself wins
    if isinstance(chosen, str) and chosen:
        sp.name = f"{base} {chosen}"
    elif route:
        attrs[ROUTE] = route
        sp.name = f"{base} {route}"
    end(sp, exc)


def start_client_span(method: str, url: str, host: str | None, port: int | None) -> Span:
    """Start (not enter) a client span under the current span, named ``"HTTP GET"``."""
    attrs: dict[str, Any] = {}
    word = method_attrs(method.upper(), attrs)
    attrs["url.full"] = url
    if host:
        attrs["server.address"] = host
    if port is not None:
        attrs["server.port"] = port
    sp = Span("HTTP" if word == "HTTP" else f"HTTP {word}", attrs, None, None, CLIENT)
    begin(sp, get_current())
    return sp


def forget_open(sp: Span) -> None:
    """Stop tracking a started span as open: one that may never end must not stay referenced."""
    runtime.open_spans.discard(sp)


def finish_client_span(sp: Span, status: int | None, exc: BaseException | None) -> None:
    """End a client span with the response status; 4xx and 5xx fail it, as for OpenTelemetry."""
    if status is not None:
        assert sp.attrs is not None
        sp.attrs[STATUS] = status
        if status >= 400 and sp.status != 2:
            sp.status = 2
            if sp.status_message is None:
                sp.status_message = f"HTTP {status}"
    end(sp, exc)
