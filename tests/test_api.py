"""The public surface: every __all__ matches what its module really exports."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import atrace

PUBLIC_MODULES = [
    "atrace",
    "atrace.client",
    "atrace.collector.api",
    "atrace.collector.app",
    "atrace.collector.auth",
    "atrace.collector.ingest",
    "atrace.collector.limits",
    "atrace.collector.metrics",
    "atrace.collector.query",
    "atrace.collector.tail",
    "atrace.config",
    "atrace.context",
    "atrace.emit",
    "atrace.encode",
    "atrace.errors",
    "atrace.fingerprint",
    "atrace.instrument",
    "atrace.integrations.aiohttp",
    "atrace.integrations.asgi",
    "atrace.integrations.httpx",
    "atrace.integrations.logging",
    "atrace.integrations.wsgi",
    "atrace.log",
    "atrace.otlp",
    "atrace.pgcopy",
    "atrace.pipeline",
    "atrace.pytest_plugin",
    "atrace.ring",
    "atrace.schema",
    "atrace.sinks",
    "atrace.sinks.console",
    "atrace.sinks.http",
    "atrace.sinks.otlp",
    "atrace.sinks.postgres",
    "atrace.span",
    "atrace.testing",
    "atrace.tracer",
    "atrace.views",
    "atrace.wire",
]


class TestAll:
    @pytest.mark.parametrize("name", PUBLIC_MODULES)
    def test_all_is_a_tuple_of_real_public_names(self, name: str) -> None:
        """__all__ is a sorted-free tuple whose names all exist, and no public name is left out."""
        module = importlib.import_module(name)
        exported = module.__all__
        assert isinstance(exported, tuple)
        assert len(set(exported)) == len(exported)
        for item in exported:
            assert hasattr(module, item), f"{name}.{item} is in __all__ but missing"
        defined_here = {
            key
            for key, value in vars(module).items()
            if not key.startswith("_")
            and getattr(value, "__module__", None) == name
            and callable(value)
        }
        assert defined_here <= set(exported), (
            f"{name} defines public {defined_here - set(exported)}"
        )

    def test_facade_reexports_only(self) -> None:
        """The package façade names the documented API."""
        for item in ("configure", "span", "traced", "info", "amit", "Tracer", "metrics", "aflush"):
            assert item in atrace.__all__

    def test_import_is_light(self) -> None:
        """Importing atrace loads neither asyncio, asyncpg, rich nor orjson."""
        heavy = ("asyncio", "asyncpg", "rich", "orjson", "aiohttp")
        code = f"import sys, atrace; print(sorted(m for m in {heavy!r} if m in sys.modules))"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]"
