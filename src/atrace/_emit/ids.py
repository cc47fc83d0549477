"""Trace and span identifiers: time-ordered W3C trace ids, random non-zero span ids."""

from __future__ import annotations

from .hot import new_span_id, new_trace_id

__all__ = (
    "format_span_id",
    "new_span_id",
    "new_trace_id",
    "parse_span_id",
    "parse_trace_id",
    "trace_id_time_ms",
)

_HALF = 1 << 63
_U64 = (1 << 64) - 1
_HEX = frozenset("0123456789abcdef")


def format_span_id(span_id: int) -> str:
    """The 16-hex-digit W3C form of a signed 64-bit span id."""
    return "%016x" % (span_id & _U64)


def parse_span_id(text: str) -> int | None:
    """A 16-hex-digit span id as a signed integer, or None when it is not a valid W3C span id."""
    text = text.lower()
    if len(text) != 16 or not _HEX.issuperset(text):
        return None
    value = int(text, 16)
    if value == 0:
        return None
    return value - (1 << 64) if value >= _HALF else value


def parse_trace_id(text: str) -> str | None:
    """A normalised 32-hex-digit trace id, or None when it is not a valid W3C trace id.

    Dashes are accepted so that UUID-formatted ids (as PostgreSQL prints them) round-trip.
    """
    text = text.replace("-", "").lower()
    if len(text) != 32 or not _HEX.issuperset(text) or text == "0" * 32:
        return None
    return text


def trace_id_time_ms(trace_id: str) -> int:
    """The millisecond timestamp an atrace trace id starts with."""
    return int(trace_id[:12], 16)
