"""Sinks: where batches go. The contract is :class:`Sink`; ``resolve`` turns a spec into a sink."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from .._records import COLUMNS, Batch
from ..errors import ConfigError
from ._base import Sink

__all__ = ("COLUMNS", "Batch", "Sink", "resolve", "resolve_all")

# The modules each built-in sink needs, and the extra that installs them.
_PG = ("pg", ("asyncpg",))
_EMBEDDED = ("embedded", ("pgserver", "asyncpg"))
_HTTP = ("http", ("aiohttp", "msgpack"))
_OTLP = ("otlp", ("aiohttp", "opentelemetry.proto", "google.protobuf"))
# The name pip knows a module by, where the two differ.
_PACKAGES = {"opentelemetry.proto": "opentelemetry-proto", "google.protobuf": "protobuf"}


def _installed(module: str) -> bool:
    # Looked up, not imported: asyncpg, aiohttp and pgserver load only when the sink opens.
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package; a module without a spec
        return False


def _require(spec: Any, needs: tuple[str, tuple[str, ...]], note: str = "") -> None:
    """A ConfigError naming the extra to install if a module the sink needs is missing."""
    extra, modules = needs
    for module in modules:
        if not _installed(module):
            package = _PACKAGES.get(module, module)
            raise ConfigError(
                "sink",
                spec,
                f"{note}needs {package}, which is not installed: pip install 'atrace[{extra}]'",
            )


def resolve(spec: Any, *, schema: str = "atrace") -> Sink:
    """A sink for a URL (``postgresql://``, ``postgres://``; ``http://``, ``https://`` of an
    atrace collector), ``"console"``, ``"otlp"`` (``OTEL_EXPORTER_OTLP_*`` settings) or
    ``otlp+http://host:4318`` / ``otlp+https://…`` (an OTLP/HTTP endpoint), or a sink object.

    A ConfigError names the extra to install when the sink needs a module that is missing.
    """
    if isinstance(spec, str):
        text = spec.strip()
        lowered = text.lower()
        if lowered.startswith(("postgresql://", "postgres://")):
            _require(spec, _PG)
            from .postgres import PostgresSink

            return PostgresSink(text, schema=schema)
        if lowered.startswith(("http://", "https://")):
            _require(spec, _HTTP)
            from .http import HttpSink

            return HttpSink(text)
        if lowered == "otlp" or lowered.startswith(("otlp+http://", "otlp+https://")):
            _require(spec, _OTLP)
            from .otlp import OtlpSink

            return OtlpSink(text[len("otlp+") :] if "://" in lowered else None)
        if lowered in ("console", "stdout", "console://"):
            from .console import ConsoleSink

            return ConsoleSink()
        if lowered in ("embedded", "embedded://"):
            _require(spec, _EMBEDDED)
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
        _require("embedded", _EMBEDDED, "no sink is configured, and the embedded PostgreSQL ")
        return [resolve("embedded", schema=schema)]
    return [resolve(s, schema=schema) for s in specs]
