"""atrace's native batch format, spoken between a client and the collector (``POST /v1/ingest``).

One document per batch::

    {"v": 1, "batch": <id>, "columns": ["ts", "kind", ...], "rows": [[...], ...]}

- ``v`` is the format version, the integer 1.
- ``batch`` is the batch id: 16 raw bytes (``bin``) in msgpack, 32 hex digits in JSON. The
  collector's ledger stores a batch id once, so a retried POST is never written twice.
- ``columns`` names the values of each row, a subset of the stored columns (``COLUMNS``) in
  any order, each at most once. ``ts``, ``kind``, ``level`` and ``service`` are required; a missing
  ``status`` reads as 0 (unset), any other missing column as null. A name atrace does not know is
  refused, so a layout this collector cannot store fails loudly instead of losing data.
- ``rows`` holds one array per record, with the values in ``columns`` order (types below).
- ``resources`` (optional) holds ``[resource_id, document]`` pairs: the documents of the
  resources and scopes the rows name by ``resource_id`` (see ``atrace._formats.resources``),
  each a JSON object (``bin`` in msgpack) of at most ``max_attrs_bytes``, at most 64 of them.
- ``attrs`` is a JSON object: in msgpack its JSON text as ``bin``, in JSON the object itself;
  ``links`` (a JSON array of objects, each with ``trace_id`` and ``span_id`` as hex text) and
  ``otlp`` (a JSON object) travel the same way.

msgpack (``application/msgpack``) is the default encoding; JSON (``application/json``) the
alternative. Row values: ``ts`` int nanoseconds since the epoch (2000-01-01 to 2200-01-01);
``kind`` 0-3; ``level`` 0-100; ``status`` 0-2; ``trace_id`` 32 lowercase hex digits or null;
``span_id`` and ``parent_id`` signed 64-bit ints or null; ``duration_ns`` 0 to 2**63-1 or null;
``pid`` 0 to 2**31-1 or null; ``span_kind`` 0-5 or null; ``trace_flags`` 0-255 or null;
``service`` a string; the other columns strings or null. A batch from an older client, without
the columns schemas 5 and 6 added (``span_kind``, ``trace_state``, ``trace_flags``,
``status_message``, ``links``, ``otlp``), reads them as null; a collector older than its
clients refuses their batches (400): upgrade collectors first. A ``links`` or ``otlp``
document over ``max_attrs_bytes`` is stored as null and counted as cut.

:func:`decode_batch` is the collector's decoder of untrusted input. Anything malformed is refused
whole (a :class:`~atrace.errors.WireError` naming the row and column, nothing decoded is kept);
values that are well-formed but unfit for storage are sanitised instead: text loses NUL
characters (U+FFFD instead) and is cut to a per-column limit (TEXT_LIMITS), attribute names (the
top-level keys of ``attrs``) longer than 256 characters are cut, ``\u0000`` in attrs becomes
U+FFFD, and attributes are bounded as on every ingest path (:mod:`atrace._formats.bounds`): an
attribute value over ``max_value_bytes`` as JSON, or attributes over ``max_attrs_bytes`` as a
whole, are replaced by a small marker object
(``{"atrace.truncated": true, "atrace.original_bytes": N, "atrace.limit": L}``), and arrays and
objects nested more than ``max_depth`` levels inside a value by the string ``"<too deep>"``.
:func:`decode_batch_counted` also says how many records had their attributes cut so.

Validation runs a column at a time, each check one C-level pass over the column (a type census
with ``list.count``, ``min``/``max`` or ``bytes.translate`` for ranges, one ``join`` for text,
a set of distinct values for repetitive text); the Python-level loops run only to name the
offending row or to repair the few values that need it.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Sequence
from itertools import chain, compress, repeat
from operator import is_
from typing import Any, NoReturn

import orjson

from .._pipeline.sanitize import sanitize_text, sanitize_value
from .._records import COLUMNS, MAX_LEVEL, Batch, Kind, Level, Row, SpanKind, Status
from ..errors import MissingExtraError, WireError
from .bounds import (
    MAX_ATTRS_BYTES,
    MAX_DEPTH,
    MAX_VALUE_BYTES,
    bound_attrs,
    bracket_counts,
    needs_bounding,
    too_deep,
)

_msgpack: Any
try:
    _msgpack = importlib.import_module("msgpack")
except ImportError:  # pragma: no cover - msgpack comes with the http and collector extras
    _msgpack = None

__all__ = (
    "CONTENT_TYPES",
    "MAX_KEY_LENGTH",
    "REQUIRED_COLUMNS",
    "TEXT_LIMITS",
    "TS_MAX_NS",
    "TS_MIN_NS",
    "VERSION",
    "decode_batch",
    "decode_batch_counted",
    "encode_batch",
)

VERSION = 1
CONTENT_TYPES = {"msgpack": "application/msgpack", "json": "application/json"}
# Media types a decoder takes as each encoding (parameters such as charset are ignored).
_MEDIA_TYPES = {
    "application/msgpack": "msgpack",
    "application/x-msgpack": "msgpack",
    "application/vnd.msgpack": "msgpack",
    "application/json": "json",
}
_ENVELOPE = frozenset({"v", "batch", "columns", "rows"})
_OPTIONAL_ENVELOPE = frozenset({"resources"})
_MAX_RESOURCES = 64
REQUIRED_COLUMNS = frozenset({"ts", "kind", "level", "service"})
# A batch that left a column out: status reads as "unset", the rest as null.
_MISSING_DEFAULT: dict[str, Any] = {"status": Status.UNSET.value}

# 2000-01-01 and 2200-01-01 UTC: a ts outside is a broken clock or a unit mistake (s, ms, us).
TS_MIN_NS = 946_684_800 * 10**9
TS_MAX_NS = 7_258_118_400 * 10**9
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_I32_MAX = (1 << 31) - 1
MAX_KEY_LENGTH = 256
# Per-column limits in characters, the same as a client's encoder uses (message 32 KiB ...).
TEXT_LIMITS = {
    "service": 256,
    "environment": 256,
    "host": 256,
    "name": 1024,
    "message": 32_768,
    "error_type": 1024,
    "error_message": 32_768,
    "stack_trace": 131_072,
    "location": 4096,
    "trace_state": 512,
    "status_message": 32_768,
}
_HEX_DIGITS = b"0123456789abcdef"
_NUL_ESCAPE = b"\\u0000"
_NONE = type(None)
_INT = frozenset({int})
_INT_OR_NONE = frozenset({int, _NONE})
_STR = frozenset({str})
_STR_OR_NONE = frozenset({str, _NONE})
_ROW_TYPES = frozenset({list, tuple})
_loads = orjson.loads
_dumps = orjson.dumps


class _Bounds:
    """The attribute bounds of one decode, and the records cut to fit them so far."""

    __slots__ = ("attrs", "cut", "depth", "value")

    def __init__(self, attrs: int, value: int, depth: int) -> None:
        self.attrs = attrs
        self.value = value
        self.depth = depth
        self.cut = 0


# ---- encoding -------------------------------------------------------------------------------


def _fragment(value: Any) -> Any:
    # orjson asks about the values it cannot serialise: attrs bytes are JSON already.
    if type(value) is bytes:
        return orjson.Fragment(value)
    raise TypeError(f"cannot encode {type(value).__name__} in a row")


def encode_batch(
    batch: Batch, fmt: str = "msgpack", resources: dict[int, bytes] | None = None
) -> bytes:
    """A batch as a request body in ``fmt``: ``"msgpack"`` or ``"json"`` (see CONTENT_TYPES),
    with the ``resources`` documents its rows name."""
    if fmt == "msgpack":
        if _msgpack is None:
            raise MissingExtraError("msgpack", "http")
        doc = {"v": VERSION, "batch": batch.id.bytes, "columns": COLUMNS, "rows": batch.rows}
        if resources:
            doc["resources"] = [[rid, raw] for rid, raw in resources.items()]
        out: bytes = _msgpack.packb(doc, use_bin_type=True)
        return out
    if fmt == "json":
        doc = {"v": VERSION, "batch": batch.id.hex, "columns": COLUMNS, "rows": batch.rows}
        if resources:
            doc["resources"] = [[rid, raw] for rid, raw in resources.items()]
        return _dumps(doc, _fragment)
    raise ValueError(f"unknown wire format {fmt!r}: expected one of {sorted(CONTENT_TYPES)}")


# ---- decoding: the envelope ------------------------------------------------------------------


def _format_of(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    fmt = _MEDIA_TYPES.get(media)
    if fmt is None:
        raise WireError(
            f"unsupported content type {content_type!r}: send application/msgpack or "
            "application/json",
            status=415,
        )
    return fmt


def _load(body: bytes, fmt: str) -> Any:
    try:
        if fmt == "json":
            return _loads(body)
        if _msgpack is None:
            raise MissingExtraError("msgpack", "collector")
        # Arrays as tuples: a valid row is then already the tuple the sinks take.
        return _msgpack.unpackb(body, raw=False, use_list=False, strict_map_key=True, timestamp=0)
    except MissingExtraError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        # Truncated or corrupt input, invalid UTF-8, extra trailing data, nesting too deep.
        raise WireError(f"body is not valid {fmt}: {exc}") from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _kind(value: Any) -> str:
    return type(value).__name__


def _resources(value: Any, fmt: str, max_bytes: int) -> dict[int, bytes]:
    """The envelope's ``resources``: ``[id, document]`` pairs, each document a JSON object."""
    if type(value) not in _ROW_TYPES or len(value) > _MAX_RESOURCES:
        raise WireError(
            f"'resources': expected an array of at most {_MAX_RESOURCES} [id, document] pairs"
        )
    out: dict[int, bytes] = {}
    for i, pair in enumerate(value):
        where = f"'resources'[{i}]"
        if type(pair) not in _ROW_TYPES or len(pair) != 2:
            raise WireError(f"{where}: expected an [id, document] pair, got {_kind(pair)}")
        rid, raw = pair
        if type(rid) is not int or not _I64_MIN <= rid <= _I64_MAX:
            raise WireError(f"{where}: the id must be a signed 64-bit integer")
        if fmt == "json":
            if type(raw) is not dict:
                raise WireError(f"{where}: the document must be a JSON object")
            try:
                raw = _dumps(raw)
            except orjson.JSONEncodeError:
                raise WireError(f"{where}: the document is nested too deep") from None
        else:
            if type(raw) is not bytes:
                raise WireError(f"{where}: the document must be JSON bytes (bin)")
            try:
                parsed = _loads(raw)
            except orjson.JSONDecodeError as exc:
                raise WireError(f"{where}: invalid JSON: {exc}") from None
            if type(parsed) is not dict:
                raise WireError(f"{where}: the document must be a JSON object")
        if len(raw) > max_bytes:
            raise WireError(f"{where}: the document is {len(raw)} bytes; at most {max_bytes}")
        if _NUL_ESCAPE in raw:
            raw = _dumps(sanitize_value(_loads(raw), len(raw)))
        out[rid] = raw
    return out


