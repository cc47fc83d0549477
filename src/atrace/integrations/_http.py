"""What the HTTP integrations share: server and client spans, trace headers, skip rules."""

from __future__ import annotations

import re
from binascii import unhexlify as _unhex

from .._emit.context import SpanContext
from .._emit.hot import Span, begin, end, get_current
from .._emit.ids import parse_trace_id
from .._emit.runtime import runtime
from ..errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = (
    "METHODS",
    "finish_client_span",
    "finish_server_span",
    "forget_open",
    "method_attrs",
    "parse_traceparent",
    "remote_parent",
    "skip_rule",
    "split_host",
    "start_client_span",
    "traceparent_of",
)

# The methods of RFC 9110 and PATCH (RFC 5789), as OpenTelemetry's semantic conventions list them;
# any other method is recorded as "_OTHER" so that a client cannot mint span names at will.
METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE")
)
# Attribute names of OpenTelemetry's HTTP semantic conventions.
ROUTE = "http.route"
STATUS = "http.response.status_code"
_U64 = (1 << 64) - 1


def method_attrs(method: str, attrs: dict[str, Any]) -> str:
    """Record ``method`` in ``attrs``; return the span name's first word (``"HTTP"`` if unknown)."""
    if method in METHODS:
        attrs["http.request.method"] = method
        return method
    attrs["http.request.method"] = "_OTHER"
    attrs["http.request.method_original"] = method
    return "HTTP"


# W3C trace context: version, trace id, parent id, flags, all lowercase hex; versions after 00 may
# append fields.
_TP = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_HEX = b"0123456789abcdef"
_ODD = frozenset(b"13579bdf")
_from_bytes = int.from_bytes


def parse_traceparent(value: bytes | str) -> SpanContext | None:
    """The caller's span from a ``traceparent`` value, or None when it breaks the W3C rules.

    Invalid: another shape or length, uppercase hex, version ``ff``, a version-00 value with
    more fields, an all-zero trace id or parent id.
    """
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    # The usual value (version 00, no padding) is checked by slicing: no regex on the hot path.
    if len(value) == 55 and value.translate(None, _HEX) == b"---" and value[:3] != b"ff-":
        if value[2] != 45 or value[35] != 45 or value[52] != 45:
            return None
    else:
        m = _TP.fullmatch(value.strip())
        if m is None:
            return None
        version, rest = m[1], m[5]
        if version == b"ff" or (rest is not None and version == b"00"):
            return None
        value = m[0]
    # Signed, as atrace stores span ids; zero stays zero, which is invalid.
    span_id = _from_bytes(_unhex(value[36:52]), "big", signed=True)
    trace_id = value[3:35].decode()
    if span_id == 0 or trace_id == "00000000000000000000000000000000":
        return None
    # The flags' low bit is "sampled"; its hex digit is odd exactly when that bit is set.
    return SpanContext(trace_id, span_id, value[54] in _ODD)


def remote_parent(
    traceparent: bytes | str | None, trace_id: bytes | str | None
) -> SpanContext | None:
    """The caller's span from a ``traceparent`` value, else a trace from an ``X-Trace-ID`` value.

    A value breaking the W3C rules is ignored, as the W3C recommendation asks: the request then
    starts a new trace (or joins the ``X-Trace-ID`` one).
    """
    if traceparent:
        ctx = parse_traceparent(traceparent)
        if ctx is not None:
            return ctx
    if trace_id:
        text = trace_id.decode("latin-1") if isinstance(trace_id, bytes) else trace_id
        tid = parse_trace_id(text.strip())
        if tid is not None:
            return SpanContext(tid, None)
    return None


def traceparent_of(sp: Span) -> str:
    """The ``traceparent`` value naming a started span as the parent."""
    return f"00-{sp.trace_id}-{(sp.span_id or 0) & _U64:016x}-01"


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
            if sp.error is None:
                sp.error = (None, f"HTTP {status}", None)
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
    sp = Span("HTTP" if word == "HTTP" else f"HTTP {word}", attrs)
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
            if sp.error is None:
                sp.error = (None, f"HTTP {status}", None)
    end(sp, exc)
