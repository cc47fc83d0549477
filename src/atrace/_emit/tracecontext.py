"""W3C Trace Context Level 2: the one parser and formatter of ``traceparent`` and ``tracestate``.

Every way in (``extract()``, the ASGI, WSGI and aiohttp servers) reads headers through
:func:`remote_parent`; every way out (``inject()``, the httpx and aiohttp clients, the servers'
response headers) writes them through :func:`format_traceparent` or :func:`traceparent_of`.
"""

from __future__ import annotations

from .hot import SpanContext
from .ids import parse_trace_id
from .runtime import current

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, MutableMapping
    from typing import Any, Protocol, TypeVar

    from .hot import Span

    Value = str | bytes
    # One header line, or every line of a header that came more than once.
    Values = Value | list[str] | list[bytes] | list[Value] | tuple[Value, ...]
    M = TypeVar("M", bound=MutableMapping[str, str])

    class SpanLike(Protocol):
        """What traceparent is written for: a live span or a remote parent."""

        @property
        def trace_id(self) -> str: ...
        @property
        def span_id(self) -> int | None: ...


__all__ = (
    "extract",
    "format_traceparent",
    "inject",
    "parse_traceparent",
    "parse_tracestate",
    "remote_parent",
    "traceparent_of",
)

_U64 = (1 << 64) - 1
_HALF = 1 << 63
_HEX = b"0123456789abcdef"
_ZERO_TRACE = b"0" * 32
# Outgoing flags: only "sampled" (1) and "random trace id" (2) are defined; the W3C asks that
# the others go out as zero.
_FLAG_TEXT = ("00", "01", "02", "03")
# tracestate (W3C, "list-members"): a key is a lowercase letter or digit, then up to 255 of
# a-z 0-9 _ - * / @; a value is 1 to 256 printable ASCII characters but "," and "=", not
# ending in a space. Checked with str.translate: what is left after deleting the allowed
# characters must be empty (no regex, so that ``import atrace`` does not load ``re``).
_KEY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_KEY_CHARS = dict.fromkeys(map(ord, "abcdefghijklmnopqrstuvwxyz0123456789_-*/@"))
_VALUE_CHARS = dict.fromkeys(c for c in range(0x20, 0x7F) if c not in (0x2C, 0x3D))
_MAX_MEMBERS = 32
# Optional whitespace (RFC 9110): spaces and horizontal tabs only.
_OWS = " \t"
_OWS_BYTES = b" \t"


# ---- in -----------------------------------------------------------------------------------------


def parse_traceparent(value: Value, tracestate: Values | None = None) -> SpanContext | None:
    """The caller's span from a ``traceparent`` value, or None when it breaks the W3C rules.

    ``tracestate`` (a value, or the lines of a repeated header) is kept on the context when
    it is valid, and dropped when not; it is never read when ``traceparent`` is invalid.
    Invalid: a version that is not two lowercase hex digits, or ``ff``; a trace id or parent id
    that is not 32 or 16 lowercase hex digits, or all zero; flags that are not two lowercase hex
    digits; a version-00 value with anything after the flags; a later version whose flags are
    followed by anything but ``-``; a comma (two values joined, as WSGI servers join a
    repeated header). Spaces and tabs around the value are allowed.
    """
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    elif not isinstance(value, bytes):
        return None
    # The usual value (version 00, no padding, 55 bytes) is checked by slicing alone.
    if len(value) != 55:
        value = _first_55(value)
    if (
        value.translate(None, _HEX) != b"---"
        or value[2] != 45
        or value[35] != 45
        or value[52] != 45
        or value[:2] == b"ff"
    ):
        return None
    trace_id = value[3:35]
    if trace_id == _ZERO_TRACE:
        return None
    # Signed, as atrace stores span ids; zero stays zero, which is invalid.
    span_id = int(value[36:52], 16)
    if span_id == 0:
        return None
    if span_id >= _HALF:
        span_id -= 1 << 64
    flags = int(value[53:55], 16)
    state = parse_tracestate(tracestate) if tracestate else ""
    return SpanContext(trace_id.decode(), span_id, flags=flags, trace_state=state or "")


def _first_55(value: bytes) -> bytes:
    """The version-00 part of a value that is not exactly 55 bytes, or b"" when there is none."""
    value = value.strip(_OWS_BYTES)
    size = len(value)
    if size == 55:
        return value
    # Shorter: invalid for every version. Version 00 has nothing after its flags; a later
    # version may add fields, each after a dash (W3C "Versioning of traceparent").
    if size < 55 or value[:2] == b"00" or value[55] != 45 or b"," in value:
        return b""
    return value[:55]


def parse_tracestate(value: Values) -> str | None:
    """A ``tracestate`` value validated and normalised, or None when it must be discarded.

    The lines of a repeated header are joined with commas, in order (RFC 9110 field order).
    Members are ``key=value``; spaces and tabs around them are dropped, and so are empty
    members. The result joins the members with "," ("" when there are none). Discarded
    whole: a member that is not ``key=value`` by the W3C grammar, more than 32 members. A key
    that repeats keeps its first (left-most, most recent) member and drops the later ones, as
    the W3C allows.
    """
    if isinstance(value, (list, tuple)):
        value = ",".join(v.decode("latin-1") if isinstance(v, bytes) else v for v in value)
    elif isinstance(value, bytes):
        value = value.decode("latin-1")
    members: list[str] = []
    seen: set[str] = set()
    count = 0
    for member in value.split(","):
        member = member.strip(_OWS)
        if not member:
            continue
        count += 1
        if count > _MAX_MEMBERS:
            return None
        key, eq, val = member.partition("=")
        if not (
            eq
            and 0 < len(key) <= 256
            and key[0] in _KEY_FIRST
            and not key.translate(_KEY_CHARS)
            and 0 < len(val) <= 256
            and val[-1] != " "
            and not val.translate(_VALUE_CHARS)
        ):
            return None
        if key not in seen:
            seen.add(key)
            members.append(member)
    return ",".join(members)


