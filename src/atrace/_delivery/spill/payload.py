"""The payload of a spill frame: a batch's rows as column-major JSON, and back, any value intact."""

from __future__ import annotations

import base64
import itertools
import math
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ..._records import Row

# Column codes in a payload's "enc": "." JSON as is, "u" bytes held as their UTF-8 text,
# "x" bytes held as base64, "t" values that need a tag (see _tag).
# Floats are left out: JSON turns NaN and infinities into null, so they go through _tag.
_NATIVE = frozenset({int, str, bool, type(None)})
_BYTES_OR_NONE = frozenset({bytes, type(None)})
_I64_MIN = -(1 << 63)
_U64_MAX = (1 << 64) - 1


def _tag(value: Any) -> Any:
    # JSON-safe values pass as they are; anything else becomes a [code, text] pair, and no plain
    # row value is ever a list, so a list always means a tag.
    if value is None or type(value) is bool:
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else ["f", repr(float(value))]
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogatepass")
            return ["S", base64.b64encode(raw).decode("ascii")]
        return str(value)
    if isinstance(value, int):
        if _I64_MIN <= value <= _U64_MAX:
            return int(value)
        return ["i", hex(value)]  # hex: decimal conversion of huge ints is capped by Python
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ["b", base64.b64encode(bytes(value)).decode("ascii")]
    try:
        text = str(value)
    except Exception:
        text = f"<unrepresentable {type(value).__qualname__}>"
    return ["r", text]


_UNTAG: dict[str, Callable[[str], Any]] = {
    "S": lambda text: base64.b64decode(text).decode("utf-8", "surrogatepass"),
    "i": lambda text: int(text, 16),
    "b": base64.b64decode,
    "f": float,
    "r": str,
}


def _untag(value: Any) -> Any:
    return _UNTAG[value[0]](value[1]) if type(value) is list else value


def _encode_column(col: Sequence[Any]) -> tuple[str, Sequence[Any]]:
    kinds = set(map(type, col))
    if kinds <= _NATIVE:
        return ".", col
    if kinds <= _BYTES_OR_NONE:
        try:
            if None in col:
                return "u", [None if v is None else v.decode() for v in col]
            return "u", list(map(bytes.decode, col))
        except UnicodeDecodeError:
            return "x", [None if v is None else base64.b64encode(v).decode("ascii") for v in col]
    return "t", [_tag(v) for v in col]


def _decode_column(code: str, col: list[Any]) -> list[Any]:
    if code == "u":
        if None in col:
            return [None if v is None else v.encode() for v in col]
        return list(map(str.encode, col))
    if code == "x":
        return [None if v is None else base64.b64decode(v) for v in col]
    return [_untag(v) for v in col]


def encode_payload(batch_id: uuid.UUID, reason: str, rows: Sequence[Sequence[Any]]) -> bytes:
    # Column-major: zip() transposes at C speed both ways, and a type check per column (not per
    # value) finds the few columns, like attrs, whose bytes JSON cannot hold.
    widths = set(map(len, rows))
    lengths: list[int] | None = None
    if len(widths) > 1:
        lengths = list(map(len, rows))
        cols: list[Sequence[Any]] = list(itertools.zip_longest(*rows))
    else:
        cols = list(zip(*rows, strict=True))
    codes = []
    encoded: list[Sequence[Any]] = []
    for col in cols:
        code, values = _encode_column(col)
        codes.append(code)
        encoded.append(values)
    obj: dict[str, Any] = {
        "id": str(batch_id),
        "reason": reason,
        "n": len(rows),
        "enc": "".join(codes),
        "cols": encoded,
    }
    if lengths is not None:
        obj["lens"] = lengths
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        # An int past 64 bits or a lone surrogate in a plain column: tag every value instead.
        obj["reason"] = reason.encode("utf-8", "replace").decode()
        obj["enc"] = "t" * len(cols)
        obj["cols"] = [[_tag(v) for v in col] for col in cols]
        return orjson.dumps(obj)


def decode_payload(payload: memoryview) -> tuple[str, list[Row]]:
    obj = orjson.loads(payload)
    cols: list[list[Any]] = obj["cols"]
    for i, code in enumerate(obj["enc"]):
        if code != ".":
            cols[i] = _decode_column(code, cols[i])
    rows: list[Row] = list(zip(*cols, strict=True)) if cols else [()] * obj["n"]
    lengths = obj.get("lens")
    if lengths is not None:
        rows = [row[:n] for row, n in zip(rows, lengths, strict=True)]
    return str(obj.get("reason", "")), rows
