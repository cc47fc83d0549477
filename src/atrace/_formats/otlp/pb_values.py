"""OTLP attribute values read off protobuf (upb) message objects: AnyValue, KeyValue, log bodies.

The twin decoder reads every value here. The compiled one reads values off the wire itself and
comes here only for the values protobuf merges (a value, an array or a kvlist sent twice), so
that both give the same result.
"""

from __future__ import annotations

from typing import Any

from ..._pipeline.sanitize import sanitize_text
from ..resources import double
from .common import MAX_ANY_DEPTH
from .rows import KEY_CHARS, LONG_VALUE_CHARS, VALUE_CHARS, clean_key, clean_text

__all__ = ("pb_any", "pb_body", "pb_into")


def pb_any(av: Any, depth: int) -> Any:
    """An ``AnyValue`` as a JSON-ready value (arrays and kvlists nested up to the limit)."""
    which = av.WhichOneof("value")
    if which == "string_value":
        return clean_text(av.string_value, VALUE_CHARS)
    if which == "int_value":
        return av.int_value
    if which == "bool_value":
        return av.bool_value
    if which == "double_value":
        return double(av.double_value)
    if which is None:
        return None
    if depth >= MAX_ANY_DEPTH:
        return "<too deep>"
    if which == "array_value":
        return [pb_any(item, depth + 1) for item in av.array_value.values]
    if which == "kvlist_value":
        out: dict[str, Any] = {}
        pb_into(out, av.kvlist_value.values, depth + 1)
        return out
    if which == "bytes_value":
        return av.bytes_value  # kept as bytes: the row notes its type (rows.json_ready)
    return None


def pb_into(out: dict[str, Any], kvs: Any, depth: int = 0) -> None:
    """Each ``KeyValue`` of ``kvs`` into ``out``; a key without a value is left out."""
    # The hot loop of decoding. Most attribute values are strings, and a non-empty
    # ``string_value`` answers in one call what WhichOneof and getattr answer in two.
    for kv in kvs:
        key = kv.key
        if not key.isascii() or len(key) > KEY_CHARS or "\x00" in key:
            key = clean_key(key)
        av = kv.value
        value = av.string_value
        if value:
            if not value.isascii() or len(value) > VALUE_CHARS or "\x00" in value:
                value = sanitize_text(value, LONG_VALUE_CHARS.get(key, VALUE_CHARS))
        else:
            which = av.WhichOneof("value")
            if which is None:
                continue
            value = getattr(av, which)
            t = type(value)
            if t is float:
                value = double(value)
            elif t is not int and t is not bool and t is not str:
                value = pb_any(av, depth)
        out[key] = value


def pb_body(av: Any) -> Any:
    """A log record's body as decoded (``rows.log_row`` makes the message of it): a string as
    sent, any other value as :func:`pb_any` reads it."""
    which = av.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        return av.string_value
    return pb_any(av, 0)