def _batch_id(value: Any, fmt: str) -> uuid.UUID:
    if fmt == "msgpack":
        if type(value) is not bytes or len(value) != 16:
            raise WireError(f"'batch': expected 16 bytes (bin), got {_kind(value)} {_show(value)}")
        return uuid.UUID(bytes=value)
    if type(value) is not str or len(value) != 32 or value.strip("0123456789abcdefABCDEF"):
        raise WireError(f"'batch': expected 32 hex digits, got {_kind(value)} {_show(value)}")
    try:
        return uuid.UUID(hex=value)
    except ValueError:
        raise WireError(f"'batch': expected 32 hex digits, got {_show(value)}") from None


def _columns(value: Any) -> tuple[str, ...]:
    if type(value) not in _ROW_TYPES:
        raise WireError(f"'columns': expected an array of column names, got {_kind(value)}")
    columns = tuple(value)
    if columns == COLUMNS:
        return columns
    known = set(COLUMNS)
    seen: set[str] = set()
    for i, name in enumerate(columns):
        if type(name) is not str or name not in known:
            raise WireError(f"'columns'[{i}]: unknown column {_show(name)}")
        if name in seen:
            raise WireError(f"'columns'[{i}]: column {name!r} given twice")
        seen.add(name)
    missing = REQUIRED_COLUMNS - seen
    if missing:
        raise WireError(f"'columns': required column(s) missing: {', '.join(sorted(missing))}")
    return columns


