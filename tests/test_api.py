"""The public surface: every __all__ matches what its module really exports."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import atrace

# Every module a user may import. A module is public when no part of its dotted path starts with
# an underscore; a new one fails test_no_module_is_published_by_accident until it is listed here.
PUBLIC_MODULES = (
    "atrace",
    "atrace.cli",
    "atrace.client",
    "atrace.collector",
    "atrace.config",
    "atrace.errors",
    "atrace.integrations",
    "atrace.integrations.aiohttp",
    "atrace.integrations.asgi",
    "atrace.integrations.httpx",
    "atrace.integrations.logging",
    "atrace.integrations.wsgi",
    "atrace.pytest_plugin",
    "atrace.sinks",
    "atrace.sinks.console",
    "atrace.sinks.http",
    "atrace.sinks.otlp",
    "atrace.sinks.postgres",
    "atrace.testing",
)
PACKAGE = Path(atrace.__file__).parent


def modules_in_tree() -> set[str]:
    """Every Python module under src/atrace by its dotted name (``__main__`` left out)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        parts = ("atrace", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] != "__main__":
            found.add(".".join(parts))
    return found


class TestAll:
    def test_no_module_is_published_by_accident(self) -> None:
        """The modules without an underscore in their path are exactly the listed public ones."""
        public = {
            name
            for name in modules_in_tree()
            if not any(part.startswith("_") for part in name.split("."))
        }
        assert public == set(PUBLIC_MODULES)

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
        """Importing atrace loads none of asyncio, asyncpg, rich, orjson, aiohttp, typing,
        dataclasses (which loads inspect): each would add milliseconds to every process."""
        heavy = ("asyncio", "asyncpg", "rich", "orjson", "aiohttp", "typing", "dataclasses")
        code = f"import sys, atrace; print(sorted(m for m in {heavy!r} if m in sys.modules))"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]"
