"""From records to rows, done in the flusher, never in the caller: ``Encoder`` and its façade.

``Encoder.rows`` runs the compiled ``_encode`` or its twin ``_encode_py`` (picked through
``_speedups``); both lean on the encoder's slow paths here and on ``sanitize`` for every value
that is not plain, so they give identical rows.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from .. import _speedups
from .._records import Row, broken_row
from .sanitize import json_default, safe_repr, safe_str, sanitize_text, sanitize_value, type_name

if typing.TYPE_CHECKING:
    from ..config import Config

__all__ = ("IMPLEMENTATION", "Encoder", "encode_rows")

_OPTS = orjson.OPT_NON_STR_KEYS
_dumps = orjson.dumps
_JSONError = orjson.JSONEncodeError
_NUL_ESCAPE = b"\\u0000"
# Distinct call sites are few; their "file:line" text is made once. Bounded for exec'd code.
_MAX_LOCATIONS = 10_000

if typing.TYPE_CHECKING:
    # The stub and the twin declare one API; the checker reads the twin's.
    from ._encode_py import encode_rows

    IMPLEMENTATION: typing.Literal["cython", "python"]
else:
    _module, IMPLEMENTATION = _speedups.load(
        "atrace._pipeline._encode", "atrace._pipeline._encode_py"
    )
    encode_rows = _module.encode_rows


class Encoder:
    """Turns records into rows for one configuration (service, host, limits, global attributes)."""

    __slots__ = (
        "dropped_attributes",
        "environment",
        "global_attrs",
        "host",
        "locations",
        "max_attributes",
        "max_message_length",
        "max_value_length",
        "pid",
        "resource_id",
        "scrubber",
        "service",
    )

    def __init__(
        self,
        *,
        service: str,
        environment: str | None,
        host: str,
        pid: int,
        attributes: Mapping[str, Any] | None = None,
        max_message_length: int = 32_768,
        max_value_length: int = 8_192,
        max_attributes: int = 128,
    ) -> None:
        self.service = service
        self.environment = environment
        self.host = host
        self.pid = pid
        self.global_attrs = dict(attributes) if attributes else None
        # The id of this process's resource in ``<schema>.resources`` (None: its columns say
        # it all).
        self.resource_id: int | None = None
        # The secrets' rules (None: scrubbing off).
        self.scrubber: Any = None
        self.max_message_length = max_message_length
        self.max_value_length = max_value_length
        # Attributes a record keeps (the first ones), and how many were dropped so far.
        self.max_attributes = max_attributes
        self.dropped_attributes = 0
        self.locations: dict[Any, str] = {}

    @classmethod
    def from_config(cls, config: Config) -> Encoder:
        """The encoder for a configuration's service, resource and limits.

        The configuration's resource attributes (``OTEL_RESOURCE_ATTRIBUTES``,
        ``attributes=``) are the process's resource, with its service, environment, host and
        pid: one document, registered for the sinks (``_formats.resources``), which every
        record names by ``resource_id``; they are not copied into each record's attributes.
        """
        encoder = cls(
            service=config.service,
            environment=config.environment,
            host=config.host,
            pid=config.pid,
            max_message_length=config.max_message_length,
            max_value_length=config.max_value_length,
            max_attributes=config.max_attributes,
        )
        if config.scrub is not False:
            from .scrub import Scrubber

            scrub = config.scrub
            if scrub is True:
                encoder.scrubber = Scrubber()
            elif callable(scrub):
                encoder.scrubber = Scrubber(keep=scrub)
            else:
                encoder.scrubber = Scrubber(words=scrub)
        if config.attributes:
            from .._formats.resources import OWN_SCOPE, document, register
            from .._version import __version__

            resource: dict[str, Any] = {"service.name": config.service}
            if config.environment is not None:
                resource["deployment.environment.name"] = config.environment
            resource["host.name"] = config.host
            resource["process.pid"] = config.pid
            resource.update(config.attributes)
            rid, doc = document(resource, scope_name=OWN_SCOPE, scope_version=__version__)
            register(rid, doc)
            encoder.resource_id = rid
        return encoder

    def attrs_json(self, attrs: Mapping[str, Any]) -> bytes:
        """Attributes as JSON bytes that PostgreSQL's jsonb accepts."""
        limit = self.max_value_length
        try:
            out = _dumps(attrs, json_default, _OPTS)
        except (_JSONError, TypeError):
            out = None
        # \u0000 is valid JSON but not valid jsonb; a long document may hold a value to truncate.
        if out is None or _NUL_ESCAPE in out or len(out) > limit:
            out = _dumps(sanitize_value(dict(attrs), limit), safe_repr, _OPTS)
        # orjson hands back a buffer sized for growth; a batch keeps thousands alive, and an
        # exact-size copy is much cheaper than holding (and faulting in) those.
        return bytes(memoryview(out))

    def cut_attrs(self, attrs: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The first ``max_attributes`` of ``attrs``, and the ``otlp`` column that says how many
        were dropped (OpenTelemetry's attribute count limit)."""
        kept = dict(list(attrs.items())[: self.max_attributes])
        dropped = len(attrs) - len(kept)
        self.dropped_attributes += dropped
        return kept, b'{"dropped_attributes":%d}' % dropped

    def links_json(self, links: Any) -> bytes:
        """A span's links (``slow.span_links``) as JSON bytes; their attributes are bounded
        as attributes are."""
        out = []
        for link in links:
            attrs = link.get("attrs")
            if attrs:
                link = {**link, "attrs": orjson.loads(self.attrs_json(attrs))}
            out.append(link)
        return _dumps(out)

    def text(self, value: Any, limit: int) -> str:
        """Any value as text PostgreSQL accepts, at most ``limit`` characters (plus the marker)."""
        text: str = value if type(value) is str else safe_str(value)
        if text.isascii() and len(text) <= limit and "\x00" not in text:
            return text
        return sanitize_text(text, limit)

    def location_text(self, loc: Any) -> str:
        """``"file:line"`` for a location, remembered per call site."""
        out = self.text(f"{loc[0]}:{loc[1]}" if type(loc) is tuple else loc, 4096)
        if len(self.locations) >= _MAX_LOCATIONS:
            self.locations.clear()
        self.locations[loc] = out
        return out

    def rows(self, records: Iterable[Any]) -> list[Row]:
        """Rows for a batch, secrets scrubbed; a record that cannot be encoded at all becomes an
        error row."""
        rows = encode_rows(self, records)
        if self.scrubber is not None:
            rows = self.scrubber.rows(rows)
        return rows

    def broken_row(self, rec: Any, exc: Exception) -> Row:
        """A malformed record (a bug, or a hand-built tuple) still lands, described, not dropped."""
        ts = rec[1] if isinstance(rec, tuple) and len(rec) > 1 and type(rec[1]) is int else None
        limit = self.max_message_length
        return broken_row(
            ts,
            type_name(type(exc)),
            self.text(safe_str(exc), limit),
            name="atrace.encode",
            message=self.text(f"unencodable record: {safe_repr(rec)}", limit),
            service=self.service,
            environment=self.environment,
            host=self.host,
            pid=self.pid,
        )