def _bad(i: int, name: str, expected: str, value: Any) -> WireError:
    return WireError(
        f"rows[{i}], column {name!r}: expected {expected}, got {_kind(value)} {_show(value)}"
    )


def _first(col: Sequence[Any], ok: Callable[[Any], bool]) -> int:
    for i, v in enumerate(col):
        if not ok(v):
            return i
    raise AssertionError("no offending value")  # pragma: no cover - callers saw one


# ---- decoding: one column at a time ---------------------------------------------------------
# Each checker takes a column (a tuple of one value per row) and returns None when the column can
# be stored as it is, or a sanitised copy; a malformed value raises WireError naming its row.


def _present(col: Sequence[Any], kind: type) -> Sequence[Any] | None:
    """The column's non-null values if all of them are of ``kind``, else None."""
    kinds = list(map(type, col))
    count = kinds.count(kind)
    if count == len(col):
        return col
    if count + kinds.count(_NONE) == len(col):
        return list(compress(col, map(is_, kinds, repeat(kind))))
    return None


def _ints(name: str, col: Sequence[Any], nullable: bool) -> Sequence[int]:
    """The column's values to range-check, after checking that each is an int (or null)."""
    kinds = list(map(type, col))
    ints = kinds.count(int)
    if ints == len(col):
        return col
    if nullable and ints + kinds.count(_NONE) == len(col):
        # filter(None) also drops zeros, which lie in every nullable column's range.
        return list(filter(None, col))
    allowed = _INT_OR_NONE if nullable else _INT
    i = _first(col, lambda v: type(v) in allowed)
    raise _bad(i, name, f"an integer{' or null' if nullable else ''}", col[i])


