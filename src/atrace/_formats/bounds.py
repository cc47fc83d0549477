"""Bounds on what one ingested record may hold, shared by every ingest path (native and OTLP).

What the collector stores has to stay readable: a record's attributes are read back, sent as
JSON, walked by the live tail and nested into trace trees, so their size and their nesting are
bounded when they arrive, whichever format brought them. Past a bound the record is *sanitised*,
not refused (as the native format has always done for oversize attributes), and the response
counts the records so cut:

- **Attribute value size** (``max_value_bytes``, default 32 KiB): an attribute (a top-level key of
  ``attrs``) whose value takes more bytes as JSON is replaced by the marker
  ``{"atrace.truncated": true, "atrace.original_bytes": N, "atrace.limit": L}``.
- **Record attributes size** (``max_attrs_bytes``, default 64 KiB): attributes still larger as a
  whole (many values each under the bound) become that marker as a whole.
- **Nesting** (``max_depth``, default 16): an attribute value holds at most that many nested
  arrays and objects; a deeper one is replaced by the string ``"<too deep>"``.
- Message, name, error and stack text are cut per column by the decoders (``wire.TEXT_LIMITS``
  and the OTLP decoders' character limits, the same for both).

Timestamps are checked against a window around the time of ingest (``late_ns`` back, default
7 days, and ``ahead_ns`` forward, default 1 day): a record outside is *rejected* on its own, the
rest of the request is stored, and the response says how many were rejected. Only days inside
the window ever receive rows, so one sender's clock cannot reach a day whose partition does not
exist yet (a row there would block that day's partition for every project).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import add
from typing import Any

import orjson

from .._records import COLUMNS, Row

__all__ = (
    "AHEAD_NS",
    "LATE_NS",
    "MAX_ATTRS_BYTES",
    "MAX_DEPTH",
    "MAX_VALUE_BYTES",
    "TOO_DEEP",
    "bound_attrs",
    "bound_rows",
    "bracket_counts",
    "marker",
    "needs_bounding",
    "split_window",
    "too_deep",
)

MAX_ATTRS_BYTES = 64 * 1024
MAX_VALUE_BYTES = 32 * 1024
MAX_DEPTH = 16
_NS_PER_DAY = 86_400 * 1_000_000_000
LATE_NS = 7 * _NS_PER_DAY
AHEAD_NS = 1 * _NS_PER_DAY
TOO_DEEP = "<too deep>"

_TS = COLUMNS.index("ts")
_ATTRS = COLUMNS.index("attrs")
_CONTAINERS = (dict, list)
_loads = orjson.loads
_dumps = orjson.dumps


def marker(original_bytes: int, limit: int) -> dict[str, Any]:
    """What stands for a value (or whole attributes) of ``original_bytes`` over ``limit``."""
    return {
        "atrace.truncated": True,
        "atrace.original_bytes": original_bytes,
        "atrace.limit": limit,
    }


def _depth_over(value: Any, room: int) -> bool:
    # Whether ``value`` nests more than ``room`` containers (itself included).
    if type(value) not in _CONTAINERS:
        return False
    if room <= 0:
        return True
    inner = value.values() if type(value) is dict else value
    return any(_depth_over(v, room - 1) for v in inner if type(v) in _CONTAINERS)


def too_deep(attrs: dict[str, Any], max_depth: int = MAX_DEPTH) -> bool:
    """Whether any value of ``attrs`` nests more than ``max_depth`` arrays and objects."""
    return any(_depth_over(v, max_depth) for v in attrs.values() if type(v) in _CONTAINERS)


def _cut(value: Any, room: int) -> Any:
    if type(value) is dict:
        if room <= 0:
            return TOO_DEEP
        return {k: _cut(v, room - 1) for k, v in value.items()}
    if type(value) is list:
        if room <= 0:
            return TOO_DEEP
        return [_cut(v, room - 1) for v in value]
    return value


def bracket_counts(raws: Sequence[bytes]) -> list[int]:
    # An upper bound on each document's nesting, in C: every level opens with { or [ (one more
    # for the document's own object; brackets inside strings only raise the bound).
    braces = map(bytes.count, raws, repeat(b"{"))
    return list(map(add, braces, map(bytes.count, raws, repeat(b"["))))


def needs_bounding(raw: bytes, obj: dict[str, Any], max_value_bytes: int, max_depth: int) -> bool:
    """Whether a document within the size bound still has a value too large or too deep."""
    if len(raw) > max_value_bytes:
        for value in obj.values():
            if (type(value) in _CONTAINERS or type(value) is str) and len(
                _dumps(value)
            ) > max_value_bytes:
                return True
    return raw.count(b"{") + raw.count(b"[") > max_depth + 1 and too_deep(obj, max_depth)


def bound_attrs(
    obj: dict[str, Any],
    original_bytes: int,
    *,
    max_attrs_bytes: int = MAX_ATTRS_BYTES,
    max_value_bytes: int = MAX_VALUE_BYTES,
    max_depth: int = MAX_DEPTH,
) -> bytes:
    """``obj`` (JSON-safe attributes) as JSON bytes within the bounds, with markers where cut."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if type(value) in _CONTAINERS:
            value = _cut(value, max_depth)
        if type(value) in _CONTAINERS or type(value) is str:
            size = len(_dumps(value))
            if size > max_value_bytes:
                value = marker(size, max_value_bytes)
        out[key] = value
    data = _dumps(out)
    if len(data) > max_attrs_bytes:
        return _dumps(marker(original_bytes, max_attrs_bytes))
    return data


