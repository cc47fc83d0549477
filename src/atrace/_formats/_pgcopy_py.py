"""Rows in PostgreSQL's binary COPY format: the pure-Python twin of ``_pgcopy``."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ("HEADER", "TRAILER", "encode_rows")

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"

_PG_EPOCH_US = 946_684_800_000_000
_N_COLUMNS = 26
_N_OPTIONAL = 7  # the columns from span_kind on; ts_frac follows them
_NULL = b"\xff\xff\xff\xff"
_I16 = struct.Struct("!ih").pack
_I32 = struct.Struct("!ii").pack
_I64 = struct.Struct("!iq").pack
_LEN = struct.Struct("!i").pack
_COUNT = struct.Struct("!h").pack


def _text(value: Any, jsonb: bool = False) -> bytes:
    if isinstance(value, str):
        data = value.encode("utf-8", "replace")
    elif isinstance(value, bytes):
        data = value
    else:
        raise TypeError(f"expected text, got {type(value).__name__}")
    if jsonb:
        return _LEN(len(data) + 1) + b"\x01" + data
    if b"\x00" in data:
        # PostgreSQL refuses NUL in text and would fail the whole COPY for it.
        raise ValueError("text contains a NUL character")
    return _LEN(len(data)) + data


def _uuid(value: Any) -> bytes:
    if isinstance(value, str):
        text = value.replace("-", "") if len(value) == 36 else value
        if len(text) != 32:
            raise ValueError(f"trace id {value!r} is not 32 hex digits")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"trace id {value!r} is not hex") from None
    else:
        raw = value.bytes
    if len(raw) != 16:
        raise ValueError(f"trace id {value!r} is not a 16-byte id")
    return b"\x00\x00\x00\x10" + raw


def _int(value: Any, lo: int, hi: int, kind: str) -> int:
    if not isinstance(value, int):
        raise TypeError(f"an integer is required (got type {type(value).__name__})")
    if not lo <= value <= hi:
        raise OverflowError(f"{value} does not fit {kind}")
    return value


def _row(row: tuple[Any, ...], extra: Sequence[Any], keep: int) -> bytes:
    if len(row) != _N_COLUMNS:
        raise ValueError(f"a row has {len(row)} columns, expected {_N_COLUMNS}")
    (ts, kind, level, trace, span, parent, dur, status, *texts1) = row[:11]
    pid = row[11]
    parts = [_COUNT(_N_COLUMNS - _N_OPTIONAL + bin(keep & 0xFF).count("1") + len(extra))]
    add = parts.append
    i64 = (-(2**63), 2**63 - 1, "a bigint")
    i16 = (-(2**15), 2**15 - 1, "a smallint")
    add(_NULL if ts is None else _I64(8, _int(ts, *i64) // 1000 - _PG_EPOCH_US))
    add(_NULL if kind is None else _I16(2, _int(kind, *i16)))
    add(_NULL if level is None else _I16(2, _int(level, *i16)))
    add(_NULL if trace is None else _uuid(trace))
    for v in (span, parent, dur):
        add(_NULL if v is None else _I64(8, _int(v, *i64)))
    add(_NULL if status is None else _I16(2, _int(status, *i16)))
    for v in texts1:  # service, environment, host
        add(_NULL if v is None else _text(v))
    add(_NULL if pid is None else _I32(4, _int(pid, -(2**31), 2**31 - 1, "an integer")))
    name, message, attrs = row[12], row[13], row[14]
    add(_NULL if name is None else _text(name))
    add(_NULL if message is None else _text(message))
    add(_NULL if attrs is None else _text(attrs, jsonb=True))
    for v in row[15:19]:
        add(_NULL if v is None else _text(v))
    # The optional columns the batch sends (see pgcopy.copy_columns): bit i of ``keep``.
    span_kind, state, flags, status_message, links, otlp, resource_id = row[19:26]
    if keep & 1:
        add(_NULL if span_kind is None else _I16(2, _int(span_kind, *i16)))
    if keep & 2:
        add(_NULL if state is None else _text(state))
    if keep & 4:
        add(_NULL if flags is None else _I16(2, _int(flags, *i16)))
    if keep & 8:
        add(_NULL if status_message is None else _text(status_message))
    if keep & 16:
        add(_NULL if links is None else _text(links, jsonb=True))
    if keep & 32:
        add(_NULL if otlp is None else _text(otlp, jsonb=True))
    if keep & 64:
        add(_NULL if resource_id is None else _I64(8, _int(resource_id, *i64)))
    if keep & 128:
        # ts_frac: the nanoseconds below ts's microsecond (0 is stored as null).
        frac = None if ts is None else ts % 1000
        add(_I16(2, frac) if frac else _NULL)
    for v in extra:
        add(_NULL if v is None else _text(v))
    return b"".join(parts)


def encode_rows(
    rows: Sequence[tuple[Any, ...]],
    start: int = 0,
    stop: int = -1,
    extra: Sequence[Any] = (),
    on_error: Callable[[tuple[Any, ...], Exception], tuple[Any, ...]] | None = None,
    keep: int = 0xFF,
) -> bytes:
    """``rows[start:stop]`` as binary COPY tuples (no header or trailer), plus ``extra`` text
    values appended to every row (columns after COLUMNS, such as the project). ``keep`` says
    which optional columns are sent (``pgcopy.copy_columns``; default all).

    A row that cannot be encoded is replaced by ``on_error(row, exc)`` (a row describing the
    problem) so one bad row never fails the rest; without ``on_error`` the error propagates.
    """
    n = len(rows)
    if stop < 0 or stop > n:
        stop = n
    out = []
    for i in range(max(start, 0), stop):
        row = rows[i]
        try:
            if type(row) is not tuple:
                raise TypeError(f"expected tuple, got {type(row).__name__}")
            out.append(_row(row, extra, keep))
        except Exception as exc:
            if on_error is None:
                raise
            out.append(_row(on_error(row, exc), extra, keep))
    return b"".join(out)