def _checked_ints(lo: int, hi: int, nullable: bool) -> Callable[..., None]:
    if nullable and not lo <= 0 <= hi:  # pragma: no cover - a guard for _ints' use of filter
        raise AssertionError("a nullable integer column's range must hold 0")
    small = lo >= 0 and hi < 256
    allowed = bytes(range(lo, hi + 1)) if small else b""

    def check(name: str, col: Sequence[Any], _bounds: _Bounds) -> None:
        values = _ints(name, col, nullable)
        if not values:
            return
        if small:
            # kind, level, status: bytes() refuses anything outside 0-255, translate() deletes
            # the allowed values; both in C and cheaper than min() and max().
            try:
                fine = not bytes(values).translate(None, allowed)
            except ValueError:
                fine = False
        else:
            fine = lo <= min(values) and max(values) <= hi
        if not fine:
            i = _first(col, lambda v: v is None or lo <= v <= hi)
            raise _bad(i, name, f"an integer from {lo} to {hi}", col[i])

    return check


def _strings(name: str, col: Sequence[Any], nullable: bool) -> Sequence[str]:
    strings = _present(col, str)
    if strings is None or (not nullable and len(strings) != len(col)):
        _raise_not_text(name, col, nullable)
    return strings


def _raise_not_text(name: str, col: Sequence[Any], nullable: bool) -> NoReturn:
    allowed = _STR_OR_NONE if nullable else _STR
    i = _first(col, lambda v: type(v) in allowed)
    raise _bad(i, name, f"a string{' or null' if nullable else ''}", col[i])


