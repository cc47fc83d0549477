"""Where records come from: resource and instrumentation-scope documents, and typed values.

A record names its resource and scope by ``resource_id``, a hash of one document stored once per
project in ``<schema>.resources``::

    {"resource": {"attrs": {...}, "schema_url": "..."},
     "scope": {"name": "...", "version": "...", "attrs": {...}, "schema_url": "..."},
     "types": {"/resource/attrs/k8s.pod.uid": "bytes"}}

(empty parts left out; keys sorted, so that one resource and scope always hash alike). OTLP
ingest makes one per resource and scope it receives; a process makes one for itself when it has
resource attributes (``OTEL_RESOURCE_ATTRIBUTES``, ``configure(attributes=...)``) and registers
it here, where its sinks find it to store or send along with the records that name it.

Values JSON cannot hold are stored as text and named under ``types`` by a JSON pointer (RFC
6901) into the record or document: bytes as base64, doubles that are not finite as JavaScript
names them (``"NaN"``, ``"Infinity"``, ``"-Infinity"``).
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import orjson

from .._pipeline.sanitize import sanitize_text, sanitize_value

__all__ = (
    "MAX_DOCUMENT_BYTES",
    "NON_FINITE_NAMES",
    "NON_FINITE_VALUES",
    "OWN_SCOPE",
    "TYPE_BYTES",
    "TYPE_DOUBLE",
    "NonFinite",
    "document",
    "double",
    "json_ready",
    "known",
    "named_by",
    "pointer_part",
    "register",
)

# The instrumentation scope of atrace's own records.
OWN_SCOPE = "atrace"
TYPE_BYTES = "bytes"
TYPE_DOUBLE = "double"
NON_FINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
NON_FINITE_VALUES = {name: float(key) for key, name in NON_FINITE_NAMES.items()}
# A document past this many bytes keeps a marker instead of its resource's attributes.
MAX_DOCUMENT_BYTES = 65_536
_TEXT_CHARS = 4096


class NonFinite(float):
    """A double JSON cannot hold (NaN, Infinity, -Infinity), as the decoders hand it over: orjson
    refuses the type, which sends the record down :func:`json_ready`'s typed path."""

    __slots__ = ()


def double(value: float) -> float:
    """A decoded double: itself, or a :class:`NonFinite` when JSON cannot hold it."""
    return value if value - value == 0.0 else NonFinite(value)


def pointer_part(key: str) -> str:
    """``key`` as one step of a JSON pointer (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1") if "~" in key or "/" in key else key


def json_ready(value: Any, pointer: str, types: dict[str, str]) -> Any:
    """``value`` with its bytes and non-finite doubles as text, each one's pointer and type
    noted in ``types``."""
    t = type(value)
    if t is dict:
        return {k: json_ready(v, f"{pointer}/{pointer_part(k)}", types) for k, v in value.items()}
    if t is list or t is tuple:
        return [json_ready(v, f"{pointer}/{i}", types) for i, v in enumerate(value)]
    if t is bytes:
        types[pointer] = TYPE_BYTES
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        types[pointer] = TYPE_DOUBLE
        return NON_FINITE_NAMES[repr(float(value))]
    return value


def _text(value: str) -> str:
    if value.isascii() and len(value) <= _TEXT_CHARS and "\x00" not in value:
        return value
    return sanitize_text(value, _TEXT_CHARS)


def document(
    resource_attrs: Mapping[str, Any] | None,
    resource_url: str = "",
    scope_name: str = "",
    scope_version: str = "",
    scope_attrs: Mapping[str, Any] | None = None,
    scope_url: str = "",
) -> tuple[int, bytes]:
    """The ``resource_id`` and JSON document of a resource and scope (see the module's text)."""
    types: dict[str, str] = {}
    resource: dict[str, Any] = {}
    if resource_attrs:
        resource["attrs"] = json_ready(dict(resource_attrs), "/resource/attrs", types)
    if resource_url:
        resource["schema_url"] = _text(resource_url)
    scope: dict[str, Any] = {}
    if scope_name:
        scope["name"] = _text(scope_name)
    if scope_version:
        scope["version"] = _text(scope_version)
    if scope_attrs:
        scope["attrs"] = json_ready(dict(scope_attrs), "/scope/attrs", types)
    if scope_url:
        scope["schema_url"] = _text(scope_url)
    doc: dict[str, Any] = {}
    if resource:
        doc["resource"] = resource
    if scope:
        doc["scope"] = scope
    if types:
        doc["types"] = types
    try:
        raw = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        raw = orjson.dumps(sanitize_value(doc, _TEXT_CHARS), option=orjson.OPT_SORT_KEYS)
    if len(raw) > MAX_DOCUMENT_BYTES:
        service = (resource_attrs or {}).get("service.name")
        marker = {"atrace.truncated": True, "atrace.original_bytes": len(raw)}
        small: dict[str, Any] = {"resource": {"attrs": {"service.name": service, **marker}}}
        if scope:
            small["scope"] = {k: v for k, v in scope.items() if k != "attrs"}
        raw = orjson.dumps(sanitize_value(small, _TEXT_CHARS), option=orjson.OPT_SORT_KEYS)
    rid = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)
    return rid, raw


# The documents this process made for itself (id → JSON bytes): its sinks store or send the
# ones their batches name. A few per process (one per configuration).
_KNOWN: dict[int, bytes] = {}


def register(rid: int, doc: bytes) -> None:
    """Make this process's document ``rid`` known to its sinks."""
    _KNOWN[rid] = doc


def known(ids: Iterable[Any]) -> dict[int, bytes]:
    """The registered documents among ``ids`` (None and unknown ids are skipped)."""
    if not _KNOWN:
        return {}
    return {rid: _KNOWN[rid] for rid in ids if rid in _KNOWN}


def named_by(rows: Sequence[Any]) -> dict[int, bytes]:
    """The registered documents the rows name by ``resource_id`` (one C-level pass)."""
    if not _KNOWN or not rows:
        return {}
    from .._records import RESOURCE_ID

    return known(set(map(itemgetter(RESOURCE_ID), rows)))


def known_all() -> Mapping[int, bytes]:
    """Every registered document (read-only use)."""
    return _KNOWN
