"""Trace and span identifiers: time-ordered W3C trace ids, random non-zero span ids."""

from __future__ import annotations

import os
import random
import time

__all__ = (
    "format_span_id",
    "new_span_id",
    "new_trace_id",
    "parse_span_id",
    "parse_trace_id",
    "trace_id_time_ms",
)

# One private generator: uuid4()/os.urandom cost a syscall per id, and the module-level `random`
# instance may be reseeded by user code. Reseeded after fork so parent and child never share ids.
_rng = random.Random()
_getrandbits = _rng.getrandbits
_time_ns = time.time_ns
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_rng.seed)

_HALF = 1 << 63
_U64 = (1 << 64) - 1
_HEX = frozenset("0123456789abcdef")


def new_trace_id() -> str:
    """A 32-hex-digit trace id: 48-bit millisecond timestamp, then 80 random bits."""
    # The millisecond prefix is never zero, so the id is never the invalid all-zero trace id.
    return "%012x%020x" % ((_time_ns() // 1_000_000) & 0xFFFFFFFFFFFF, _getrandbits(80))


def new_span_id() -> int:
    """A random non-zero span id as a signed 64-bit integer (the PostgreSQL ``bigint`` form)."""
    # Uniform on [-2**63, 2**63): its two's-complement bytes are 8 uniformly random bytes.
    sid = _getrandbits(64) - _HALF
    return sid or new_span_id()


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