def _checked_text(limit: int, nullable: bool) -> Callable[..., list[Any] | None]:
    allowed = _STR_OR_NONE if nullable else _STR

    def check(name: str, col: Sequence[Any], _bounds: _Bounds) -> list[Any] | None:
        if nullable and col.count(None) == len(col):  # error columns, mostly
            return None
        # Names, services and hosts repeat: checking the distinct values is cheaper than the
        # column. (A str equals only a str, so no other type can hide behind an equal string.)
        try:
            distinct = set(col)
        except TypeError:  # an unhashable value (a map) is no text
            _raise_not_text(name, col, nullable)
        if not set(map(type, distinct)) <= allowed:
            _raise_not_text(name, col, nullable)
        distinct.discard(None)
        joined = "".join(distinct)
        fine = "\x00" not in joined and (len(joined) <= limit or max(map(len, distinct)) <= limit)
        if fine and not joined.isascii():
            try:
                joined.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate
                fine = False
        if fine:
            return None
        return [None if v is None else sanitize_text(v, limit) for v in col]

    return check


def _check_trace_ids(name: str, col: Sequence[Any], _bounds: _Bounds) -> None:
    strings = _strings(name, col, True)
    joined = "".join(strings)
    # One C-level pass over all ids: right length each, and nothing left once hex is deleted.
    if (
        len(joined) != 32 * len(strings)
        or not joined.isascii()
        or joined.encode("ascii").translate(None, _HEX_DIGITS)
        or (strings and set(map(len, strings)) != {32})
    ):
        i = _first(
            col,
            lambda v: (
                v is None
                or (len(v) == 32 and v.isascii() and not v.encode().translate(None, _HEX_DIGITS))
            ),
        )
        raise _bad(i, name, "32 lowercase hex digits or null", col[i])


def _long_key(obj: dict[str, Any]) -> bool:
    return bool(obj) and max(map(len, obj)) > MAX_KEY_LENGTH


def _cut_keys(obj: dict[str, Any]) -> dict[str, Any]:
    return {k[:MAX_KEY_LENGTH]: v for k, v in obj.items()}


def _repair(raw: bytes, obj: Any, b: _Bounds) -> bytes:
    """A document that broke a rule (too large, a ``\\u0000``, a key too long, too deep)."""
    try:
        # sanitize_value drops U+0000 (jsonb refuses it) and cuts nesting at 64 levels; its text
        # limit is the document's own, so no text is cut. Keys are cut after it, then the
        # values too large or too deep.
        return bound_attrs(
            _cut_keys(sanitize_value(obj, max(len(raw), b.attrs))),
            len(raw),
            max_attrs_bytes=b.attrs,
            max_value_bytes=b.value,
            max_depth=b.depth,
        )
    except (orjson.JSONEncodeError, RecursionError):  # pragma: no cover - defensive
        return _dumps({"atrace.truncated": True, "atrace.reason": "attrs could not be repaired"})


def _over(raw: bytes, obj: Any, b: _Bounds) -> bool:
    """Whether a document is past a bound: too large, or holding a value too large or too deep."""
    if raw == _NUL_ESCAPE:  # the stand-in for a document orjson could not write
        return too_deep(obj, b.depth)
    return len(raw) > b.attrs or needs_bounding(raw, obj, b.value, b.depth)


def _flawed(raw: bytes, obj: Any) -> bool:
    return _NUL_ESCAPE in raw or (len(raw) > MAX_KEY_LENGTH + 2 and _long_key(obj))


def _any_long_key(objs: Sequence[dict[str, Any]]) -> bool:
    """Whether any document has an attribute name (a top-level key) over MAX_KEY_LENGTH."""
    # orjson shares the str objects of repeated short keys, so the set is small and quick.
    names = set(chain.from_iterable(objs))
    return bool(names) and max(map(len, names)) > MAX_KEY_LENGTH