def remote_parent(
    traceparent: Values | None,
    tracestate: Values | None = None,
    x_trace_id: Values | None = None,
) -> SpanContext | None:
    """The caller's span from its headers: ``traceparent`` (with ``tracestate``), else the
    trace named by ``X-Trace-ID``; None when neither is usable.

    Each argument is a header's value, the list of its values when it came more than once, or
    None. A value breaking the W3C rules is ignored, as the W3C asks: the request then starts
    a new trace (or joins the ``X-Trace-ID`` one). So is a repeated ``traceparent``: which of
    them names the caller cannot be told.
    """
    if traceparent:
        if isinstance(traceparent, (list, tuple)):
            traceparent = traceparent[0] if len(traceparent) == 1 else None
        if traceparent is not None:
            ctx = parse_traceparent(traceparent, tracestate)
            if ctx is not None:
                return ctx
    if x_trace_id:
        if isinstance(x_trace_id, (list, tuple)):
            if len(x_trace_id) != 1:
                return None
            x_trace_id = x_trace_id[0]
        text = x_trace_id.decode("latin-1") if isinstance(x_trace_id, bytes) else x_trace_id
        tid = parse_trace_id(text.strip(_OWS))
        if tid is not None:
            # Not a W3C header: whether the id is random cannot be told, so no "random" flag.
            return SpanContext(tid, None)
    return None


def extract(headers: Any) -> SpanContext | None:
    """The remote parent carried by request headers: ``traceparent`` (and ``tracestate``),
    else ``X-Trace-ID``.

    ``headers`` is any carrier: a dict (names in any case), aiohttp's ``CIMultiDict``,
    Starlette's or httpx's ``Headers``, an ``email.message.Message``, a list of
    ``(name, value)`` pairs (ASGI's raw bytes included) or a WSGI environ
    (``HTTP_TRACEPARENT``). A repeated ``traceparent`` is invalid; repeated ``tracestate``
    lines are joined in order.
    """
    found: dict[str, list[Value]] = {"traceparent": [], "tracestate": [], "x-trace-id": []}
    for name, value in _pairs(headers):
        if type(name) is bytes:
            name = name.decode("latin-1")
        elif not isinstance(name, str):
            continue
        key = name.lower()
        if key.startswith("http_"):  # a WSGI/CGI environ: HTTP_X_TRACE_ID
            key = key[5:].replace("_", "-")
        into = found.get(key)
        if into is None or value is None:
            continue
        if isinstance(value, (list, tuple)):  # a dict of lists: every line of the header
            into.extend(value)
        else:
            into.append(value)
    return remote_parent(
        found["traceparent"] or None, found["tracestate"] or None, found["x-trace-id"] or None
    )


def _pairs(headers: Any) -> Iterable[tuple[Any, Any]]:
    """Every (name, value) of a carrier, a repeated header once per line."""
    multi = getattr(headers, "multi_items", None)  # httpx: items() joins repeated headers
    if multi is not None:
        pairs: Iterable[tuple[Any, Any]] = multi()
        return pairs
    items = getattr(headers, "items", None)
    if items is not None:
        pairs = items()
        return pairs
    if isinstance(headers, (list, tuple)):
        return headers
    get = getattr(headers, "get", None)  # a carrier that only answers get(name)
    if get is None:
        return ()
    return [(n, get(n)) for n in ("traceparent", "tracestate", "x-trace-id")]


# ---- out ----------------------------------------------------------------------------------------


def format_traceparent(span: SpanLike | None = None) -> str | None:
    """The W3C ``traceparent`` value naming a span (default: the current one) as the parent.

    Its flags are the span's: ``00`` under a caller that did not sample, ``01`` sampled, and
    the "random trace id" flag (``02``) as the trace's start set it. None outside any span, or
    for a trace without a parent span here.
    """
    if span is None:
        span = current.get()
    if span is None or span.span_id is None:
        return None
    flags = getattr(span, "flags", 1) & 3
    return f"00-{span.trace_id}-{span.span_id & _U64:016x}-{_FLAG_TEXT[flags]}"


def traceparent_of(sp: Span) -> str:
    """The ``traceparent`` value naming a started span as the parent (the integrations' path)."""
    return f"00-{sp.trace_id}-{sp.span_id_hex}-{_FLAG_TEXT[sp.flags]}"


def inject(headers: M, span: SpanLike | None = None) -> M:
    """Add ``traceparent`` for the current (or given) span to a headers dict, and
    ``tracestate`` when the trace carries one; return the dict."""
    if span is None:
        span = current.get()
    tp = format_traceparent(span)
    if tp is not None:
        headers["traceparent"] = tp
        state = getattr(span, "trace_state", "")
        if state:
            headers["tracestate"] = state
    return headers
