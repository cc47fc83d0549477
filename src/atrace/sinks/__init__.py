"""Sinks: where batches go. The contract is :class:`Sink`; ``resolve`` turns a spec into a sink."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._records import COLUMNS, Batch
from ..errors import ConfigError
from ._base import Sink

__all__ = ("COLUMNS", "Batch", "Sink", "resolve", "resolve_all")


def resolve(spec: Any, *, schema: str = "atrace") -> Sink:
    """A sink for a URL (``postgresql://``, ``postgres://``; ``http://``, ``https://`` of an
    atrace collector), ``"console"``, ``"otlp"`` (``OTEL_EXPORTER_OTLP_*`` settings) or
    ``otlp+http://host:4318`` / ``otlp+https://…`` (an OTLP/HTTP endpoint), or a sink object."""
    if isinstance(spec, str):
        text = spec.strip()
        lowered = text.lower()
        if lowered.startswith(("postgresql://", "postgres://")):
            from .postgres import PostgresSink

            return PostgresSink(text, schema=schema)
        if lowered.startswith(("http://", "https://")):
            from .http import HttpSink

            return HttpSink(text)
        if lowered == "otlp" or lowered.startswith(("otlp+http://", "otlp+https://")):
            from .otlp import OtlpSink

            return OtlpSink(text[len("otlp+") :] if "://" in lowered else None)
        if lowered in ("console", "stdout", "console://"):
            from .console import ConsoleSink

            return ConsoleSink()
        if lowered in ("embedded", "embedded://"):
            from .postgres import PostgresSink

            return PostgresSink(None, schema=schema)
        raise ConfigError(
            "sink",
            spec,
            "expected postgresql://…, http(s)://… (a collector), 'otlp', otlp+http(s)://…, "
            "'console', 'embedded' or a sink object",
        )
    if all(callable(getattr(spec, m, None)) for m in ("open", "write", "close")):
        if not hasattr(spec, "name"):
            raise ConfigError("sink", spec, "a sink object needs a 'name' attribute")
        return spec  # type: ignore[no-any-return]
    raise ConfigError("sink", spec, "expected a URL string or an object with open/write/close")


def resolve_all(specs: Sequence[Any], *, schema: str = "atrace") -> list[Sink]:
    """Sinks for every spec; none at all means the embedded PostgreSQL."""
    if not specs:
        return [resolve("embedded", schema=schema)]
    return [resolve(s, schema=schema) for s in specs]