def _needs_fixing(raws: Sequence[bytes], objs: Sequence[Any], b: _Bounds, nul: bool) -> bool:
    """Whether any document breaks a rule; ``nul``: whether the body holds a ``\\u0000`` at all
    (so that one search of the body spares a look at each document)."""
    if not raws:
        return False
    longest = max(map(len, raws))
    return (
        longest > b.value
        or longest > b.attrs
        # A document nests no deeper than its count of { and [ (one is its own object).
        or max(bracket_counts(raws)) > b.depth + 1
        or (nul and _NUL_ESCAPE in b"\x01".join(raws))
        # A key over MAX_KEY_LENGTH characters needs a document of at least that many bytes
        # plus its quotes, so a batch of short documents skips the look at their keys.
        or (longest > MAX_KEY_LENGTH + 2 and _any_long_key(objs))
    )


def _fix_rows(col: Sequence[Any], objs: Sequence[Any], b: _Bounds) -> list[Any]:
    """The column with its broken documents repaired; ``objs`` are the parsed documents of the
    column's non-null values, in order."""
    out: list[Any] = []
    k = 0
    for raw in col:
        if raw is not None:
            obj = objs[k]
            k += 1
            if _over(raw, obj, b):
                b.cut += 1
                raw = _repair(raw, obj, b)
            elif _flawed(raw, obj):
                raw = _repair(raw, obj, b)
        out.append(raw)
    return out


def _attrs_from_bytes(name: str, col: Sequence[Any], b: _Bounds, nul: bool) -> list[Any] | None:
    raws = _present(col, bytes)
    if raws is None:
        i = _first(col, lambda v: v is None or type(v) is bytes)
        raise _bad(i, name, "a JSON object as bytes (bin) or null", col[i])
    try:
        # Each document is parsed on its own: a joined parse would let one document's text run
        # into the next. The bytes stay what is stored.
        objs = list(map(_loads, raws))
    except orjson.JSONDecodeError:
        objs = []
    if len(objs) != len(raws) or list(map(type, objs)).count(dict) != len(objs):
        _raise_bad_attrs(name, col)
    if not _needs_fixing(raws, objs, b, nul):
        return None
    return _fix_rows(col, objs, b)


def _raise_bad_attrs(name: str, col: Sequence[Any]) -> None:
    for i, raw in enumerate(col):
        if raw is None:
            continue
        try:
            obj = _loads(raw)
        except orjson.JSONDecodeError as exc:
            raise WireError(f"rows[{i}], column {name!r}: invalid JSON: {exc}") from None
        if type(obj) is not dict:
            raise _bad(i, name, "a JSON object", obj)
    raise AssertionError("no offending value")  # pragma: no cover


def _dump_or_flag(obj: Any) -> bytes:
    try:
        return _dumps(obj)
    except orjson.JSONEncodeError:
        # Not the document but a stand-in that _broken always flags, so _repair rebuilds it.
        return _NUL_ESCAPE


def _attrs_from_objects(name: str, col: Sequence[Any], b: _Bounds, nul: bool) -> list[Any]:
    objs = _present(col, dict)
    if objs is None:
        i = _first(col, lambda v: v is None or type(v) is dict)
        raise _bad(i, name, "a JSON object or null", col[i])
    # The body was parsed whole; each object goes back to the bytes the sinks store.
    try:
        raws = list(map(_dumps, objs))
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: repaired below
        raws = [_dump_or_flag(obj) for obj in objs]
        nul = True  # the stand-in must be seen
    if objs is not col:
        spread = iter(raws)
        column: list[Any] = [None if v is None else next(spread) for v in col]
    else:
        column = raws
    if not _needs_fixing(raws, objs, b, nul):
        return column
    return _fix_rows(column, objs, b)