def bound_rows(
    rows: list[Row],
    *,
    max_attrs_bytes: int = MAX_ATTRS_BYTES,
    max_value_bytes: int = MAX_VALUE_BYTES,
    max_depth: int = MAX_DEPTH,
) -> tuple[list[Row], int]:
    """``rows`` (COLUMNS order) with attributes bounded, and how many records were cut.

    The rows are returned as they are when nothing needs cutting; the checks of a batch of
    ordinary records run in C (sizes, then bracket counts).
    """
    column = [r[_ATTRS] for r in rows]
    raws = [a for a in column if a is not None]
    if not raws:
        return rows, 0
    sizes = list(map(len, raws))
    suspects = max(sizes) > max_value_bytes or max(bracket_counts(raws)) > max_depth + 1
    if not suspects:
        return rows, 0
    out: list[Row] = []
    cut = 0
    for row in rows:
        raw = row[_ATTRS]
        if raw is not None and (
            len(raw) > max_value_bytes or raw.count(b"{") + raw.count(b"[") > max_depth + 1
        ):
            try:
                obj = _loads(raw)
            except orjson.JSONDecodeError:  # nested deeper than orjson reads
                obj = None
            if obj is None:
                fixed: bytes | None = _dumps(marker(len(raw), max_attrs_bytes))
            elif len(raw) > max_attrs_bytes or needs_bounding(raw, obj, max_value_bytes, max_depth):
                fixed = bound_attrs(
                    obj,
                    len(raw),
                    max_attrs_bytes=max_attrs_bytes,
                    max_value_bytes=max_value_bytes,
                    max_depth=max_depth,
                )
            else:
                fixed = None
            if fixed is not None:
                row = (*row[:_ATTRS], fixed, *row[_ATTRS + 1 :])
                cut += 1
        out.append(row)
    return out, cut


def split_window(rows: list[Row], lo_ns: int, hi_ns: int) -> tuple[list[Row], int]:
    """The rows whose ``ts`` lies in ``[lo_ns, hi_ns]``, and how many were left out."""
    if not rows:
        return rows, 0
    stamps = [r[_TS] for r in rows]
    if lo_ns <= min(stamps) and max(stamps) <= hi_ns:
        return rows, 0
    kept = [r for r in rows if lo_ns <= r[_TS] <= hi_ns]
    return kept, len(rows) - len(kept)