def _check_links(i: int, links: Any) -> None:
    for link in links:
        if (
            type(link) is not dict
            or type(link.get("trace_id")) is not str
            or type(link.get("span_id")) is not str
        ):
            raise _bad(i, "links", "an array of objects with trace_id and span_id", link)


def _documents(kind: type, what: str) -> Callable[..., list[Any] | None]:
    """The check of a column of JSON documents of one type (``links``, ``otlp``): refused
    unless each is one; one over ``max_attrs_bytes`` is stored as null and counted as cut."""

    def check(name: str, col: Sequence[Any], b: _Bounds, fmt: str) -> list[Any] | None:
        if col.count(None) == len(col):
            return None
        out: list[Any] = []
        changed = fmt == "json"
        for i, value in enumerate(col):
            if value is None:
                out.append(None)
                continue
            if fmt == "json":
                obj = value
                try:
                    raw = _dumps(obj)
                except orjson.JSONEncodeError:
                    raise _bad(i, name, f"{what} (nested too deep)", obj) from None
            else:
                if type(value) is not bytes:
                    raise _bad(i, name, f"{what} as bytes (bin) or null", value)
                raw = value
                try:
                    obj = _loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise WireError(f"rows[{i}], column {name!r}: invalid JSON: {exc}") from None
            if type(obj) is not kind:
                raise _bad(i, name, what, obj)
            if kind is list:
                _check_links(i, obj)
            if _NUL_ESCAPE in raw:
                raw = _dumps(sanitize_value(obj, len(raw)))
                changed = True
            if len(raw) > b.attrs:
                b.cut += 1
                changed = True
                out.append(None)
            else:
                out.append(raw)
        return out if changed else None

    return check


_DOCUMENTS = {
    "links": _documents(list, "a JSON array of links"),
    "otlp": _documents(dict, "a JSON object"),
}

_CHECKS: dict[str, Callable[..., list[Any] | None]] = {
    "ts": _checked_ints(TS_MIN_NS, TS_MAX_NS, False),
    "kind": _checked_ints(min(Kind).value, max(Kind).value, False),
    "level": _checked_ints(Level.NOTSET.value, MAX_LEVEL, False),
    "trace_id": _check_trace_ids,
    "span_id": _checked_ints(_I64_MIN, _I64_MAX, True),
    "parent_id": _checked_ints(_I64_MIN, _I64_MAX, True),
    "duration_ns": _checked_ints(0, _I64_MAX, True),
    "status": _checked_ints(min(Status).value, max(Status).value, False),
    "pid": _checked_ints(0, _I32_MAX, True),
    "span_kind": _checked_ints(min(SpanKind).value, max(SpanKind).value, True),
    "trace_flags": _checked_ints(0, 255, True),
    "resource_id": _checked_ints(_I64_MIN, _I64_MAX, True),
    **{name: _checked_text(limit, name != "service") for name, limit in TEXT_LIMITS.items()},
}


def _check_rows(rows: Any) -> None:
    kinds = list(map(type, rows))
    if kinds.count(tuple) + kinds.count(list) != len(rows):
        i = _first(rows, lambda r: type(r) in _ROW_TYPES)
        raise WireError(f"rows[{i}]: expected an array, got {_kind(rows[i])} {_show(rows[i])}")


def _bad_width(rows: Any, width: int) -> WireError:
    i = _first(rows, lambda r: len(r) == width)
    return WireError(f"rows[{i}]: expected {width} values (one per column), got {len(rows[i])}")


def decode_batch(
    body: bytes,
    content_type: str,
    *,
    max_records: int = 100_000,
    max_attrs_bytes: int = MAX_ATTRS_BYTES,
    max_value_bytes: int = MAX_VALUE_BYTES,
    max_depth: int = MAX_DEPTH,
) -> tuple[uuid.UUID, list[Row]]:
    """The batch id and rows (in COLUMNS order) of an untrusted request body.

    Raises :class:`~atrace.errors.WireError`: status 400 for anything malformed (the message
    names the row and column), 413 for more than ``max_records`` rows, 415 for a content type
    that is neither msgpack nor JSON. Nothing is returned unless the whole batch is valid.
    Attributes past ``max_attrs_bytes``, ``max_value_bytes`` or ``max_depth`` are cut (see the
    module's docstring).
    """
    batch_id, rows, _ = decode_batch_counted(
        body,
        content_type,
        max_records=max_records,
        max_attrs_bytes=max_attrs_bytes,
        max_value_bytes=max_value_bytes,
        max_depth=max_depth,
    )
    return batch_id, rows


def decode_batch_counted(
    body: bytes,
    content_type: str,
    *,
    max_records: int = 100_000,
    max_attrs_bytes: int = MAX_ATTRS_BYTES,
    max_value_bytes: int = MAX_VALUE_BYTES,
    max_depth: int = MAX_DEPTH,
    resources: dict[int, bytes] | None = None,
) -> tuple[uuid.UUID, list[Row], int]:
    """As :func:`decode_batch`, with the number of records whose attributes were cut; the
    envelope's resource documents go into ``resources`` (id → JSON bytes)."""
    bounds = _Bounds(max_attrs_bytes, max_value_bytes, max_depth)
    fmt = _format_of(content_type)
    doc = _load(body, fmt)
    if type(doc) is not dict:
        raise WireError(f"body: expected a map with {sorted(_ENVELOPE)}, got {_kind(doc)}")
    if doc.keys() != _ENVELOPE and not (
        doc.keys() - _OPTIONAL_ENVELOPE == _ENVELOPE and doc.keys() >= _ENVELOPE
    ):
        missing = sorted(_ENVELOPE - doc.keys())
        extra = sorted(map(str, doc.keys() - _ENVELOPE - _OPTIONAL_ENVELOPE))
        raise WireError(f"body: missing field(s) {missing}, unknown field(s) {extra}")
    if "resources" in doc:
        found = _resources(doc["resources"], fmt, max_attrs_bytes)
        if resources is not None:
            resources.update(found)
    version = doc["v"]
    if type(version) is not int or version != VERSION:
        raise WireError(f"'v': unsupported format version {_show(version)}, expected {VERSION}")
    batch_id = _batch_id(doc["batch"], fmt)
    columns = _columns(doc["columns"])
    rows = doc["rows"]
    if type(rows) not in _ROW_TYPES:
        raise WireError(f"'rows': expected an array of rows, got {_kind(rows)}")
    if len(rows) > max_records:
        raise WireError(
            f"'rows': {len(rows)} records exceed this collector's limit of {max_records} "
            "a batch; send smaller batches",
            status=413,
            bound="max_records",
        )
    if not rows:
        return batch_id, [], 0
    _check_rows(rows)
    try:
        # One C-level transposition; strict, it also finds rows of unequal length.
        cols: list[Sequence[Any]] = list(zip(*rows, strict=True))
    except ValueError:
        raise _bad_width(rows, len(columns)) from None
    if len(cols) != len(columns):
        raise _bad_width(rows, len(columns))
    changed = fmt == "json" or columns != COLUMNS
    for index, (name, col) in enumerate(zip(columns, cols, strict=True)):
        if name == "attrs":
            check = _attrs_from_objects if fmt == "json" else _attrs_from_bytes
            fixed = check(name, col, bounds, _NUL_ESCAPE in body)
        elif name in _DOCUMENTS:
            fixed = _DOCUMENTS[name](name, col, bounds, fmt)
        else:
            fixed = _CHECKS[name](name, col, bounds)
        if fixed is not None:
            cols[index] = fixed
            changed = True
    if not changed:
        return batch_id, list(rows), bounds.cut
    if columns != COLUMNS:
        by_name = dict(zip(columns, cols, strict=True))
        n = len(rows)
        cols = [by_name.get(c) or [_MISSING_DEFAULT.get(c)] * n for c in COLUMNS]
    return batch_id, list(zip(*cols, strict=True)), bounds.cut
